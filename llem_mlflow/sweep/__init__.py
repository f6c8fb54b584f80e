"""Sweeps: a study file expands into points, each run as a child of one parent MLflow run."""
