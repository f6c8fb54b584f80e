"""Experiment config: schema, loading, and the MLflow params mapping."""

from llem_mlflow.config.backend_configs import PyTorchConfig
from llem_mlflow.config.loader import load_config, validate_config
from llem_mlflow.config.models import DecoderConfig, ExperimentConfig

__all__ = ["DecoderConfig", "ExperimentConfig", "PyTorchConfig", "load_config", "validate_config"]
