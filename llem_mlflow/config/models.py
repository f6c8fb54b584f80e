"""The experiment config: one YAML file describes one measured run.

Sections are small pydantic models with extra="forbid", so a typo is an
error, never a silently ignored key. `docs/config.md` documents every field.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llem_mlflow.config.backend_configs import PyTorchConfig
from llem_mlflow.config.base import ConfigSection

# Sane bounds for pure-config lengths: beyond any model's context window (the longest are ~10M tokens)
# or any memory. The model's own window is checked once its config is known (bench/context.py).
MAX_TOKENS = 2**24
MAX_PROMPTS = 1_000_000
MAX_WARMUP_BATCHES = 10_000

# Decoding presets expand before validation; fields the user wrote win.
SAMPLING_PRESETS: dict[str, dict[str, Any]] = {
    "deterministic": {"temperature": 0.0, "do_sample": False},
    "standard": {"temperature": 1.0, "do_sample": True, "top_p": 0.95},
    "creative": {"temperature": 0.8, "do_sample": True, "top_p": 0.9, "repetition_penalty": 1.1},
    "factual": {"temperature": 0.3, "do_sample": True},
}

# Keyword arguments that a named field already sets, and that field: passthrough_kwargs may
# not set them too. from_pretrained() hands keys it does not know to the model config, so a
# generate() setting such as use_cache or num_beams written there would also act: refuse all
# names of PyTorchConfig and DecoderConfig fields (filled in below the classes).
_COVERED_KWARGS: dict[str, str] = {
    "dtype": "precision",
    "torch_dtype": "precision",
    "quantization_config": "pytorch.load_in_4bit / pytorch.load_in_8bit / pytorch.bnb_4bit_*",
    "max_new_tokens": "max_output_tokens",
    "max_length": "max_output_tokens",
}


class DecoderConfig(ConfigSection):
    """Sampling settings passed to `generate()`."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 means greedy")
    do_sample: bool = Field(default=True, description="Sample (true) or decode greedily (false)")
    top_k: int = Field(default=50, ge=0, description="Keep the k most likely tokens (0: off)")
    top_p: float = Field(default=1.0, ge=0.0, le=1.0, description="Nucleus sampling mass (1.0: off)")
    repetition_penalty: float = Field(default=1.0, ge=0.1, le=10.0, description="Penalty for repeated tokens (1.0: off)")
    min_p: float | None = Field(default=None, ge=0.0, le=1.0, description="Minimum token probability (None: off)")
    min_new_tokens: int | None = Field(
        default=None, ge=1, description="Force at least this many new tokens (fix it to max_output_tokens for equal-length runs)"
    )
    preset: Literal["deterministic", "standard", "creative", "factual"] | None = Field(
        default=None, description="Named sampling preset; fields written beside it win"
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset")
        if isinstance(preset, str) and preset in SAMPLING_PRESETS:
            data = {**SAMPLING_PRESETS[preset], **data}
        # temperature 0 alone means greedy; do_sample written as true beside it is refused below.
        temperature = data.get("temperature")
        if not isinstance(temperature, bool) and temperature in (0, 0.0) and "do_sample" not in data:
            data = {**data, "do_sample": False}
        return data

    @model_validator(mode="after")
    def _sampling_needs_temperature(self) -> DecoderConfig:
        if self.do_sample and self.temperature == 0.0:
            raise ValueError(
                "temperature 0 with do_sample true cannot sample: set do_sample: false (greedy) or a temperature > 0"
            )
        return self


def _check_presets_name_fields() -> None:
    """Fail at import if a preset names a field DecoderConfig does not have."""
    fields = set(DecoderConfig.model_fields)
    for name, values in SAMPLING_PRESETS.items():
        unknown = set(values) - fields
        if unknown:
            raise RuntimeError(f"sampling preset {name!r} sets unknown DecoderConfig fields {sorted(unknown)}")


_check_presets_name_fields()
_COVERED_KWARGS.update({name: f"pytorch.{name}" for name in PyTorchConfig.model_fields})
_COVERED_KWARGS.update({name: f"decoder.{name}" for name in DecoderConfig.model_fields if name != "preset"})
COVERED_FROM_PRETRAINED_KWARGS = frozenset(_COVERED_KWARGS)


class DatasetConfig(ConfigSection):
    """Where the prompts come from."""

    source: str = Field(
        default="builtin",
        min_length=1,
        description="'builtin' (shipped prompts), 'synthetic' (exact token length), or a .jsonl/.csv/.parquet path",
    )
    n: int = Field(default=50, ge=1, le=MAX_PROMPTS, description="Number of prompts to measure")
    column: str | None = Field(default=None, description="Column holding the prompt in a file (None -> 'prompt', then 'text')")
    synthetic_input_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS, description="Prompt length in tokens for source: synthetic"
    )
    shuffle: bool = Field(default=False, description="Shuffle prompts (seeded by random_seed) before taking n")

    @model_validator(mode="after")
    def _synthetic_needs_length(self) -> DatasetConfig:
        if self.source == "synthetic" and self.synthetic_input_tokens is None:
            raise ValueError("source: synthetic needs synthetic_input_tokens (the prompt length in tokens)")
        if self.source != "synthetic" and self.synthetic_input_tokens is not None:
            raise ValueError("synthetic_input_tokens only applies to source: synthetic")
        if self.source in ("builtin", "synthetic") and self.column is not None:
            raise ValueError(f"column only applies to a file source, not source: {self.source}")
        return self


class WarmupConfig(ConfigSection):
    """Batches generated before the measured window (not counted)."""

    enabled: bool = True
    n_batches: int = Field(default=2, ge=1, le=MAX_WARMUP_BATCHES, description="Warmup generate() calls")


class BaselineConfig(ConfigSection):
    """Idle GPU power measured before the model loads."""

    enabled: bool = True
    duration_s: float = Field(default=10.0, gt=0.0, le=600.0, description="Idle measurement length in seconds")


class EnergyConfig(ConfigSection):
    """Energy meters."""

    gpu: Literal["auto", "nvml", "off"] = Field(
        default="auto", description="auto: NVML when a GPU is visible; nvml: required (error without it); off"
    )
    codecarbon: bool = Field(default=True, description="CPU/RAM energy and emissions with CodeCarbon's offline tracker")
    codecarbon_scope: Literal["process", "machine"] = Field(
        default="process",
        description="What CodeCarbon's estimates bill: this process tree's CPU share and memory (process) or the whole machine's",
    )
    rapl: bool = Field(
        default=True, description="Read the CPU's RAPL energy counters (Linux powercap) where readable: they replace CodeCarbon's CPU/RAM figures"
    )
    country_iso_code: str = Field(
        default="USA", pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3 code for the grid's carbon intensity"
    )
    sample_interval_ms: int = Field(default=100, ge=10, le=10_000, description="Power sampler period in milliseconds")

    @field_validator("gpu", mode="before")
    @classmethod
    def _yaml_off_is_off(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted off, no or false as the boolean false: the user meant "off".
        if value is False:
            return "off"
        if value is True:
            raise ValueError("YAML read on/yes/true as the boolean true, which names no mode here: write auto or nvml")
        return value

    @field_validator("country_iso_code")
    @classmethod
    def _country_codecarbon_knows(cls, value: str, info: ValidationInfo) -> str:
        # Checked against a table shipped with the package (CodeCarbon's own list), so `validate`
        # refuses what `run` would, without importing CodeCarbon. Unused when CodeCarbon is off.
        if info.data.get("codecarbon", True):
            from llem_mlflow.energy.countries import country_problem

            problem = country_problem(value)
            if problem:
                raise ValueError(problem)
        return value


class MeasureConfig(ConfigSection):
    """The measured window: how long it lasts, and what the measured phase covers beyond its batches."""

    min_duration_s: float | None = Field(
        default=None,
        ge=0.0,
        le=3600.0,
        description="Repeat the prompt set (whole passes) until the measured window lasts this long; "
        "None: chosen from the meters (5 s with NVML GPU energy, 1 s otherwise); 0: one pass",
    )
    prefill_split: bool = Field(
        default=False,
        description="After each measured trial, a prefill-only pass (one new token) over the same batches in its own "
        "energy window: prefill and decode energy",
    )


class CooldownConfig(ConfigSection):
    """Wait between trials until the GPU is back near its baseline temperature."""

    enabled: bool = False
    tolerance_c: float = Field(default=3.0, gt=0.0, description="Degrees above baseline temperature that count as cool")
    timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0, description="Longest wait per cool-down")


class SloConfig(ConfigSection):
    """Service-level objective for goodput: a request is good when it meets every bound given."""

    ttft_ms: float | None = Field(default=None, gt=0.0, description="Time to first token from arrival, at most (ms)")
    tpot_ms: float | None = Field(default=None, gt=0.0, description="Time per output token after the first, at most (ms)")

    @model_validator(mode="after")
    def _one_bound(self) -> SloConfig:
        if self.ttft_ms is None and self.tpot_ms is None:
            raise ValueError("slo needs ttft_ms, tpot_ms or both (or leave slo out)")
        return self


# The most requests one online trial may schedule: more is a typo in rate or duration.
MAX_ONLINE_REQUESTS = 1_000_000


class OnlineConfig(ConfigSection):
    """Requests that arrive over time, served by transformers' continuous batching (scenario: online)."""

    request_rate: float | None = Field(
        default=None, gt=0.0, le=100_000.0, description="Open loop: mean arrivals per second (give this or max_concurrency)"
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=100_000, description="Closed loop: this many requests outstanding; each finish sends the next"
    )
    arrival: Literal["poisson", "constant", "gamma"] | None = Field(
        default=None, description="Gaps between arrivals (request_rate only; None -> poisson)"
    )
    burstiness: float | None = Field(
        default=None, gt=0.0, le=1000.0, description="Gamma shape for arrival: gamma (1: Poisson; < 1 burstier; > 1 smoother)"
    )
    n_requests: int | None = Field(
        default=None, ge=2, le=MAX_ONLINE_REQUESTS, description="Requests per trial (give this or duration_s)"
    )
    duration_s: float | None = Field(
        default=None, gt=0.0, le=86_400.0, description="Send requests for this long per trial (give this or n_requests)"
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Seed of the arrival schedule (None -> random_seed)")
    slo: SloConfig | None = Field(default=None, description="Bounds for goodput (None: no goodput)")
    kv_cache_blocks: int | None = Field(
        default=None,
        ge=1,
        description="KV cache size in blocks of 256 tokens (None -> transformers sizes it from free memory: "
        "60-90% of it; on a CPU set it, or it takes 60% of RAM)",
    )

    @model_validator(mode="after")
    def _one_load_and_one_length(self) -> OnlineConfig:
        problems = []
        if (self.request_rate is None) == (self.max_concurrency is None):
            problems.append(
                "give exactly one of request_rate (open loop: arrivals per second) and max_concurrency "
                "(closed loop: requests kept outstanding)"
            )
        if (self.n_requests is None) == (self.duration_s is None):
            problems.append("give exactly one of n_requests and duration_s (how long each trial sends requests)")
        if self.max_concurrency is not None and (self.arrival is not None or self.burstiness is not None):
            problems.append(
                "arrival and burstiness shape the gaps of request_rate; with max_concurrency each finish sends "
                "the next request: remove them"
            )
        elif (self.arrival == "gamma") != (self.burstiness is not None):
            problems.append("burstiness is required for, and only for, arrival: gamma (1.0 is a Poisson process)")
        if self.request_rate is not None and self.duration_s is not None:
            expected = self.request_rate * self.duration_s
            if expected > MAX_ONLINE_REQUESTS:
                problems.append(
                    f"request_rate x duration_s schedules about {expected:.0f} requests; at most "
                    f"{MAX_ONLINE_REQUESTS} are allowed: lower one of them"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


# What continuous batching (transformers 5.24) cannot honour, as (field, test on the config, why).
# Its logits processors drop min_new_tokens and repetition_penalty without an error, and it
# schedules, batches and caches by itself (paged attention).
_NOT_FOR_ONLINE: tuple[tuple[str, Any, str], ...] = (
    ("pytorch.num_beams", lambda c: (c.pytorch.num_beams or 1) > 1, "beam search"),
    ("pytorch.prompt_lookup_num_tokens", lambda c: c.pytorch.prompt_lookup_num_tokens is not None, "prompt-lookup decoding"),
    ("pytorch.cache_implementation", lambda c: c.pytorch.cache_implementation is not None, "it uses its own paged cache"),
    ("pytorch.use_cache", lambda c: c.pytorch.use_cache is False, "it needs its paged KV cache"),
    ("pytorch.batch_size", lambda c: c.pytorch.batch_size is not None, "it forms batches itself"),
    ("pytorch.torch_compile", lambda c: bool(c.pytorch.torch_compile), "it compiles by its own configs"),
    ("pytorch.no_repeat_ngram_size", lambda c: bool(c.pytorch.no_repeat_ngram_size), "its logits processors lack it"),
    ("decoder.min_new_tokens", lambda c: c.decoder.min_new_tokens is not None, "its logits processors drop it"),
    ("decoder.repetition_penalty", lambda c: c.decoder.repetition_penalty != 1.0, "its logits processors drop it"),
    ("decoder.min_p", lambda c: c.decoder.min_p is not None, "transformers does not declare it supported"),
    ("measure.prefill_split", lambda c: c.measure.prefill_split, "its prefill-only pass repeats fixed batches"),
    ("pytorch.num_processes", lambda c: (c.pytorch.num_processes or 1) > 1, "one manager serves the arrival schedule, in one process"),
    (
        "measure.min_duration_s",
        lambda c: c.measure.min_duration_s is not None,
        "an online trial lasts online.n_requests arrivals or online.duration_s",
    ),
)


class RegistryConfig(ConfigSection):
    """Register the benchmarked model in the MLflow model registry."""

    model_name: str = Field(min_length=1, description="Registered model name")
    alias: str | None = Field(default=None, description="Alias to point at the new version")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra version tags")

    @field_validator("alias")
    @classmethod
    def _alias_mlflow_accepts(cls, value: str | None) -> str | None:
        # Refused now, not after the whole benchmark when the version is registered.
        from llem_mlflow.aliases import alias_problem

        problem = alias_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class ExperimentConfig(ConfigSection):
    """One experiment: a model, a prompt set, settings, and what to measure."""

    model: str = Field(min_length=1, description="Hub id, local path, random:<preset> or models:/<name>/<version|@alias>")
    backend: Literal["pytorch"] = "pytorch"
    precision: Literal["fp32", "fp16", "bf16"] | None = Field(
        default=None, description="Weights dtype (None -> bf16 on CUDA, fp32 on CPU)"
    )
    max_input_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS, description="Prompts are truncated to this many tokens")
    max_output_tokens: int = Field(default=128, ge=1, le=MAX_TOKENS, description="max_new_tokens for generate()")
    random_seed: int = Field(
        default=42, ge=0, le=2**32 - 1, description="Seeds torch, sampling, random: weights and shuffling (numpy's range)"
    )
    n_trials: int = Field(default=1, ge=1, le=1000, description="Repeats of the measured phase on the loaded model")
    scenario: Literal["offline", "online"] = Field(
        default="offline", description="offline: fixed batches back to back; online: requests arriving over time (online:)"
    )
    save_generated_text: bool = Field(default=False, description="Put the generated text in the per-request table")

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    pytorch: PyTorchConfig = Field(default_factory=PyTorchConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    online: OnlineConfig | None = Field(default=None, description="The load of scenario: online")
    registry: RegistryConfig | None = None
    experiment: str | None = Field(
        default=None,
        min_length=1,
        description="MLflow experiment for the run when the caller names none (--experiment-name, MLFLOW_EXPERIMENT_NAME)",
    )
    run_name: str | None = Field(
        default=None, min_length=1, description="MLflow run name (None -> the config file's name without extension); --run-name wins"
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags added to the MLflow run")
    passthrough_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra from_pretrained() arguments not covered by a field"
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        # `pytorch:` with every line commented out is YAML null: it means "no settings", not an error.
        if isinstance(data, dict):
            empty = [k for k, v in data.items() if v is None and k in cls.model_fields and cls.model_fields[k].default_factory]
            if empty:
                data = {k: v for k, v in data.items() if k not in empty}
        return data

    @model_validator(mode="after")
    def _passthrough_not_covered(self) -> ExperimentConfig:
        covered = sorted(COVERED_FROM_PRETRAINED_KWARGS & set(self.passthrough_kwargs))
        if covered:
            fixes = "; ".join(f"{key} -> {_COVERED_KWARGS[key]}" for key in covered)
            raise ValueError(
                f"passthrough_kwargs sets {', '.join(covered)}, which named fields already cover: "
                f"use the field instead ({fixes})"
            )
        return self

    @field_validator("passthrough_kwargs")
    @classmethod
    def _passthrough_is_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Every field becomes an MLflow param and must come back equal (params.py writes dicts as JSON).
        for key, item in value.items():
            problem = _json_problem(item)
            if problem:
                raise ValueError(
                    f"passthrough_kwargs.{key} {problem}: only JSON values (text, finite numbers, true/false, null, "
                    "lists, mappings with text keys) can be logged as MLflow params; quote it to pass text"
                )
        return value

    @model_validator(mode="after")
    def _synthetic_prompt_fits(self) -> ExperimentConfig:
        tokens = self.dataset.synthetic_input_tokens
        if tokens is not None and tokens > self.max_input_tokens:
            raise ValueError(
                f"dataset.synthetic_input_tokens ({tokens}) exceeds max_input_tokens ({self.max_input_tokens}): "
                "the prompts would be truncated; lower it or raise max_input_tokens"
            )
        return self

    @model_validator(mode="after")
    def _every_process_has_batches(self) -> ExperimentConfig:
        processes = self.pytorch.num_processes or 1
        batches = math.ceil(self.dataset.n / (self.pytorch.batch_size or 1))
        if batches < processes:
            raise ValueError(
                f"pytorch.num_processes ({processes}) exceeds the number of batches ({batches} = dataset.n "
                f"{self.dataset.n} / batch_size {self.pytorch.batch_size or 1}): every process needs a batch; "
                "raise dataset.n or lower batch_size or num_processes"
            )
        return self

    @model_validator(mode="after")
    def _min_new_tokens_fit(self) -> ExperimentConfig:
        if self.decoder.min_new_tokens is not None and self.decoder.min_new_tokens > self.max_output_tokens:
            raise ValueError(
                f"decoder.min_new_tokens ({self.decoder.min_new_tokens}) exceeds max_output_tokens "
                f"({self.max_output_tokens}): lower it or raise max_output_tokens"
            )
        return self


    @model_validator(mode="after")
    def _online_fits_the_scenario(self) -> ExperimentConfig:
        if self.scenario == "offline":
            if self.online is not None:
                raise ValueError("online: only applies to scenario: online (remove it, or set scenario: online)")
            return self
        if self.online is None:
            raise ValueError(
                "scenario: online needs an online: section with request_rate or max_concurrency, "
                "and n_requests or duration_s"
            )
        refused = [f"{name} ({why})" for name, applies, why in _NOT_FOR_ONLINE if applies(self)]
        if refused:
            raise ValueError(
                "scenario: online runs transformers' continuous batching, which cannot honour "
                + "; ".join(refused)
                + ": remove them, or use scenario: offline"
            )
        return self


def _json_problem(value: Any) -> str | None:
    """Why `value` would not survive a JSON round trip, or None if it would."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"holds {value}, which JSON cannot write"
    if isinstance(value, list):
        return next((p for p in map(_json_problem, value) if p), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "has a mapping key that is not text"
        return next((p for p in map(_json_problem, value.values()) if p), None)
    return f"holds a {type(value).__name__}"
