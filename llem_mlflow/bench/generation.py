"""Timed, batched generation: one RequestRecord per prompt.

A streamer timestamps every chunk of new tokens generate() streams, which
gives each request its time to first token (shared by the rows of a batch:
they get their first token from the same step), inter-token latencies (gaps
between the chunks that carry its tokens: one token per step, or several
accepted at once with prompt lookup) and end-to-end latency (the arrival of its
own last token), all counted from just before generate() was called. Beam
search cannot stream: then only the batch's generate() call is measured, and
ttft_ms is None, itl_ms empty.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from llem_mlflow.bench.device import synchronize
from llem_mlflow.bench.loading import json_safe

TRUNCATION_TAG = "llem.warning.truncated_prompts"
# Generation fields passed only when sampling: greedy decoding ignores them (and transformers warns).
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p")
# PyTorchConfig fields that are generate() kwargs of the same name.
PYTORCH_GENERATE_FIELDS = (
    "num_beams",
    "early_stopping",
    "length_penalty",
    "no_repeat_ngram_size",
    "prompt_lookup_num_tokens",
    "use_cache",
    "cache_implementation",
)


@dataclass
class Batch:
    index: int
    request_indices: list[int]  # positions in the measured order
    prompt_indices: list[int]  # Prompt.index of each row
    input_ids: Any  # tensor [rows, length], left-padded, on the model's device
    attention_mask: Any
    input_tokens: list[int]  # per row, padding excluded


@dataclass
class Truncation:
    """How many measured prompts `batches()` cut to max_input_tokens, and the longest before the cut."""

    limit: int
    prompts: int = 0
    truncated: int = 0
    longest: int = 0  # tokens (special tokens included) of the longest prompt before truncation

    def tags(self) -> dict[str, str]:
        if not self.truncated:
            return {}
        return {
            TRUNCATION_TAG: f"{self.truncated} of {self.prompts} measured prompts were longer than max_input_tokens "
            f"({self.limit} tokens) and were cut to it; the longest had {self.longest} tokens"
        }


@dataclass
class RequestRecord:
    request_index: int
    batch_index: int
    prompt_index: int
    input_tokens: int
    output_tokens: int  # up to and including the first EOS; padding excluded
    ttft_ms: float | None
    itl_ms: list[float]  # gaps between the streamed chunks that carry its tokens
    e2e_ms: float  # the arrival of its own last token (under beam search: the generate() call)
    text: str | None = None
    batch_ms: float | None = None  # its batch's generate() call, start to end (synchronized)
    trial: int = 1  # the measured trial it belongs to (set by the runner)
    rank: int = 0  # the data-parallel process that ran it (0 in a one-process run)

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first: (e2e - ttft) / (n - 1); None for n < 2 or without TTFT."""
        if self.ttft_ms is None or self.output_tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)


def build_generate_kwargs(cfg, pad_token_id: int | None) -> dict[str, Any]:
    """generate() kwargs from DecoderConfig and the PyTorchConfig generation fields (None fields omitted)."""
    dec, pt = cfg.decoder, cfg.pytorch
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_output_tokens, "do_sample": dec.do_sample}
    if dec.do_sample:
        for name in SAMPLING_FIELDS:
            if getattr(dec, name) is not None:
                kwargs[name] = getattr(dec, name)
    kwargs["repetition_penalty"] = dec.repetition_penalty  # applies to greedy decoding too
    if dec.min_new_tokens is not None:
        kwargs["min_new_tokens"] = dec.min_new_tokens
    for name in PYTORCH_GENERATE_FIELDS:
        if getattr(pt, name) is not None:
            kwargs[name] = getattr(pt, name)
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    return kwargs


def merged_generation_config(model, kwargs: dict[str, Any]):
    """The GenerationConfig generate() builds from the model's defaults and `kwargs`."""
    try:
        return model._prepare_generation_config(None, **kwargs)[0]
    except (AttributeError, TypeError):  # private API changed: same merge, done by hand
        config = copy.deepcopy(model.generation_config)
        config.update(**kwargs)
        return config


class StepClock:
    """A transformers streamer that only timestamps; the work per step is one append."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.chunks: list[Any] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())
        self.chunks.append(value)

    def end(self) -> None:
        pass

    def arrivals(self) -> list[tuple[float, int]]:
        """(arrival time, new tokens per row so far) for each streamed chunk (the first put is the prompt)."""
        out: list[tuple[float, int]] = []
        count = 0
        for t, chunk in zip(self.times[1:], self.chunks[1:]):
            # [rows] for one step; [1, k] when prompt lookup accepts k tokens at once.
            count += chunk.shape[-1] if chunk.dim() == 2 else 1
            out.append((t, count))
        return out


def chunk_times(arrivals: list[tuple[float, int]], n_tokens: int) -> list[float]:
    """Arrival times of the chunks that carry a row's first `n_tokens` tokens (at least the first chunk)."""
    times = []
    for t, count in arrivals:
        times.append(t)
        if count >= n_tokens:
            break
    return times


def _streamer_class():
    # BaseStreamer lives in transformers (heavy): build the subclass on first use.
    from transformers.generation.streamers import BaseStreamer

    return type("StepClockStreamer", (StepClock, BaseStreamer), {})


class Generator:
    def __init__(self, loaded, cfg) -> None:
        self.loaded = loaded
        self.cfg = cfg
        self.generate_kwargs = build_generate_kwargs(cfg, loaded.tokenizer.pad_token_id)
        self.streams = (cfg.pytorch.num_beams or 1) == 1
        self._streamer_cls = _streamer_class() if self.streams else None
        self._eos_ids = eos_token_ids(self._generation_config())
        self.truncation = Truncation(cfg.max_input_tokens)  # filled by batches()

    def _generation_config(self) -> Any:
        """The GenerationConfig generate() builds from the model's defaults and our kwargs."""
        return merged_generation_config(self.loaded.model, self.generate_kwargs)

    def resolved_generation_config(self) -> dict[str, Any]:
        """The GenerationConfig generate() uses (JSON-safe): what resolved.json shows."""
        return json_safe(self._generation_config().to_dict())

    def prefill_only(self) -> Generator:
        """The same batches, padding, cache and decoding settings, one new token per request: the
        prefill pass of measure.prefill_split."""
        twin = copy.copy(self)
        kwargs = {k: v for k, v in self.generate_kwargs.items() if k != "min_new_tokens"}
        twin.generate_kwargs = {**kwargs, "max_new_tokens": 1}
        return twin

    def batches(self, prompts) -> list[Batch]:
        """Tokenized batches in prompt order: truncated to max_input_tokens, left-padded."""
        size = self.cfg.pytorch.batch_size or 1
        tokenizer = self.loaded.tokenizer
        self.truncation = Truncation(self.cfg.max_input_tokens)
        out = []
        for start in range(0, len(prompts), size):
            chunk = prompts[start : start + size]
            self._count_truncation([p.text for p in chunk])
            enc = tokenizer(
                [p.text for p in chunk],
                padding=True,
                truncation=True,
                max_length=self.cfg.max_input_tokens,
                return_tensors="pt",
            )
            mask = enc["attention_mask"]
            out.append(
                Batch(
                    index=len(out),
                    request_indices=list(range(start, start + len(chunk))),
                    prompt_indices=[p.index for p in chunk],
                    input_ids=enc["input_ids"].to(self.loaded.device),
                    attention_mask=mask.to(self.loaded.device),
                    input_tokens=[int(n) for n in mask.sum(dim=1)],
                )
            )
        return out

    def _count_truncation(self, texts: list[str]) -> None:
        # Full lengths (verbose=False: no "longer than the model's maximum" warning per prompt).
        lengths = [len(ids) for ids in self.loaded.tokenizer(texts, verbose=False)["input_ids"]]
        cut = [n for n in lengths if n > self.truncation.limit]
        self.truncation.prompts += len(lengths)
        self.truncation.truncated += len(cut)
        self.truncation.longest = max([self.truncation.longest, *cut])

    def run_batch(self, batch: Batch) -> list[RequestRecord]:
        """Generate for one batch and time every request."""
        import torch

        torch.manual_seed(self.cfg.random_seed + batch.index)  # each batch reproducible on its own
        clock = self._streamer_cls() if self.streams else None
        with torch.inference_mode():
            start = time.perf_counter()
            output = self.loaded.model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                streamer=clock,
                **self.generate_kwargs,
            )
            synchronize(self.loaded.gpu_indices)  # every GPU holding weights: the last layer may be on any
            end = time.perf_counter()
        new_tokens = output[:, batch.input_ids.shape[1] :].tolist()
        arrivals = clock.arrivals() if clock else []
        batch_ms = (end - start) * 1000
        records = []
        for row, tokens in enumerate(new_tokens):
            n_out = self._count_output(tokens)
            if arrivals:
                times = chunk_times(arrivals, n_out)
                ttft = (times[0] - start) * 1000
                itl = [(b - a) * 1000 for a, b in zip(times, times[1:])]
                e2e = (times[-1] - start) * 1000
            else:
                ttft, itl, e2e = None, [], batch_ms
            text = None
            if self.cfg.save_generated_text:
                text = self.loaded.tokenizer.decode(tokens[:n_out], skip_special_tokens=True)
            records.append(
                RequestRecord(
                    request_index=batch.request_indices[row],
                    batch_index=batch.index,
                    prompt_index=batch.prompt_indices[row],
                    input_tokens=batch.input_tokens[row],
                    output_tokens=n_out,
                    ttft_ms=ttft,
                    itl_ms=itl,
                    e2e_ms=e2e,
                    text=text,
                    batch_ms=batch_ms,
                )
            )
        return records

    def _count_output(self, tokens: list[int]) -> int:
        # Up to and including the first EOS: after it a finished row only holds padding.
        for i, token in enumerate(tokens):
            if token in self._eos_ids:
                return i + 1
        return len(tokens)


def eos_token_ids(generation_config: Any) -> frozenset[int]:
    """The ids generate() stops a row at: those of the generation config it uses (not the
    tokenizer's, which generate() does not read)."""
    eos = generation_config.eos_token_id
    if eos is None:
        return frozenset()
    if hasattr(eos, "tolist"):  # a tensor, once generate() has prepared it
        eos = eos.tolist()
    return frozenset(eos if isinstance(eos, (list, tuple)) else [eos])

