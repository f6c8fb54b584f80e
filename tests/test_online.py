"""scenario: online (issue 18): the arrival schedule, the steady window, the config rules, and one real
online measurement of random:tiny on the CPU behind a fake NVML GPU."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

import pytest
from fake_nvml import FakeGpu, FakeNvml
from fakegpu import FakeHardware
from helpers import ONLINE_BASE

from llem_mlflow.bench.arrivals import arrival_offsets
from llem_mlflow.bench.steady import (
    meets_slo,
    occupancy,
    steady_window,
    weighted_mean,
    weighted_median,
    window_load,
)
from llem_mlflow.config.models import ExperimentConfig, OnlineConfig, SloConfig
from llem_mlflow.config.params import config_from_params, config_to_params
from llem_mlflow.energy.readings import GpuSample
from llem_mlflow.energy.subwindow import counter_energy_j, power_energy_j

ONLINE = ONLINE_BASE


def online_config(**online) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**ONLINE, "online": {"kv_cache_blocks": 16, **online}})


# --- the arrival schedule -------------------------------------------------------------------------------
def test_schedule_is_seeded_and_starts_at_zero():
    cfg = OnlineConfig(request_rate=5.0, n_requests=50)
    first, again, other = arrival_offsets(cfg, 7), arrival_offsets(cfg, 7), arrival_offsets(cfg, 8)
    assert first == again and first != other
    assert len(first) == 50 and first[0] == 0.0
    assert all(b > a for a, b in zip(first, first[1:]))


def test_gaps_follow_the_arrival_process():
    constant = arrival_offsets(OnlineConfig(request_rate=4.0, n_requests=9, arrival="constant"), 0)
    assert constant == pytest.approx([i * 0.25 for i in range(9)])
    poisson = arrival_offsets(OnlineConfig(request_rate=10.0, n_requests=20_001), 1)
    gaps = [b - a for a, b in zip(poisson, poisson[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: CV 1
    bursty = arrival_offsets(OnlineConfig(request_rate=10.0, n_requests=20_001, arrival="gamma", burstiness=0.25), 1)
    gaps = [b - a for a, b in zip(bursty, bursty[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(2.0, rel=0.08)  # gamma: CV 1/sqrt(shape)


def test_duration_bounds_the_schedule():
    offsets = arrival_offsets(OnlineConfig(request_rate=20.0, duration_s=3.0), 3)
    assert offsets[-1] < 3.0 and 40 < len(offsets) < 80


# --- the steady window, on hand-made requests -------------------------------------------------------------
@dataclass
class Req:
    request_index: int
    arrival_s: float
    admitted_s: float
    finished_s: float
    token_s: list[float] = field(default_factory=list)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    reset: bool = False
    in_steady_window: bool = False


def ramp(n: int = 20, gap: float = 0.1, life: float = 0.35) -> list[Req]:
    """Arrivals every `gap` s, each admitted at once and in flight for `life` s: the in-flight count ramps
    up 1, 2, 3 over the first 0.3 s, then alternates 4 and 3 every 0.05 s, and drains after the last arrival."""
    out = []
    for i in range(n):
        t = i * gap
        out.append(Req(i, t, t, t + life, token_s=[t + 0.05 * k for k in range(1, 8)], ttft_ms=50.0, tpot_ms=50.0))
    return out


def test_occupancy_counts_waiting_and_in_flight():
    records = [Req(0, 0.0, 0.5, 1.0), Req(1, 0.2, 0.6, 0.8)]
    assert occupancy(records) == [(0.0, 0, 1), (0.2, 0, 2), (0.5, 1, 1), (0.6, 2, 0), (0.8, 1, 0), (1.0, 0, 0)]
    steps = occupancy(records)
    assert weighted_mean(steps, 0.0, 1.0, column=1) == pytest.approx((0.1 * 1 + 0.2 * 2 + 0.2 * 1) / 1.0)
    assert weighted_median(steps, 0.0, 1.0, column=2) == 1.0  # waiting: 1 for 0.2+0.1 s, 2 for 0.3 s, 0 for 0.4 s


def test_steady_window_excludes_ramp_up_and_drain():
    records = ramp()
    window = steady_window(records)
    assert not isinstance(window, str), window
    # between the first and last arrival: 1 and 2 in flight for 0.1 s each, 3 for 0.9 s, 4 for 0.8 s
    assert window.plateau == 3
    assert window.start_s == pytest.approx(0.2) and window.first == 2  # the arrival that makes 3 in flight
    assert window.end_s == pytest.approx(1.9) and window.last == 19  # the last arrival
    metrics, tags = window_load(records, window)
    assert tags == {}
    assert metrics["load/achieved_requests_per_s"] == pytest.approx(17 / 1.7)  # arrivals 2..18 in [0.2, 1.9)
    assert metrics["load/completed_requests_per_s"] == pytest.approx(16 / 1.7)  # finishes at 0.35..1.85
    assert metrics["load/mean_concurrency"] == pytest.approx((0.1 * 3 + 0.8 * 4 + 0.8 * 3) / 1.7)
    assert metrics["load/mean_waiting"] == 0.0
    tokens = sum(0.2 <= t < 1.9 for r in records for t in r.token_s)
    assert metrics["tokens/steady_output_total"] == tokens
    assert metrics["throughput/steady_output_tokens_per_s"] == pytest.approx(tokens / 1.7)
    assert [r.request_index for r in records if r.in_steady_window] == list(range(2, 19))


def test_too_few_arrivals_after_the_plateau_is_no_window():
    burst = [Req(i, i * 1e-3, 0.01, 1.0 + i) for i in range(3)]  # all three arrive before the first admission
    reason = steady_window(burst)
    assert isinstance(reason, str) and "plateau" in reason
    assert "at least 3" in steady_window(burst[:2])


def test_goodput_judges_each_bound_and_refuses_unknowns():
    slo = SloConfig(ttft_ms=100.0, tpot_ms=20.0)
    assert meets_slo(Req(0, 0, 0, 1, ttft_ms=90.0, tpot_ms=20.0), slo) is True
    assert meets_slo(Req(0, 0, 0, 1, ttft_ms=101.0, tpot_ms=5.0), slo) is False
    assert meets_slo(Req(0, 0, 0, 1, ttft_ms=10.0, tpot_ms=None), slo) is True  # one token: no TPOT to miss
    assert meets_slo(Req(0, 0, 0, 1, ttft_ms=None, tpot_ms=None, reset=True), slo) is None
    records = ramp()
    records[5].ttft_ms = 500.0
    metrics, _ = window_load(records, steady_window(records), SloConfig(ttft_ms=100.0))
    assert metrics["load/slo_attainment_pct"] == pytest.approx(100.0 * 16 / 17)
    assert metrics["load/goodput_requests_per_s"] == pytest.approx(16 / 1.7)
    records[6].reset, records[6].ttft_ms = True, None
    metrics, tags = window_load(records, steady_window(records), SloConfig(ttft_ms=100.0))
    assert "load/goodput_requests_per_s" not in metrics and "tokens/steady_output_total" not in metrics
    assert tags["llem.online.goodput"].startswith("unavailable") and tags["llem.online.steady_tokens"].startswith("unavailable")


# --- sub-window GPU energy --------------------------------------------------------------------------------
def test_sub_window_energy_from_counters_or_interpolated_power():
    assert counter_energy_j({0: 10.0, 1: 5.0}, {0: 25.0, 1: 9.0}) == {0: 15.0, 1: 4.0}
    assert counter_energy_j(None, {0: 1.0}) is None
    assert counter_energy_j({0: 10.0}, {0: 3.0}) is None  # went back (a driver reload): the samples stand in
    assert counter_energy_j({0: 10.0}, {0: 10.0}) is None  # did not advance in a short window
    # power rising linearly 100 W -> 200 W over 0..1 s, sampled every 0.25 s: the integral is exact
    samples = [GpuSample(0, t, 0, 100.0 + 100.0 * t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert power_energy_j(samples, 0, 0.1, 0.9) == pytest.approx(0.8 * 150.0)
    assert power_energy_j(samples, 0, -0.1, 0.9) is None  # the window is not covered by samples


# --- config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"pytorch": {"num_beams": 2}}, "pytorch.num_beams (beam search)"),
        ({"pytorch": {"prompt_lookup_num_tokens": 3}}, "prompt_lookup_num_tokens"),
        ({"pytorch": {"cache_implementation": "static"}}, "pytorch.cache_implementation"),
        ({"pytorch": {"batch_size": 4}}, "pytorch.batch_size"),
        ({"decoder": {"preset": "deterministic", "min_new_tokens": 8}}, "decoder.min_new_tokens"),
        ({"decoder": {"preset": "creative"}}, "decoder.repetition_penalty"),
        ({"measure": {"prefill_split": True}}, "measure.prefill_split"),
        ({"measure": {"min_duration_s": 5.0}}, "measure.min_duration_s"),
    ],
)
def test_online_refuses_what_continuous_batching_cannot_honour(changes, needle):
    with pytest.raises(ValueError, match="cannot honour") as error:
        ExperimentConfig.model_validate({**ONLINE, **changes, "online": {"request_rate": 2, "n_requests": 8}})
    assert needle in str(error.value) and "scenario: offline" in str(error.value)


@pytest.mark.parametrize(
    ("online", "needle"),
    [
        ({"n_requests": 8}, "exactly one of request_rate"),
        ({"request_rate": 2, "max_concurrency": 2, "n_requests": 8}, "exactly one of request_rate"),
        ({"request_rate": 2}, "exactly one of n_requests and duration_s"),
        ({"max_concurrency": 2, "n_requests": 8, "arrival": "poisson"}, "remove them"),
        ({"request_rate": 2, "n_requests": 8, "arrival": "gamma"}, "burstiness is required"),
        ({"request_rate": 2, "n_requests": 8, "burstiness": 2.0}, "burstiness is required"),
        ({"request_rate": 2000, "duration_s": 1000}, "at most 1000000"),
        ({"request_rate": 2, "n_requests": 8, "slo": {}}, "slo needs ttft_ms"),
    ],
)
def test_online_section_rules(online, needle):
    with pytest.raises(ValueError, match=needle):
        ExperimentConfig.model_validate({**ONLINE, "online": online})


def test_scenario_and_section_go_together():
    with pytest.raises(ValueError, match="needs an online: section"):
        ExperimentConfig.model_validate({**ONLINE})
    with pytest.raises(ValueError, match="only applies to scenario: online"):
        ExperimentConfig.model_validate({**ONLINE, "scenario": "offline", "online": {"request_rate": 1, "n_requests": 4}})


def test_online_config_round_trips_through_params_and_the_cli(tmp_path):
    from helpers import llem

    cfg = online_config(request_rate=3.0, n_requests=16, arrival="gamma", burstiness=0.5, slo={"ttft_ms": 200.0})
    params = config_to_params(cfg)
    assert params["scenario"] == "online" and params["online.slo.ttft_ms"] == "200.0" and params["online.seed"] == "None"
    assert config_from_params(params) == cfg
    assert config_to_params(ExperimentConfig(model="m"))["online"] == "None"
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**ONLINE, "pytorch": {"num_beams": 2}, "online": {"request_rate": 2, "n_requests": 8}}))
    result = llem("validate", str(bad))
    assert result.returncode == 2 and "cannot honour pytorch.num_beams" in result.stderr and "Traceback" not in result.stderr


def test_a_study_can_sweep_the_request_rate():
    from llem_mlflow.sweep.study import parse_study_text

    study = parse_study_text(
        json.dumps(
            {"name": "rates", "base": {**ONLINE, "online": {"request_rate": 1, "n_requests": 8}}, "sweep": {"online.request_rate": [2, 8]}}
        )
    )
    assert [p.config.online.request_rate for p in study.points] == [2.0, 8.0]


# --- one real online measurement (random:tiny on the CPU, its weights "on" an ideal fake 150 W GPU) -----------
POWER_W = 150.0


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    from llem_mlflow.runner import Measurement

    cfg = online_config(request_rate=4.0, n_requests=16, slo={"ttft_ms": 10_000.0})
    machine = FakeHardware(FakeNvml([FakeGpu(power_w=POWER_W)]), model_on=[0])
    measurement = Measurement(cfg, quiet=True, hardware=machine)
    report = measurement.run()
    yield cfg, report
    measurement.cleanup()


def test_every_request_finishes_on_its_schedule(measured):
    cfg, report = measured
    records = report.records
    assert len(records) == 16 and report.status == "complete"
    assert [r.request_index for r in records] == list(range(16))
    schedule = arrival_offsets(cfg.online, cfg.random_seed)
    assert [r.scheduled_s for r in records] == schedule
    lags = [r.arrival_s - r.scheduled_s for r in records]
    assert min(lags) >= 0 and max(lags) < 0.25  # a loaded 2-core machine: generous
    assert report.metrics["load/arrival_lag_ms_max"] == pytest.approx(max(lags) * 1000)
    assert json.loads(report.texts["online/schedule.json"])["scheduled_s"] == schedule


def test_each_request_times_are_in_order_and_ttft_includes_the_queue(measured):
    _, report = measured
    for r in report.records:
        assert not r.reset
        assert r.arrival_s <= r.admitted_s <= r.first_token_s <= r.finished_s
        assert r.ttft_ms >= r.queue_ms >= 0
        assert r.e2e_ms >= r.ttft_ms
        assert len(r.itl_ms) == r.output_tokens - 1
    m = report.metrics
    assert m["latency/ttft_ms_p50"] >= m["latency/queue_ms_p50"]
    assert m["latency/tpot_ms_p50"] > 0 and "latency/batch_ms_p50" not in m  # no batches online
    assert m["load/requests_reset"] == 0
    # the cold start (the manager's start and its first request) is a phase of its own
    assert m["time/first_generate_s"] > 0 and m["latency/first_ttft_ms"] > 0
    assert report.resolved["continuous_batching"]["kv_cache_blocks"] == 16


def test_token_totals_are_exact(measured):
    cfg, report = measured
    records = report.records
    assert all(1 <= r.output_tokens <= cfg.max_output_tokens for r in records)
    assert report.metrics["tokens/output_total"] == sum(r.output_tokens for r in records) == sum(len(r.token_s) for r in records)
    start, end = report.metrics["load/steady_start_s"], report.metrics["load/steady_end_s"]
    assert report.metrics["tokens/steady_output_total"] == sum(start <= t < end for r in records for t in r.token_s)


def test_steady_window_lies_inside_the_run_and_is_logged(measured):
    _, report = measured
    m, records = report.metrics, report.records
    start, end = m["load/steady_start_s"], m["load/steady_end_s"]
    assert 0 < start < end == records[-1].arrival_s <= max(r.finished_s for r in records)
    assert start in [r.arrival_s for r in records]
    assert m["load/steady_duration_s"] == pytest.approx(end - start)
    inside = [r for r in records if r.in_steady_window]
    assert m["load/steady_requests"] == len(inside) >= 2
    assert m["load/achieved_requests_per_s"] == pytest.approx(len(inside) / (end - start))
    assert m["load/mean_concurrency"] > 0 and m["load/slo_attainment_pct"] == 100.0
    assert m["load/steady_plateau_in_flight"] >= 1 and m["load/completed_requests_per_s"] > 0
    assert m["throughput/steady_output_tokens_per_s"] == pytest.approx(m["tokens/steady_output_total"] / (end - start))
    assert f"{start:.3f} s to {end:.3f} s" in report.tags["llem.online.steady_window"]


def test_fake_gpu_energy_over_the_steady_window(measured):
    _, report = measured
    m = report.metrics
    # the fake counter integrates 150 W over real time; the window's edges are counter readings at arrivals
    assert m["energy/steady_j"] == pytest.approx(POWER_W * m["load/steady_duration_s"], rel=0.01)
    assert m["power/steady_gpu_mean_w"] == pytest.approx(POWER_W, rel=0.01)
    assert m["energy/steady_j_per_output_token"] == pytest.approx(m["energy/steady_j"] / m["tokens/steady_output_total"])
    completed = round(m["load/completed_requests_per_s"] * m["load/steady_duration_s"])
    assert m["energy/j_per_request"] == pytest.approx(m["energy/steady_j"] / completed)
    assert m["energy/gpu_j"] > m["energy/steady_j"]  # the whole measure phase holds ramp-up and drain too
    assert report.tags["llem.online.steady_energy"].startswith("gpu (nvml_counter) only")


def test_occupancy_timeline_is_a_history_beside_power(measured):
    _, report = measured
    in_flight = report.histories["timeline/requests_in_flight"]
    waiting = report.histories["timeline/requests_waiting"]
    assert len(in_flight) == len(waiting) == 3 * 16
    assert all(v >= 0 for _, v in in_flight + waiting) and in_flight[-1][1] == waiting[-1][1] == 0
    stamps = [t for t, _ in in_flight]
    assert stamps == sorted(stamps)
    power = [s.timestamp_ms for s in report.energy.samples]
    assert min(power) <= stamps[0] and stamps[-1] <= max(power)  # on the same wall clock as the power timeline


def test_requests_reset_for_want_of_kv_cache_are_counted_and_their_lost_times_absent():
    """4 blocks of 256 tokens for 4 requests of 250 prompt tokens: each needs a second block while it
    decodes, so the manager drops some caches and prefills them again (a soft reset)."""
    from llem_mlflow.runner import measure

    cfg = ExperimentConfig.model_validate(
        {
            **ONLINE,
            "max_input_tokens": 250,
            "max_output_tokens": 24,
            "dataset": {"source": "synthetic", "synthetic_input_tokens": 250, "n": 4},
            "warmup": {"enabled": False},
            "online": {"max_concurrency": 4, "n_requests": 6, "kv_cache_blocks": 4},
        }
    )
    report = measure(cfg, quiet=True)
    reset = [r for r in report.records if r.reset]
    assert reset and report.metrics["load/requests_reset"] == len(reset)
    for r in reset:
        assert r.queue_ms is None and r.output_tokens == 24  # the count stays exact
        assert len(r.token_s) < r.output_tokens and r.ttft_ms is None and r.itl_ms == []
    assert report.metrics["tokens/output_total"] == 6 * 24
    assert "prefilled them again" in report.tags["llem.online.resets"]
    assert all(r.queue_ms is not None for r in report.records if not r.reset)


def test_the_shipped_online_examples_load():
    from pathlib import Path

    from llem_mlflow.config.loader import load_config
    from llem_mlflow.sweep.study import load_study

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert load_config(examples / "online.yaml").online.kv_cache_blocks is not None
    study = load_study(examples / "online-rates.yaml")
    assert [p.config.online.request_rate for p in study.points] == [2.0, 8.0, 32.0, 128.0]
