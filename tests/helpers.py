"""Helpers shared by tests: `from helpers import write_config`."""

from __future__ import annotations

from pathlib import Path


def write_config(path: Path, **sections: object) -> Path:
    """Write a tiny, fast experiment config (random:tiny, CPU) with overrides merged in."""
    import yaml

    base: dict[str, object] = {
        "model": "random:tiny",
        "max_input_tokens": 32,
        "max_output_tokens": 8,
        "dataset": {"source": "builtin", "n": 4},
        "decoder": {"preset": "deterministic", "min_new_tokens": 8},
        "pytorch": {"batch_size": 2},
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "energy": {"codecarbon": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}  # type: ignore[dict-item]
        else:
            base[key] = value
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path
