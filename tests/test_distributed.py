"""Data parallel (`pytorch.num_processes > 1`): N processes, one experiment, one MLflow run.

On the CPU (gloo on 127.0.0.1): the run's figures cover every rank's requests and the ranks
split the batches; a worker that fails or dies ends the run FAILED with its error, Ctrl-C ends
it KILLED, and no process is left behind. A `gpu` test runs 2 processes on 2 GPUs where they exist.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from fake_nvml import FakeNvml, two_gpus
from helpers import (
    LONG_RUN_PROMPTS,
    all_runs,
    artifact_json,
    artifact_text,
    assert_failed_with,
    fail_in_worker,
    mlflow_run,
    only_run,
    write_config,
)
from pydantic import ValidationError

from llem_mlflow.config.backend_configs import PyTorchConfig
from llem_mlflow.config.loader import load_config
from llem_mlflow.config.models import ExperimentConfig
from llem_mlflow.config.params import config_from_params, config_to_params
from llem_mlflow.distributed import LeadMeasurement, Team, gpu_shortage, merge_records, share, worker_config
from llem_mlflow.errors import ConfigError
from llem_mlflow.launch import EXIT_FAULT, EXIT_INTERRUPTED, EXIT_OK, launch
from llem_mlflow.runner import Measurement, measure, measurement_for

PARALLEL = {"pytorch": {"batch_size": 1, "num_processes": 2}}


# --- the config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device_map", [None, "cuda", "cpu"])
def test_each_process_on_its_own_device_is_accepted(device_map):
    assert PyTorchConfig(num_processes=2, device_map=device_map).num_processes == 2


def test_the_online_scenario_runs_in_one_process():
    with pytest.raises(ValidationError, match=r"pytorch.num_processes \(one manager serves the arrival schedule, in one process\)"):
        ExperimentConfig(model="random:tiny", scenario="online", online={"request_rate": 2, "n_requests": 8},
                         pytorch={"num_processes": 2})  # fmt: skip


def test_every_process_needs_a_batch():
    with pytest.raises(ValidationError, match=r"num_processes \(3\) exceeds the number of batches \(2 = dataset.n 3 / batch_size 2\)"):
        ExperimentConfig(model="random:tiny", dataset={"n": 3}, pytorch={"batch_size": 2, "num_processes": 3})


def test_more_processes_than_visible_gpus_is_refused():
    message = gpu_shortage(4, 2, "0,1")
    assert "num_processes is 4, but 2 GPU(s) are visible (CUDA_VISIBLE_DEVICES='0,1')" in message
    assert "device_map: cpu" in message
    assert gpu_shortage(2, 2, None) is None


def test_the_examples_run_data_parallel():
    examples = Path(__file__).resolve().parents[1] / "examples"
    assert load_config(examples / "data-parallel.yaml").pytorch.num_processes == 2
    assert load_config(examples / "quickstart.yaml", ("pytorch.num_processes=2",)).pytorch.num_processes == 2  # its CPU trial


def test_num_processes_round_trips_through_params():
    cfg = ExperimentConfig(model="random:tiny", pytorch={"num_processes": 4})
    assert config_from_params(config_to_params(cfg)) == cfg


def test_a_data_parallel_config_needs_the_lead():
    cfg = ExperimentConfig(model="random:tiny", pytorch={"num_processes": 2})
    with pytest.raises(ConfigError, match="several processes"):
        Measurement(cfg)  # one process would silently measure half the experiment's setting
    lead = measurement_for(cfg)
    assert isinstance(lead, LeadMeasurement)
    lead.cleanup()


def test_workers_measure_nothing_and_see_only_their_own_gpu(monkeypatch):
    cfg = ExperimentConfig(model="random:tiny", pytorch={"num_processes": 2}, energy={"gpu": "nvml"}, cooldown={"enabled": True})
    worker = worker_config(cfg)
    assert (worker.energy.gpu, worker.energy.codecarbon, worker.energy.rapl) == ("off", False, False)
    assert (worker.baseline.enabled, worker.cooldown.enabled) == (False, False)
    assert worker.pytorch == cfg.pytorch  # the model is placed as in one process: on the one GPU it sees
    lead = LeadMeasurement(cfg)
    try:
        message, env = lead._setup(1, ["GPU-aaaa", "GPU-bbbb"], threads=3)
        assert env == {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"} and message["device"] == "cuda:1" and message["threads"] == 3
        assert lead._setup(1, None, threads=None)[1] == {}  # on the CPU: the environment as it is
    finally:
        lead.cleanup()


# --- the parts -----------------------------------------------------------------------------------------
def test_ranks_share_the_batches_round_robin():
    shares = [share(list(range(7)), rank, 3) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def test_a_failed_run_says_whose_requests_it_kept():
    from llem_mlflow.bench.generation import RequestRecord
    from llem_mlflow.distributed import kept_ranks

    records = merge_records({0: [RequestRecord(0, 0, 0, 4, 8, 1.0, [], 2.0)]})
    assert kept_ranks(records, 3) == "requests kept from rank(s) 0; none from rank(s) 1, 2 (it ended before finishing one, or without sending them)"
    assert kept_ranks([], 2) == "no finished request kept"


def test_memory_per_process_is_summed_over_the_ranks():
    from llem_mlflow.distributed import sum_memory

    lead = {"memory/load_peak_rss_mb": 100.0, "memory/baseline_peak_rss_mb": 90.0, "memory/load_gpu_peak_used_mb": 5000.0,
            "tokens/output_total": 64.0}  # fmt: skip
    sum_memory(lead, [{"memory/load_peak_rss_mb": 80.0}, {"memory/load_peak_rss_mb": 70.0}])
    assert lead == {"memory/load_peak_rss_mb": 250.0, "memory/load_gpu_peak_used_mb": 5000.0, "tokens/output_total": 64.0}


def test_merged_requests_carry_their_rank_in_measured_order():
    from llem_mlflow.bench.generation import RequestRecord

    def record(i: int) -> RequestRecord:
        return RequestRecord(i, i, i, 4, 8, 1.0, [], 2.0)

    merged = merge_records({0: [record(0), record(2)], 1: [record(1), record(3)]})
    assert [(r.request_index, r.rank) for r in merged] == [(0, 0), (1, 1), (2, 0), (3, 1)]


def test_rank_0_measures_every_rank_gpu_but_syncs_only_its_own():
    from llem_mlflow.distributed import LeadHardware

    class Machine:  # the GPU side of the machine: what a test may fake
        def __init__(self, model_on: list[int]):
            self.model_on, self.synced = model_on, []

        def model_devices(self, loaded):
            return self.model_on

        def synchronize(self, devices):
            self.synced.append(list(devices))

    machine = Machine([0])
    lead = LeadHardware(machine, 3)
    lead.synchronize([])  # before the load: nothing to sync
    assert lead.model_devices(None) == [0, 1, 2]  # rank i's model is on cuda:i
    lead.synchronize([0, 1, 2])
    assert machine.synced == [[], [0]]
    assert LeadHardware(Machine([]), 3).model_devices(None) == []  # on the CPU: no GPU at all


def test_the_group_listens_on_loopback_only():
    me = psutil.Process()
    before = {c.laddr for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    team = Team.lead(1)
    try:
        team.join()
        team.barrier()
        listening = {c.laddr for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN} - before
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening
        assert team.port in {a.port for a in listening}
    finally:
        team.leave()


# --- whole runs (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_through_mlflow_run(mlflow_store, project_copy, tmp_path, monkeypatch):
    tag = _tag_processes(monkeypatch)
    cfg_path = write_config(tmp_path / "dp.yaml", dataset={"n": 8}, energy={"codecarbon": True}, **PARALLEL)
    result = mlflow_run(project_copy, "-P", f"config={cfg_path}", "--experiment-name", "dp")
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run("dp")
    assert run.info.status == "FINISHED"
    assert run.data.params["pytorch.num_processes"] == "2"
    m, tags = run.data.metrics, run.data.tags

    # The same prompts in one process: the same requests, token for token.
    single = measure(load_config(cfg_path, ("pytorch.num_processes=1", "energy.codecarbon=false")))
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    assert [(int(r["request_index"]), int(r["prompt_index"]), int(r["input_tokens"]), int(r["output_tokens"])) for r in rows] == [
        (r.request_index, r.prompt_index, r.input_tokens, r.output_tokens) for r in single.records
    ]  # every prompt once, in the measured order
    assert m["tokens/output_total"] == single.metrics["tokens/output_total"] == 8 * 8
    assert m["tokens/input_total"] == single.metrics["tokens/input_total"]

    # The ranks split the batches: rank r ran batches r, r + 2, ...
    assert {r["rank"] for r in rows} == {"0", "1"}
    assert all(int(r["batch_index"]) % 2 == int(r["rank"]) for r in rows)
    ranks = artifact_json(run.info.run_id, "config/resolved.json")["data_parallel"]["ranks"]
    assert [(r["rank"], r["batches"], r["requests"]) for r in ranks] == [(0, [0, 2, 4, 6], 4), (1, [1, 3, 5, 7], 4)]
    assert ranks[0]["pid"] != ranks[1]["pid"]

    # One run's figures over every request, in the common window; the host measured once.
    assert m["throughput/output_tokens_per_s"] == pytest.approx(m["tokens/output_total"] / m["time/measure_s"], rel=1e-6)
    assert m["energy/j_per_output_token"] == pytest.approx(m["energy/total_j"] / m["tokens/output_total"], rel=1e-6)
    assert tags["llem.device.count"] == "1"  # two processes on one CPU: one device
    assert artifact_json(run.info.run_id, "results.json")["requests_completed"] == 8
    assert _left(tag) == []


@pytest.mark.slow
def test_a_worker_that_fails_fails_the_run_and_leaves_no_process(mlflow_store, tmp_path, monkeypatch, capsys):
    tag = _tag_processes(monkeypatch)
    # Rank 1 runs batches 1, 3, 5, 7; after its first generate(), one warmup and two measured batches it raises.
    fail_in_worker(monkeypatch, tmp_path / "inject", rank=1, call_number=2 + 3, message="injected fault in rank 1")
    cfg = write_config(tmp_path / "dp.yaml", dataset={"n": 8}, **PARALLEL)
    code = launch(str(cfg), quiet=True)
    err = capsys.readouterr().err
    assert code == EXIT_FAULT, err[-3000:]
    assert "worker rank 1 failed: RuntimeError: injected fault in rank 1" in err
    run = only_run()
    assert_failed_with(run, "worker rank 1 failed: RuntimeError: injected fault in rank 1")
    assert "Traceback" in artifact_text(run.info.run_id, "error.txt")  # the worker's own traceback

    # What finished is kept: rank 1's two measured batches, and whatever rank 0 finished meanwhile.
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    by_rank = {rank: [r for r in rows if r["rank"] == rank] for rank in ("0", "1")}
    assert [r["batch_index"] for r in by_rank["1"]] == ["1", "3"]
    assert len(by_rank["0"]) <= 4 and all(int(r["batch_index"]) % 2 == 0 for r in by_rank["0"])
    assert run.data.metrics["tokens/output_total"] == 8 * len(rows)
    kept = run.data.tags["llem.partial.ranks"].split(";")[0].removeprefix("requests kept from rank(s) ").split(", ")
    assert "1" in kept and set(kept) <= {"0", "1"}
    assert artifact_json(run.info.run_id, "results.json")["status"] == "partial"
    assert _left(tag) == []


@pytest.mark.slow
def test_gpu_energy_is_summed_over_every_rank_gpu(mlflow_store, tmp_path, monkeypatch):
    """Two fake GPUs (the hardware is the only fake): rank 0 measures both, its model on the first."""
    from fakegpu import FakeHardware

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hardware = FakeHardware(FakeNvml(two_gpus()), model_on=[0])  # 100 W and 200 W
    cfg = write_config(tmp_path / "dp.yaml", dataset={"n": 4}, measure={"prefill_split": True, "min_duration_s": 1.5}, **PARALLEL)
    assert launch(str(cfg), quiet=True, hardware=hardware) == EXIT_OK
    run = only_run()
    m, tags = run.data.metrics, run.data.tags
    assert m["energy/gpu_j"] == pytest.approx(m["energy/gpu0_j"] + m["energy/gpu1_j"], rel=1e-9)
    assert m["energy/gpu1_j"] / m["energy/gpu0_j"] == pytest.approx(2.0, rel=0.1)  # the same window on both
    # min_duration_s repeats the prompt set: every rank stops after the same pass, indices stay unique.
    passes = int(m["measure/passes"])
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    assert [sum(r["rank"] == rank for r in rows) for rank in ("0", "1")] == [2 * passes, 2 * passes]
    assert sorted(int(r["request_index"]) for r in rows) == list(range(4 * passes))
    assert m["tokens/output_total"] == 4 * 8 * passes
    assert m["energy/j_per_output_token"] == pytest.approx(m["energy/total_j"] / m["tokens/output_total"], rel=1e-6)
    # The prefill-only pass too: every rank's requests, rank 0's meters over both GPUs.
    assert m["tokens/decode_total"] == 4 * 7 * passes and m["energy/prefill_j"] > 0
    assert "latency/prefill_ms_p50" in m
    assert tags["llem.gpu.indices"] == "0,1"
    assert "llem.warning.gpu_mismatch" not in tags and "llem.warning.other_processes" not in tags
    assert all(devices in ([], [0]) for devices in hardware.synchronized)  # rank 0 syncs its own GPU only


def _interrupted_long_run(tmp_path, monkeypatch, interrupt, timeout_s: float) -> tuple[str, subprocess.Popen, str]:
    """A long data-parallel run, `interrupt(lead)` once it measures; (process tag, lead, its stderr)
    once the lead and the reporter, the last to write to its pipes, have ended."""
    tag = _tag_processes(monkeypatch)
    lead = _start_long_run(tmp_path)
    try:
        _wait_for_measuring(lead)
        interrupt(lead)
        _, err = lead.communicate(timeout=timeout_s)
    finally:
        _kill_tree(lead)
    return tag, lead, err


def _kill_the_worker(lead: subprocess.Popen) -> None:
    (worker,) = [p for p in _tree(lead.pid) if "llem_mlflow.distributed" in p.cmdline()]
    worker.send_signal(signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_fails_the_run(mlflow_store, tmp_path, monkeypatch):
    tag, lead, err = _interrupted_long_run(tmp_path, monkeypatch, _kill_the_worker, timeout_s=240)
    assert lead.returncode == EXIT_FAULT, err[-3000:]
    assert "worker rank 1 died: killed by SIGKILL" in err
    run = only_run()
    assert_failed_with(run, "worker rank 1 died: killed by SIGKILL")
    assert "none from rank(s) 1" in run.data.tags["llem.partial.ranks"]
    assert _left(tag) == []


@pytest.mark.slow
def test_ctrl_c_marks_the_run_killed_and_stops_every_process(mlflow_store, tmp_path, monkeypatch):
    # what a terminal's Ctrl-C does: SIGINT to the whole process group
    tag, lead, err = _interrupted_long_run(tmp_path, monkeypatch, lambda lead: os.killpg(lead.pid, signal.SIGINT), timeout_s=240)
    assert lead.returncode == EXIT_INTERRUPTED, err[-3000:]
    run = only_run()
    assert_failed_with(run, "interrupted", status="KILLED")
    assert "requests kept from rank(s) 0, 1" in run.data.tags["llem.partial.ranks"]
    rows = list(csv.DictReader(io.StringIO(artifact_text(run.info.run_id, "requests.csv"))))
    assert {r["rank"] for r in rows} == {"0", "1"}
    assert _left(tag) == []


@pytest.mark.slow
def test_workers_die_with_the_lead(mlflow_store, tmp_path, monkeypatch):
    tag, lead, err = _interrupted_long_run(tmp_path, monkeypatch, lambda lead: lead.send_signal(signal.SIGKILL), timeout_s=120)
    deadline = time.monotonic() + 60
    while _left(tag) and time.monotonic() < deadline:  # the reporter ends the run, then exits
        time.sleep(0.5)
    assert _left(tag) == []
    run = only_run()
    assert run.info.status == "FAILED", err[-3000:]
    assert "measuring process died" in run.data.tags["llem.error"]


@pytest.mark.gpu
def test_two_processes_on_two_gpus(mlflow_store, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 visible GPUs")
    cfg = write_config(tmp_path / "dp.yaml", dataset={"n": 16}, pytorch={"batch_size": 2, "num_processes": 2},
                       energy={"gpu": "nvml"})  # fmt: skip
    assert launch(str(cfg), quiet=True) == EXIT_OK
    run = only_run()
    m, tags = run.data.metrics, run.data.tags
    assert tags["llem.device.type"] == "cuda" and tags["llem.device.count"] == "2"
    assert tags["llem.gpu.indices"] == "0,1"
    assert m["energy/gpu0_j"] > 0 and m["energy/gpu1_j"] > 0
    assert m["energy/gpu_j"] == pytest.approx(m["energy/gpu0_j"] + m["energy/gpu1_j"], rel=1e-9)
    assert m["tokens/output_total"] == 16 * 8
    ranks = artifact_json(run.info.run_id, "config/resolved.json")["data_parallel"]["ranks"]
    assert [r["device"] for r in ranks] == ["cuda:0", "cuda:1"]
    assert "llem.warning.other_processes" not in tags


# --- helpers ----------------------------------------------------------------------------------------
def _tag_processes(monkeypatch: pytest.MonkeyPatch) -> str:
    """Mark every process this test starts (they inherit the environment), to find any left behind."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv("LLEM_TEST_TAG", tag)
    return tag


def _left(tag: str) -> list[str]:
    """The processes carrying this test's mark that still run (zombies are gone for our purpose)."""
    left = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("LLEM_TEST_TAG") == tag:
                left.append(f"{p.pid}: {' '.join(p.info['cmdline'] or [])}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return left


def _start_long_run(tmp_path) -> subprocess.Popen:
    """`llem-mlflow run` in its own session (like a terminal's foreground job), long enough to be interrupted."""
    cfg = write_config(tmp_path / "dp.yaml", dataset={"n": LONG_RUN_PROMPTS}, **PARALLEL)
    return subprocess.Popen(
        [sys.executable, "-m", "llem_mlflow", "run", str(cfg), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(), start_new_session=True,
    )  # fmt: skip


def _wait_for_measuring(process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until the model is loaded on the lead (its device tag is logged), then a little into measure."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted ({process.returncode}):\n{process.communicate()[1][-3000:]}")
        runs = all_runs()
        if runs and "llem.device.type" in runs[0].data.tags:
            time.sleep(3)  # warmup (one batch each) and the start of measure
            return
        time.sleep(0.5)
    pytest.fail("the run did not reach the measure phase in time")


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _kill_tree(process: subprocess.Popen) -> None:
    """Test cleanup only: whatever is still running of this run's session."""
    if process.poll() is None:
        for child in _tree(process.pid):
            child.kill()
        process.kill()
        process.communicate()
