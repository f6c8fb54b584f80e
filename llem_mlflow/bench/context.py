"""The model's context window: prompt + output must fit, checked once the model's config is known
(from the preset for `random:` models, from config.json before the weights load for the rest).

A prompt is cut to max_input_tokens and generate() adds up to max_output_tokens, so the two
must add up to at most the window; past it the position embeddings run out (an index error,
or silently wrong output with some attention kernels).
"""

from __future__ import annotations

from typing import Any

from llem_mlflow.errors import ConfigError

# Config attributes that name the longest sequence, by model family (first found wins).
WINDOW_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx", "max_seq_len")
# RoPE scalings that stretch the window by their factor.
STRETCHING_ROPE_TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3")


def context_window(config: Any) -> tuple[int, str] | None:
    """(tokens, where it came from) for a transformers config or a dict of its fields; None if unknown."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    found = next(((get(n), n) for n in WINDOW_ATTRIBUTES if isinstance(get(n), int) and get(n) > 0), None)
    if found is None:
        text_config = get("text_config")  # multimodal models keep the language model's config inside
        return context_window(text_config) if text_config is not None else None
    window, source = found
    scaling = get("rope_scaling") or get("rope_parameters")
    if isinstance(scaling, dict):
        factor = scaling.get("factor")
        rope_type = scaling.get("rope_type") or scaling.get("type")
        if isinstance(factor, (int, float)) and factor > 1 and rope_type in STRETCHING_ROPE_TYPES:
            original = scaling.get("original_max_position_embeddings")
            stretched = int((original if isinstance(original, int) else window) * factor)
            if stretched > window:
                window, source = stretched, f"{source} with {rope_type} RoPE scaling x{factor:g}"
    return window, source


def check_fits(cfg: Any, window: tuple[int, str] | None, model: str) -> None:
    """ConfigError when max_input_tokens + max_output_tokens exceed the window (unknown window: no check)."""
    if window is None:
        return
    tokens, source = window
    need = cfg.max_input_tokens + cfg.max_output_tokens
    if need > tokens:
        raise ConfigError(
            f"max_input_tokens ({cfg.max_input_tokens}) + max_output_tokens ({cfg.max_output_tokens}) = {need} tokens "
            f"do not fit the context window of model {model!r}: {tokens} tokens ({source} in its config). "
            f"Fix: lower max_output_tokens or max_input_tokens so that they add up to at most {tokens}"
        )
