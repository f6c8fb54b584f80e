"""What the run ran on: library versions and the device the model landed on (torch, no MLflow)."""

from __future__ import annotations

import platform
import sys
from typing import TYPE_CHECKING, Any

from llem_mlflow import __version__

if TYPE_CHECKING:
    from llem_mlflow.bench.loading import LoadedModel


def environment_snapshot() -> dict[str, Any]:
    """Versions of the measuring stack (the reporter adds MLflow's own)."""
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "llem_mlflow": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }


def environment_tags(env: dict[str, Any]) -> dict[str, str]:
    return {
        "llem.versions.python": env["python"],
        "llem.versions.torch": env["torch"],
        "llem.versions.transformers": env["transformers"],
        "llem.cuda.version": env["cuda"] or "none",
    }


def device_tags(loaded: LoadedModel) -> dict[str, str]:
    from llem_mlflow.tracking.hardware import cpu_model  # plain /proc reading, no MLflow

    if loaded.gpu_indices:
        import torch

        names = sorted({torch.cuda.get_device_name(i) for i in loaded.gpu_indices})
        return {
            "llem.device.type": "cuda",
            "llem.device.name": ", ".join(names),
            "llem.device.count": str(len(loaded.gpu_indices)),
        }
    return {"llem.device.type": "cpu", "llem.device.name": cpu_model(), "llem.device.count": "1"}
