"""PyTorch (transformers) backend settings.

Every field defaults to None, meaning "the library's own default": we pass
nothing, and the value transformers actually used is recorded in
`config/resolved.json`. Each field reaches `from_pretrained()` or
`generate()` (see `llem_mlflow/bench/`), or this model refuses it.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llem_mlflow.config.base import ConfigSection

# Values of GenerationConfig.cache_implementation that transformers 5 accepts
# without an extra package ("quantized" needs quanto/hqq; the hybrid kinds need
# hybrid models). Checked against transformers 5.24
# (`transformers.generation.configuration_utils.ALL_CACHE_IMPLEMENTATIONS`);
# there "sliding_window" is a deprecated alias that warns and builds a static cache.
CacheImplementation = Literal[
    "static",
    "offloaded_static",
    "sliding_window",
    "dynamic",
    "offloaded",
]

# The units accelerate's `convert_file_size_to_int` understands (it has no B, TB or TiB;
# a lower-case "b" would mean bits, so the units are case-sensitive here).
_MEMORY_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)$")
# device_map values for which from_pretrained() reads max_memory
# (transformers.integrations.accelerate._get_device_map); any other value ignores it.
# Sane bounds: a batch or beam this wide fits no memory; the value is a typo.
MAX_BATCH_SIZE = 65_536
MAX_BEAMS = 1024

DEVICE_MAPS_USING_MAX_MEMORY = ("auto", "balanced", "balanced_low_0", "sequential")
# device_map values that leave each data-parallel process a whole device of its own.
DATA_PARALLEL_DEVICE_MAPS = (None, "cuda", "cpu")


class PyTorchConfig(ConfigSection):
    """Settings for `AutoModelForCausalLM.from_pretrained()` and `model.generate()`."""

    # --- batching and processes ---------------------------------------------
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE, description="Prompts per generate() call (None -> 1)")
    num_processes: int | None = Field(
        default=None, ge=1, description="Data-parallel processes, one per device: GPU i or the CPU (None -> 1)"
    )

    # --- attention ------------------------------------------------------------
    attn_implementation: Literal["sdpa", "flash_attention_2", "flash_attention_3", "eager"] | None = Field(
        default=None, description="Attention kernel (None -> transformers picks, usually sdpa)"
    )

    # --- compilation (free strings: torch adds modes and backends) -------------
    torch_compile: bool | None = Field(default=None, description="Wrap the model in torch.compile (None -> False)")
    torch_compile_mode: str | None = Field(
        default=None, description="torch.compile mode, e.g. 'reduce-overhead', 'max-autotune' (None -> 'default')"
    )
    torch_compile_backend: str | None = Field(default=None, description="torch.compile backend (None -> 'inductor')")

    # --- bitsandbytes quantization --------------------------------------------
    load_in_4bit: bool | None = Field(default=None, description="4-bit bitsandbytes quantization (None -> False)")
    load_in_8bit: bool | None = Field(default=None, description="8-bit bitsandbytes quantization (None -> False)")
    bnb_4bit_compute_dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        default=None, description="Compute dtype for 4-bit layers (None -> float32)"
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = Field(default=None, description="4-bit type (None -> 'fp4')")
    bnb_4bit_use_double_quant: bool | None = Field(
        default=None, description="Quantize the quantization constants too (None -> False)"
    )

    # --- KV cache ---------------------------------------------------------------
    use_cache: bool | None = Field(default=None, description="Use the KV cache (None -> True)")
    cache_implementation: CacheImplementation | None = Field(
        default=None, description="KV cache class; 'static' allows CUDA graphs (None -> dynamic)"
    )

    # --- beam search --------------------------------------------------------------
    num_beams: int | None = Field(default=None, ge=1, le=MAX_BEAMS, description="Beam width (None -> 1: no beam search)")
    early_stopping: bool | None = Field(default=None, description="Stop beams early (None -> False; beams only)")
    length_penalty: float | None = Field(default=None, allow_inf_nan=False, description="Beam length penalty (None -> 1.0; beams only)")

    # --- repetition and speculative decoding --------------------------------------
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, description="Ban repeated n-grams (None -> 0: off)")
    prompt_lookup_num_tokens: int | None = Field(
        default=None, ge=1, description="Prompt-lookup decoding draft length (None -> off)"
    )

    # --- loading ------------------------------------------------------------------
    device_map: str | None = Field(
        default=None, description="'auto', 'cuda', 'cpu', ... (None -> one CUDA device if present, else CPU)"
    )
    max_memory: dict[int | Literal["cpu", "disk"], str] | None = Field(
        default=None, description="Per-device memory cap, e.g. {0: '10GiB', cpu: '30GiB'}"
    )
    revision: str | None = Field(default=None, description="Hub branch, tag or commit (None -> 'main')")
    trust_remote_code: bool | None = Field(
        default=None, description="Run code from the model repo (None -> False, transformers' default)"
    )

    @field_validator("max_memory", mode="before")
    @classmethod
    def _max_memory_keys(cls, value: object) -> object:
        # JSON (params, CLI overrides) turns GPU indices into strings: "0" -> 0.
        if not isinstance(value, dict):
            return value
        keys = {}
        for key in value:
            if isinstance(key, str) and key.isdigit():
                keys[key] = int(key)
            elif (isinstance(key, int) and not isinstance(key, bool) and key >= 0) or key in ("cpu", "disk"):
                keys[key] = key
            else:
                raise ValueError(f"max_memory key {key!r} is not a GPU index (0, 1, ...), 'cpu' or 'disk'")
        return {keys[k]: v for k, v in value.items()}

    @field_validator("max_memory")
    @classmethod
    def _max_memory_sizes(cls, value: dict | None) -> dict | None:
        for device, size in (value or {}).items():
            if not _MEMORY_SIZE.match(size):
                raise ValueError(
                    f"max_memory[{device!r}] = {size!r} is not a size: write a number and one of the units "
                    "KB, MB, GB, KiB, MiB, GiB, e.g. '10GiB' or '500MB'"
                )
        return value

    @model_validator(mode="after")
    def _one_quantization(self) -> PyTorchConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are mutually exclusive: set only one to true")
        return self

    @model_validator(mode="after")
    def _compile_options_need_compile(self) -> PyTorchConfig:
        given = [f for f in ("torch_compile_mode", "torch_compile_backend") if getattr(self, f) is not None]
        if given and self.torch_compile is not True:
            verb = "require" if len(given) > 1 else "requires"
            raise ValueError(f"{' and '.join(given)} {verb} torch_compile: true")
        return self

    @model_validator(mode="after")
    def _bnb_4bit_options_need_4bit(self) -> PyTorchConfig:
        given = [f for f in type(self).model_fields if f.startswith("bnb_4bit_") and getattr(self, f) is not None]
        if given and self.load_in_4bit is not True:
            verb = "require" if len(given) > 1 else "requires"
            raise ValueError(f"{', '.join(given)} {verb} load_in_4bit: true")
        return self

    @model_validator(mode="after")
    def _cache_implementation_needs_cache(self) -> PyTorchConfig:
        if self.cache_implementation is not None and self.use_cache is False:
            raise ValueError(
                "cache_implementation requires use_cache to be true or unset (it is false): remove one of them"
            )
        return self

    @model_validator(mode="after")
    def _prompt_lookup_single_sequence(self) -> PyTorchConfig:
        # transformers only raises this at generate() time, after the model has loaded.
        if self.prompt_lookup_num_tokens is None:
            return self
        if (self.num_beams or 1) > 1:
            raise ValueError("prompt_lookup_num_tokens cannot be combined with num_beams > 1 (prompt lookup is greedy/sampling only)")
        if (self.batch_size or 1) > 1:
            raise ValueError("prompt_lookup_num_tokens needs batch_size 1 (transformers' assisted generation runs one sequence at a time)")
        return self

    @model_validator(mode="after")
    def _beam_options_need_beams(self) -> PyTorchConfig:
        # Refused rather than ignored: a knob with no effect would make two runs look different when they are not.
        given = [f for f in ("early_stopping", "length_penalty") if getattr(self, f) is not None]
        if given and (self.num_beams or 1) <= 1:
            verb = "affect" if len(given) > 1 else "affects"
            raise ValueError(f"{' and '.join(given)} only {verb} beam search: set num_beams > 1 or remove them")
        return self

    @model_validator(mode="after")
    def _max_memory_needs_device_map(self) -> PyTorchConfig:
        # Refused rather than ignored: transformers reads max_memory only for these device_map values.
        if self.max_memory is not None and self.device_map not in DEVICE_MAPS_USING_MAX_MEMORY:
            raise ValueError(
                f"max_memory needs device_map set to one of {', '.join(DEVICE_MAPS_USING_MAX_MEMORY)} "
                f"(it is {self.device_map!r}); transformers ignores max_memory otherwise"
            )
        return self

    @model_validator(mode="after")
    def _one_device_per_process(self) -> PyTorchConfig:
        # Data parallel gives each process a whole model on its own device (rank i on cuda:i, or the
        # CPU); a device_map that spreads or pins the model cannot hold for every process.
        if (self.num_processes or 1) > 1 and self.device_map not in DATA_PARALLEL_DEVICE_MAPS:
            raise ValueError(
                f"num_processes > 1 gives each process its own device (process i on cuda:i, or the CPU), so "
                f"device_map {self.device_map!r} cannot apply: remove device_map (or set it to cuda or cpu), "
                "or use num_processes: 1 to spread one model over the GPUs"
            )
        return self
