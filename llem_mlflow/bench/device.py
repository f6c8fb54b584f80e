"""Device helpers shared by the measured window's edges."""

from __future__ import annotations


def synchronize() -> None:
    """Wait for queued CUDA work, so a timestamp or energy reading covers it; nothing on CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
