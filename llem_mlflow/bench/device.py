"""Device helpers shared by the measured window's edges."""

from __future__ import annotations


def synchronize() -> None:
    """Wait for queued CUDA work, so a timestamp or energy reading covers it; nothing on CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def gpu_memory_metrics(loaded) -> dict[str, float]:
    """The model's own size on its GPUs (GPU runs only; the peaks per phase are bench/memory.py's)."""
    if not loaded.gpu_indices or not hasattr(loaded.model, "get_memory_footprint"):
        return {}
    model_bytes = loaded.model.get_memory_footprint()
    return {"memory/gpu_model_mb": model_bytes / (1024.0 * 1024.0)} if model_bytes else {}
