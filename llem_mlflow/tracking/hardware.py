"""Cheap hardware facts without torch: CPU model from /proc/cpuinfo, GPUs from NVML."""

from __future__ import annotations

import functools
import platform


@functools.cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def gpu_facts() -> dict[str, str]:
    """GPU name/count/driver/CUDA from NVML, or {"gpu.name": "none"} without a GPU. Never raises."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver: a CPU machine
        return {"gpu.name": "none", "gpu.count": "0"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = sorted({_text(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)})
        facts = {"gpu.name": ", ".join(names) or "none", "gpu.count": str(count)}
        facts["gpu.driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        facts["cuda.driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        return facts
    except Exception as exc:
        return {"gpu.name": f"unknown (NVML: {type(exc).__name__})"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
