"""Device helpers shared by the measured window's edges."""

from __future__ import annotations


def synchronize() -> None:
    """Wait for queued CUDA work, so a timestamp or energy reading covers it; nothing on CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def reset_gpu_peak_memory(gpu_indices: list[int]) -> None:
    if gpu_indices:
        import torch

        for index in gpu_indices:
            torch.cuda.reset_peak_memory_stats(index)


def gpu_memory_metrics(loaded) -> dict[str, float]:
    """Peak allocated over the measured trials and the model's own size, GPU runs only."""
    if not loaded.gpu_indices:
        return {}
    import torch

    mb = 1024.0 * 1024.0
    peak = sum(torch.cuda.max_memory_allocated(i) for i in loaded.gpu_indices) / mb
    model_bytes = loaded.model.get_memory_footprint() if hasattr(loaded.model, "get_memory_footprint") else None
    out = {"memory/gpu_peak_allocated_mb": peak}
    if model_bytes:
        out["memory/gpu_model_mb"] = model_bytes / mb
    return out
