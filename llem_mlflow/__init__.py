"""llem-mlflow: measure what LLM inference costs, logged to MLflow."""

__version__ = "0.1.0"
