"""Serving under load: requests sent over time to one transformers continuous-batching manager.

Open loop (`online.request_rate`): request i is sent at its offset in the seeded
arrival schedule (bench/arrivals.py), whether or not earlier ones finished.
Closed loop (`online.max_concurrency`): that many requests are sent at once, and
each finish sends the next one, as a fixed pool of clients would.

Every request records, on one clock (`time.perf_counter`, the clock transformers
stamps with): its arrival (just before `add_request`), its admission (leaving
the waiting queue for a batch: `lifespan[0]`), each token (`record_timestamps`)
and its finish (`lifespan[1]`). From these: queue wait, TTFT and end-to-end
from arrival, TPOT and inter-token gaps. Times in the records are seconds after
the first arrival.

A request whose KV cache the manager dropped to make room (a "soft reset": it
is re-queued and prefilled again) loses the timestamps before the reset; it is
recognised because its state was re-created after its arrival (`created_time`),
and its queue wait (and TTFT/ITL when tokens lack a time) are absent (None).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from llem_mlflow.bench.arrivals import arrival_offsets
from llem_mlflow.bench.generation import build_generate_kwargs, merged_generation_config
from llem_mlflow.bench.loading import json_safe

POLL_S = 0.05  # longest wait for a result before the driver checks the schedule and the manager again
STALL_S = 600.0  # no request finished for this long while some are outstanding: the manager is stuck
STOP_TIMEOUT_S = 60.0


@dataclass
class OnlineRequest:
    prompt_index: int
    input_ids: list[int]  # truncated to max_input_tokens, no padding


@dataclass
class OnlineRequestRecord:
    request_index: int  # order of arrival
    prompt_index: int
    input_tokens: int
    output_tokens: int  # generated tokens, the EOS included when one ended the request
    scheduled_s: float | None  # open loop: the schedule's time for it; closed loop: None
    arrival_s: float  # when it was sent (s after the first arrival)
    admitted_s: float  # when the manager took it into a batch (after a soft reset: the last time)
    first_token_s: float | None
    finished_s: float
    queue_ms: float | None  # arrival -> admission (None after a soft reset: the first admission is lost)
    ttft_ms: float | None  # arrival -> first token
    tpot_ms: float | None  # (last token - first token) / (output_tokens - 1); None below 2 tokens
    e2e_ms: float  # arrival -> last token
    itl_ms: list[float] = field(default_factory=list)
    reset: bool = False  # the manager dropped its cache and prefilled it again
    in_steady_window: bool = False  # it arrived inside its trial's steady window (set by bench/steady.py)
    token_s: list[float] = field(default_factory=list)  # each token's time (not in requests.csv)
    text: str | None = None
    trial: int = 1  # the measured trial it belongs to (set by the runner)

    # requests.csv (itl_ms as its mean)
    TABLE_COLUMNS: ClassVar[list[str]] = [
        "trial", "request_index", "prompt_index", "input_tokens", "output_tokens", "scheduled_s", "arrival_s",
        "admitted_s", "first_token_s", "finished_s", "queue_ms", "ttft_ms", "tpot_ms", "e2e_ms", "itl_ms_mean",
        "reset", "in_steady_window", "text",
    ]  # fmt: skip


@dataclass
class OnlineTrace:
    """One trial: the requests in arrival order and what the clocks said."""

    records: list[OnlineRequestRecord]
    marks: list[Any]  # the energy meter's reading at each arrival, in arrival order (None: no meter)
    start_monotonic_s: float  # the first arrival on time.monotonic (the power sampler's clock)
    start_epoch_ms: float  # the first arrival on the wall clock
    schedule_s: list[float] | None  # open loop: the planned offsets


@dataclass
class _Sent:
    index: int
    request: OnlineRequest
    scheduled_s: float | None
    before: float  # perf_counter just before add_request: the arrival
    after: float
    mark: Any


class OnlineDriver:
    """One continuous-batching manager for the whole run (warmup and every trial)."""

    def __init__(self, loaded, cfg) -> None:
        self.loaded = loaded
        self.cfg = cfg
        self.online = cfg.online
        kwargs = build_generate_kwargs(cfg, loaded.tokenizer.pad_token_id)
        self.generation_config = merged_generation_config(loaded.model, kwargs)
        self.manager: Any = None
        self.resolved: dict[str, Any] = {}  # what continuous batching resolved (resolved.json)
        self._trials = self._warmups = 0  # request ids stay unique over the life of the manager

    def requests(self, prompts) -> list[OnlineRequest]:
        tokenizer = self.loaded.tokenizer
        out = []
        for prompt in prompts:
            ids = tokenizer(prompt.text, truncation=True, max_length=self.cfg.max_input_tokens)["input_ids"]
            out.append(OnlineRequest(prompt.index, list(ids)))
        return out

    # --- the manager -------------------------------------------------------------------
    def start(self) -> None:
        """Build the manager, size its cache and start its generation thread (idempotent)."""
        if self.manager is not None:
            return
        import torch
        from transformers import ContinuousBatchingConfig

        cb_config = ContinuousBatchingConfig(seed=self.cfg.random_seed, num_blocks=self.online.kv_cache_blocks)
        model = self.loaded.model
        self.manager = model.init_continuous_batching(
            generation_config=self.generation_config, continuous_batching_config=cb_config
        )
        self.manager.warmup()  # allocates the paged cache (and captures CUDA graphs where used)
        with torch.inference_mode():  # the generation thread runs in the caller's inference mode
            self.manager.start()
        cache = self.manager.batch_processor.cache if self.manager.batch_processor is not None else None
        self.resolved = {
            "continuous_batching_config": json_safe(vars(self.manager.continuous_batching_config)),
            "attn_implementation": model.config._attn_implementation,
            "kv_cache_blocks": getattr(cache, "num_blocks", None),
            "max_batch_tokens": getattr(cache, "max_batch_tokens", None),
        }

    def close(self, hard: bool = False) -> None:
        """Stop the generation thread (hard: fail what is still pending). Safe to call twice."""
        manager, self.manager = self.manager, None
        if manager is None:
            return
        try:
            manager.stop(block=True, timeout=STOP_TIMEOUT_S, hard_stop=hard)
        finally:
            manager.destroy()

    # --- sending requests ------------------------------------------------------------
    def warmup(self, requests: list[OnlineRequest], n: int) -> list[float | None]:
        """Send n requests at once and wait for all (the manager's first batches are slow); their TTFT in ms."""
        self.start()
        sent = {}
        for i in range(n):
            before = time.perf_counter()
            sent[self._add(f"warmup{self._warmups}-{i}", requests[i % len(requests)].input_ids)] = before
        self._warmups += 1
        ttft: dict[str, float | None] = {}
        deadline = time.perf_counter() + STALL_S
        while len(ttft) < len(sent):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"continuous batching: warmup requests unfinished after {STALL_S:.0f} s")
            result = self._next_result(POLL_S)
            if result is not None and result.is_finished() and result.request_id in sent:
                times = result.timestamps or []
                ttft[result.request_id] = (times[0] - sent[result.request_id]) * 1000.0 if times else None
        return [ttft[request_id] for request_id in sent]

    def run(
        self,
        requests: list[OnlineRequest],
        mark: Callable[[], Any] | None = None,
        advance: Callable[[], None] = lambda: None,
    ) -> OnlineTrace:
        """One trial on the schedule; `mark()` is read at each arrival (energy), `advance()` at each finish."""
        self.start()
        online = self.online
        schedule = arrival_offsets(online, self.seed) if online.request_rate is not None else None
        sent: dict[str, _Sent] = {}
        results: dict[str, Any] = {}
        self._trials += 1
        prefix = f"trial{self._trials}-request"
        start, monotonic_now, epoch_now = time.perf_counter(), time.monotonic(), time.time()  # the first arrival

        def send(scheduled: float | None) -> None:
            index = len(sent)
            request = requests[index % len(requests)]
            before = time.perf_counter()
            reading = mark() if mark is not None else None
            request_id = self._add(f"{prefix}-{index}", request.input_ids)
            sent[request_id] = _Sent(index, request, scheduled, before, time.perf_counter(), reading)

        def collect(timeout: float) -> None:
            result = self._next_result(timeout)
            if result is not None and result.is_finished():
                if result.error is not None:
                    raise RuntimeError(f"continuous batching failed request {result.request_id}: {result.error}")
                results[result.request_id] = result
                advance()

        stall = _StallWatch(lambda: len(results))
        if schedule is not None:  # open loop: send on the schedule, collect in between
            while len(results) < len(schedule):
                stall.check(len(sent) - len(results))
                now = time.perf_counter()
                if len(sent) < len(schedule) and now >= start + schedule[len(sent)]:
                    send(schedule[len(sent)])
                    continue
                due = start + schedule[len(sent)] - now if len(sent) < len(schedule) else POLL_S
                collect(max(0.0, min(due, POLL_S)))
        else:  # closed loop: keep max_concurrency outstanding; each finish sends the next
            def more() -> bool:
                if online.n_requests is not None:
                    return len(sent) < online.n_requests
                return time.perf_counter() - start < online.duration_s

            while more() and len(sent) - len(results) < online.max_concurrency:
                send(None)
            while len(results) < len(sent):
                stall.check(len(sent) - len(results))
                collect(POLL_S)
                while more() and len(sent) - len(results) < online.max_concurrency:
                    send(None)
        ordered = sorted(sent.items(), key=lambda item: item[1].index)
        return OnlineTrace(
            records=[self._record(s, results[rid], start) for rid, s in ordered],
            marks=[s.mark for _, s in ordered],
            start_monotonic_s=monotonic_now,
            start_epoch_ms=epoch_now * 1000.0,
            schedule_s=schedule,
        )

    @property
    def seed(self) -> int:
        return self.online.seed if self.online.seed is not None else self.cfg.random_seed

    def _add(self, request_id: str, input_ids: list[int]) -> str:
        added = self.manager.add_request(
            input_ids, request_id=request_id, max_new_tokens=self.cfg.max_output_tokens, record_timestamps=True
        )
        if added is None:
            raise RuntimeError(f"continuous batching refused request {request_id}: its manager is stopping or stopped")
        return added

    def _next_result(self, timeout: float) -> Any:
        result = self.manager.get_result(timeout=timeout)
        if result is None and not self.manager.is_running():
            error = self.manager.background_thread_status.fatal_error
            raise RuntimeError(f"continuous batching stopped: {error or 'its generation thread ended'}")
        return result

    def _record(self, sent: _Sent, output: Any, start: float) -> OnlineRequestRecord:
        tokens = list(output.generated_tokens)
        times = list(output.timestamps or [])
        reset = not (sent.before <= output.created_time <= sent.after)
        timed = len(times) == len(tokens) and bool(tokens)  # a reset loses the times before it
        arrival = sent.before
        last = times[-1] if times else output.lifespan[1]
        text = None
        if self.cfg.save_generated_text:
            text = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        return OnlineRequestRecord(
            request_index=sent.index,
            prompt_index=sent.request.prompt_index,
            input_tokens=len(sent.request.input_ids),
            output_tokens=len(tokens),
            scheduled_s=sent.scheduled_s,
            arrival_s=arrival - start,
            admitted_s=output.lifespan[0] - start,
            first_token_s=times[0] - start if timed else None,
            finished_s=output.lifespan[1] - start,
            queue_ms=None if reset else (output.lifespan[0] - arrival) * 1000.0,
            ttft_ms=(times[0] - arrival) * 1000.0 if timed else None,
            tpot_ms=(times[-1] - times[0]) * 1000.0 / (len(times) - 1) if timed and len(times) > 1 else None,
            e2e_ms=(last - arrival) * 1000.0,
            itl_ms=[(b - a) * 1000.0 for a, b in zip(times, times[1:])] if timed else [],
            reset=reset,
            token_s=[t - start for t in times],
            text=text,
        )


class _StallWatch:
    """Raises when requests are outstanding and none finished for STALL_S (every wait is bounded)."""

    def __init__(self, finished: Callable[[], int]) -> None:
        self._finished = finished
        self._count = finished()
        self._since = time.perf_counter()

    def check(self, outstanding: int) -> None:
        count = self._finished()
        if count != self._count or outstanding == 0:
            self._count, self._since = count, time.perf_counter()
        elif time.perf_counter() - self._since > STALL_S:
            raise RuntimeError(f"continuous batching: {outstanding} request(s) outstanding and none finished in {STALL_S:.0f} s")
