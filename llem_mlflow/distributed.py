"""Data parallel: `pytorch.num_processes: N` measures one experiment with N processes, one per device.

    llem-mlflow run                                  rank 0, the lead: energy meters, MLflow reporter
      └─ python -m llem_mlflow.distributed RANK ...  ranks 1..N-1, the workers

Every rank runs the real core (a Measurement) on its own device, GPU i or the CPU, over its
share of the batches (round robin: rank r takes batches r, r+N, ...). A torch.distributed gloo
group on 127.0.0.1 holds them together with a barrier at every phase edge, so that every
rank's phase is the same window. After each measured trial the workers send their requests to
rank 0 over a private pipe. Only rank 0 measures energy (NVML over every rank's GPU,
CodeCarbon once for the host) and only rank 0 talks to MLflow, so rank 0's Report is the
run's: the core computes its figures over the requests of every rank.

The group is private, not torch's default process group: transformers changes what it does
when torch.distributed is initialised (save_pretrained writes only on rank 0, for one), and the
measured code must run exactly as it does in one process.

Faults: each worker says on its pipe when it is ready, done, or failed (with its error and the
requests it finished); a worker that dies without a word closes the pipe. The lead's watcher
thread then interrupts the lead's main thread (SIGUSR1 raises WorkerFailed there); the lead
stops the other workers (SIGTERM, then SIGKILL), keeps what finished and ends the run FAILED
with the worker's error. Workers die with the lead (llem_mlflow/lifeline.py) and ignore
Ctrl-C: the lead decides how the run ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow.errors import ConfigError, LlemError
from llem_mlflow.runner import Measurement

if TYPE_CHECKING:
    from llem_mlflow.bench.generation import Batch, Generator, RequestRecord
    from llem_mlflow.bench.loading import LoadedModel
    from llem_mlflow.config.models import ExperimentConfig
    from llem_mlflow.report import Report

HOST = "127.0.0.1"  # every rank is on this machine: nothing listens beyond the loopback interface
BACKEND = "gloo"  # edges and gathers only, no tensors on the GPUs: gloo needs no NCCL communicators there
# A rank that hangs (not one that dies: that is seen at once) stops the others after this long;
# it must exceed the longest wait at an edge (a cool-down, a slow load).
TIMEOUT = timedelta(hours=4)
BARRIER_POLL_S = 0.001  # how often a waiting rank looks at its barrier (a signal gets through between looks)
STOP_GRACE_S = 20.0  # workers told to stop may take this long to send what they finished, then SIGKILL
ANSWER_S = 600.0  # the longest a worker may take to start, or to send its requests after a shared edge
# NVML's used memory per phase: rank 0 reads it over every rank's GPU already. Every other memory/*
# figure is one process's (RSS, torch's allocator, the model): the experiment's is their sum.
DEVICE_MEMORY_SUFFIX = "_gpu_peak_used_mb"
EXIT_FAULT, EXIT_STOPPED = 1, 130


class WorkerFailed(LlemError):
    """A worker failed or died; the message is its own error. Exit code: the worker's (1 a fault, 2 bad input)."""

    def __init__(self, rank: int, message: str, detail: str | None = None, exit_code: int = EXIT_FAULT, collateral: bool = False):
        super().__init__(f"worker rank {rank} {message}")
        self.rank = rank
        self.detail = detail  # the worker's traceback, for error.txt
        self.exit_code = exit_code
        self.collateral = collateral  # it failed only because another process left


class TeamBroken(RuntimeError):
    """A barrier or an agreement failed: another rank left (died, or was stopped)."""


# --- the process group ---------------------------------------------------------------------------
class Team:
    """This rank's place among the N: a barrier at each phase edge, over a private gloo group."""

    def __init__(self, rank: int, size: int, port: int, listen_fd: int | None = None, check: Any = None):
        self.rank, self.size, self.port = rank, size, port
        self._listen_fd = listen_fd  # rank 0: the store's socket, bound to 127.0.0.1 only
        self._check = check or (lambda: None)  # raises to abandon a wait (the lead: a worker failed)
        self._store: Any = None
        self._group: Any = None

    @classmethod
    def lead(cls, size: int, check: Any = None) -> Team:
        """Rank 0, with the store's listening socket open now, so the workers can be told its port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))  # a free port, chosen by the system
        listener.listen(128)  # the workers may connect before the store serves: the system queues them
        port = listener.getsockname()[1]
        return cls(0, size, port, listen_fd=listener.detach(), check=check)

    def join(self) -> None:
        import torch.distributed as dist

        fd, self._listen_fd = self._listen_fd, None  # the store owns it from here
        self._store = dist.TCPStore(
            HOST, self.port, self.size, is_master=self.rank == 0, timeout=TIMEOUT, wait_for_workers=False, master_listen_fd=fd
        )
        options = dist.ProcessGroupGloo._Options()
        options._timeout = TIMEOUT
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=HOST)]  # gloo listens on 127.0.0.1 only
        self._group = dist.ProcessGroupGloo(dist.PrefixStore("llem", self._store), self.rank, self.size, options)

    def barrier(self) -> None:
        self._wait(self._group.barrier(), "a barrier")

    def all(self, value: bool) -> bool:
        """True when every rank's value is true (and every rank gets the same answer)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(value)], dtype=torch.int32)
        self._wait(self._group.allreduce([flag], dist.ReduceOp.MIN), "agreeing with the other processes")
        return bool(flag.item())

    def _wait(self, work: Any, what: str) -> None:
        try:
            while not work.is_completed():  # polled, not waited on: Ctrl-C or a worker's failure gets through
                self._check()
                time.sleep(BARRIER_POLL_S)
            work.wait()
        except RuntimeError as exc:
            raise TeamBroken(f"{what} failed (one of the other processes left): {exc}") from exc

    def leave(self) -> None:
        if self._listen_fd is not None:
            os.close(self._listen_fd)
            self._listen_fd = None
        self._group = self._store = None


# --- the core in one rank --------------------------------------------------------------------------
class RankMeasurement(Measurement):
    """The core, as one rank: the same phases, with edges shared by every rank."""

    data_parallel = True
    device_label: str | None = None  # a worker's GPU as rank 0 numbers them (the worker sees only that one)

    def __init__(self, cfg: ExperimentConfig, *, team: Team, **options: Any):
        super().__init__(cfg, **options)
        self.team = team
        self.batches: list[Batch] = []

    def gather(self, kind: str, value: Any) -> dict[int, Any] | None:
        """Every rank's value by rank, on rank 0; None on the others (they send theirs)."""
        raise NotImplementedError

    def edge(self, phase: str, when: str) -> None:
        self.team.barrier()

    def agree(self, done: bool) -> bool:
        return self.team.all(done)

    def prepare(self, loaded: LoadedModel) -> tuple[Generator, list[Batch]]:
        generator, batches = super().prepare(loaded)
        self.batches = share(batches, self.team.rank, self.team.size)
        return generator, self.batches

    def collect(self, records: list[RequestRecord]) -> list[RequestRecord]:
        gathered = self.gather("records", records)
        return records if gathered is None else merge_records(gathered)

    def summarise(self, loaded: LoadedModel) -> None:
        super().summarise(loaded)
        facts = self.gather("facts", rank_facts(self, loaded))
        if facts is not None:
            self.combine([facts[rank] for rank in sorted(facts)])

    def combine(self, facts: list[dict[str, Any]]) -> None:
        """Rank 0: the figures that each rank measured of its own process, made the experiment's."""
        workers = facts[1:]
        sum_memory(self.report.metrics, [f["memory"] for f in workers])
        for trial, metrics in enumerate(self.report.trial_metrics):
            sum_memory(metrics, [f["trial_memory"][trial] for f in workers])
        self.add_tags(
            {
                "llem.device.name": ", ".join(sorted({f["device_name"] for f in facts})),
                "llem.device.count": str(len({f["device"] for f in facts})),  # devices, not processes
            }
        )
        per_rank = {}
        for r in self.report.records:
            per_rank[r.rank] = per_rank.get(r.rank, 0) + 1
        self.report.resolved["data_parallel"] = {
            "processes": self.team.size,
            "backend": BACKEND,
            "master": f"{HOST}:{self.team.port}",
            "ranks": [{**{k: v for k, v in f.items() if "memory" not in k}, "requests": per_rank.get(f["rank"], 0)} for f in facts],
        }


def sum_memory(own: dict[str, float], others: list[dict[str, float]]) -> None:
    """Per-process memory figures summed over the ranks; one not taken on every rank has no total and
    goes (memory/baseline_*: only rank 0 measures the baseline). NVML's device figures stay as they are."""
    for name in [n for n in own if n.startswith("memory/") and not n.endswith(DEVICE_MEMORY_SUFFIX)]:
        values = [figures.get(name) for figures in others]
        if None in values:
            del own[name]
        else:
            own[name] += sum(values)


def share(batches: list[Any], rank: int, size: int) -> list[Any]:
    """Rank r's batches: r, r + size, r + 2 size, ... (disjoint, and together all of them)."""
    return batches[rank::size]


def merge_records(by_rank: dict[int, list[RequestRecord]]) -> list[RequestRecord]:
    """Every rank's requests, each marked with its rank, in the measured order."""
    merged = []
    for rank, records in by_rank.items():
        for record in records:
            record.rank = rank
            merged.append(record)
    return sorted(merged, key=lambda r: (r.trial, r.request_index))


def rank_facts(measurement: RankMeasurement, loaded: LoadedModel) -> dict[str, Any]:
    import torch

    from llem_mlflow.bench.environment import device_tags

    def memory(metrics: dict[str, float]) -> dict[str, float]:
        return {name: value for name, value in metrics.items() if name.startswith("memory/")}

    return {
        "rank": measurement.team.rank,
        "pid": os.getpid(),
        "device": measurement.device_label or loaded.device,
        "device_name": device_tags(loaded)["llem.device.name"],
        "threads": torch.get_num_threads(),
        "batches": [b.index for b in measurement.batches],
        "memory": memory(measurement.report.metrics),
        "trial_memory": [memory(metrics) for metrics in measurement.report.trial_metrics],
    }


# --- rank 0 ------------------------------------------------------------------------------------------
class LeadMeasurement(RankMeasurement):
    """Rank 0: starts and watches the workers, measures the energy of all, owns the run's Report."""

    def __init__(self, cfg: ExperimentConfig, *, hardware: Any = None, **options: Any):
        from llem_mlflow.bench.device import TorchCuda

        size = cfg.pytorch.num_processes or 1
        self.workers = Workers(size)
        team = Team.lead(size, check=self.workers.check)
        super().__init__(cfg, team=team, hardware=LeadHardware(hardware or TorchCuda(), size), **options)

    def run(self) -> Report:
        import torch

        check_devices(self.cfg)
        gpus = visible_gpus() if torch.cuda.is_available() and self.cfg.pytorch.device_map != "cpu" else None
        threads = threads_per_process(self.team.size)
        previous_threads = torch.get_num_threads()
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            self.workers.start(self.team.port, lambda rank: self._setup(rank, gpus, threads))
            self.workers.wait_for("ready")  # then joining cannot wait on a worker that died starting
            self.team.join()
            report = super().run()
            self.workers.wait_for("done")
            return report
        except TeamBroken as exc:  # a worker left mid-collective: its own error says why
            self.workers.armed = False
            failure = self.workers.root_failure(wait_s=5.0)
            if failure is None:
                raise
            raise failure from exc
        finally:
            self.workers.stop()
            self.team.leave()
            torch.set_num_threads(previous_threads)

    def gather(self, kind: str, value: Any) -> dict[int, Any]:
        return {0: value, **self.workers.receive(kind)}

    def _setup(self, rank: int, gpus: list[str] | None, threads: int | None) -> tuple[dict[str, Any], dict[str, str]]:
        """What worker `rank` is told, and its environment: on GPUs it sees only its own, GPU `rank` of ours."""
        message = {
            "cfg": worker_config(self.cfg),
            "model_path": self.model_path,
            "workdir": str(self.report.workdir / f"rank{rank}"),
            "threads": threads,
            "device": f"cuda:{rank}" if gpus else None,  # its GPU as rank 0 numbers them
        }
        return message, ({"CUDA_VISIBLE_DEVICES": gpus[rank]} if gpus else {})

    def partial(self, error: str) -> Report:
        self.workers.stop()
        report = self.report
        cut = len(report.trial_metrics) + 1  # the trial the failure cut short: its requests are spread over the ranks
        if not any(r.trial == cut and r.rank != 0 for r in report.records):
            spread = {rank: [r for r in records if r.trial == cut] for rank, records in self.workers.finished.items()}
            own = [r for r in report.records if r.trial == cut]
            report.records = [r for r in report.records if r.trial != cut] + merge_records({0: own, **spread})
        super().partial(error)
        if self.workers.procs and cut <= self.cfg.n_trials:
            kept = kept_ranks([r for r in report.records if r.trial == cut], self.team.size)
            report.tags["llem.partial.ranks"] = kept if self.cfg.n_trials == 1 else f"trial {cut}: {kept}"
        return report

    def cleanup(self) -> None:
        self.workers.stop()
        self.team.leave()
        super().cleanup()


class LeadHardware:
    """Rank 0's view of the machine (bench.device.Hardware): its meters measure every rank's GPU
    (rank i's model is on our cuda:i), but it synchronizes only its own: each rank synchronizes
    its own GPU before the edge's barrier, and a sync from here would open a context on theirs."""

    def __init__(self, machine: Any, size: int):
        self.machine, self.size = machine, size
        self.own: list[int] = []

    def nvml_library(self) -> Any:
        return self.machine.nvml_library()

    def cuda_devices(self) -> Any:
        return self.machine.cuda_devices()

    def model_devices(self, loaded: Any) -> list[int]:
        self.own = list(self.machine.model_devices(loaded))
        return sorted(set(self.own) | set(range(self.size))) if self.own else []

    def synchronize(self, devices: Any) -> None:
        self.machine.synchronize([d for d in devices if d in self.own])


def worker_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """A worker's config: no meters (rank 0 measures every GPU and the host once)."""
    return cfg.model_copy(
        update={
            "energy": cfg.energy.model_copy(update={"gpu": "off", "codecarbon": False, "rapl": False}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
            "cooldown": cfg.cooldown.model_copy(update={"enabled": False}),
        }
    )


def threads_per_process(size: int) -> int | None:
    """The CPU cores shared out (torch would give every process all of them); None when OMP_NUM_THREADS is set."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // size)


def visible_gpus() -> list[str]:
    """The CUDA_VISIBLE_DEVICES entry of each visible GPU, in CUDA order (GPU i is rank i's)."""
    import torch

    from llem_mlflow.energy.devices import visible_entries

    return visible_entries(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


def check_devices(cfg: ExperimentConfig) -> None:
    """Refuse more processes than visible GPUs on a GPU run (ConfigError: exit 2)."""
    processes = cfg.pytorch.num_processes or 1
    if processes < 2 or cfg.pytorch.device_map == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        return  # a CPU run: the processes share the CPU
    problem = gpu_shortage(processes, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    if problem:
        raise ConfigError(problem)


def gpu_shortage(processes: int, visible: int, cuda_visible_devices: str | None) -> str | None:
    if processes <= visible:
        return None
    shown = f" (CUDA_VISIBLE_DEVICES={cuda_visible_devices!r})" if cuda_visible_devices is not None else ""
    return (
        f"pytorch.num_processes is {processes}, but {visible} GPU(s) are visible{shown}: each process needs a GPU "
        f"of its own. Lower num_processes to {visible} or less, make more GPUs visible, or set pytorch.device_map: cpu"
    )


class Workers:
    """The lead's view of ranks 1..N-1: start them, hear from them, stop them."""

    def __init__(self, size: int):
        self.size = size
        self.procs: dict[int, subprocess.Popen] = {}
        self.state: dict[int, str] = {}  # starting | ready | done | failed | gone
        self.finished: dict[int, list[RequestRecord]] = {}  # requests a failed or stopped worker sent
        self._inbox: dict[int, dict[str, list[Any]]] = {}  # rank -> kind -> values in arrival order, until received
        self.failure: WorkerFailed | None = None
        self.armed = False  # a failure interrupts the main thread only while this is true
        self._conns: dict[int, Connection] = {}
        self._changed = threading.Condition()
        self._watcher: threading.Thread | None = None
        self._interrupts = False  # whether a failure can interrupt the main thread (our SIGUSR1 handler is set)
        self._previous_handler: Any = None
        self._stopped = False

    def start(self, port: int, setup: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR1, self._interrupt)
            self._interrupts = True
        for rank in range(1, self.size):
            ours, theirs = Pipe()
            # MASTER_ADDR/PORT say where the group meets; RANK and WORLD_SIZE are left unset on purpose:
            # libraries read them as "torch.distributed is in use" and would change what they do.
            message, own_env = setup(rank)
            env = {**os.environ, "MASTER_ADDR": HOST, "MASTER_PORT": str(port), **own_env}
            command = [sys.executable, "-m", "llem_mlflow.distributed", str(rank), str(self.size), str(port), str(theirs.fileno()), str(os.getpid())]
            self.procs[rank] = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
            theirs.close()
            self._conns[rank] = ours
            self.state[rank] = "starting"
            self._inbox[rank] = {}
            ours.send(message)
        self.armed = True
        self._watcher = threading.Thread(target=self._watch, name="llem-workers", daemon=True)
        self._watcher.start()

    # --- hearing from the workers (the watcher thread) ---------------------------------------------
    def _watch(self) -> None:
        live = {conn: rank for rank, conn in self._conns.items()}
        while live:
            for conn in wait(list(live)):
                rank = live[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    del live[conn]
                    self._gone(rank)
                    continue
                self._heard(rank, message)

    def _heard(self, rank: int, message: tuple) -> None:
        with self._changed:
            if message[0] in ("records", "facts"):
                self._inbox[rank].setdefault(message[0], []).append(message[1])
            else:
                self.state[rank] = message[0]
            if message[0] == "failed":
                _, text, detail, code, collateral, records = message
                self.finished[rank] = records
                if code != EXIT_STOPPED or self.armed:  # a worker we stopped is not a failure
                    self._failed(WorkerFailed(rank, f"failed: {text}", detail, code, collateral))
            self._changed.notify_all()

    def _gone(self, rank: int) -> None:
        try:
            code = self.procs[rank].wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        with self._changed:
            if self.state[rank] not in ("done", "failed"):  # it died without a word
                self._failed(WorkerFailed(rank, f"died: {exit_description(code)}"))
            self.state[rank] = "gone" if self.state[rank] != "done" else "done"
            self._changed.notify_all()

    def _failed(self, failure: WorkerFailed) -> None:
        if self.failure is None or (self.failure.collateral and not failure.collateral):
            self.failure = failure
        if self.armed and self._interrupts:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    # --- the main thread -----------------------------------------------------------------------------
    def _interrupt(self, signum: int, frame: Any) -> None:
        self.check()

    def check(self) -> None:
        """Raise a worker's failure (the lead's barriers and waits call this)."""
        if self.armed and self.failure is not None:
            self.armed = False
            raise self.root_failure(wait_s=1.0)

    def root_failure(self, wait_s: float) -> WorkerFailed | None:
        """The failure that started it: one that broke only because another process left waits for that one."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while (self.failure is None or self.failure.collateral) and time.monotonic() < deadline:
                self._changed.wait(0.1)
            return self.failure

    def receive(self, kind: str) -> dict[int, Any]:
        """One value of this kind from every worker, by rank; a failure meanwhile is raised."""
        self._wait(lambda rank: bool(self._inbox[rank].get(kind)), f"send its {kind}")
        with self._changed:
            return {rank: box[kind].pop(0) for rank, box in self._inbox.items()}

    def wait_for(self, state: str) -> None:
        """Until every worker is ready (or done); a failure meanwhile is raised."""
        reached = {"ready": ("ready", "done"), "done": ("done",)}[state]
        self._wait(lambda rank: self.state[rank] in reached, f"get {state}")

    def _wait(self, arrived: Any, what: str) -> None:
        deadline = time.monotonic() + ANSWER_S
        with self._changed:
            while not all(arrived(rank) for rank in self.state):
                self.check()
                if time.monotonic() > deadline:
                    late = min(rank for rank in self.state if not arrived(rank))
                    raise WorkerFailed(late, f"did not {what} within {ANSWER_S:.0f} s (it may hang; see its output above)")
                self._changed.wait(0.2)

    def stop(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL) and reap them; idempotent."""
        if self._stopped:
            return
        self.armed = False
        for rank, proc in self.procs.items():
            if proc.poll() is None and self.state.get(rank) != "done":
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        for conn in self._conns.values():
            conn.close()
        if self._interrupts and not (self._watcher and self._watcher.is_alive()):
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._interrupts = False
        self._stopped = True


def kept_ranks(records: list[RequestRecord], size: int) -> str:
    """llem.partial.ranks: whose finished requests a failed run kept."""
    kept = sorted({r.rank for r in records})
    text = f"requests kept from rank(s) {', '.join(map(str, kept))}" if kept else "no finished request kept"
    lost = [rank for rank in range(size) if rank not in kept]
    if lost and kept:
        text += f"; none from rank(s) {', '.join(map(str, lost))} (it ended before finishing one, or without sending them)"
    return text


def exit_description(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        name = signal.Signals(-code).name
        why = " (the out-of-memory killer, or kill -9)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{why}"
    return f"exited with code {code} without saying why"


# --- a worker (ranks 1..N-1) ------------------------------------------------------------------------
class WorkerMeasurement(RankMeasurement):
    """Ranks 1..N-1: measure, and send the lead what it gathers over the pipe."""

    def __init__(self, cfg: ExperimentConfig, *, conn: Connection, **options: Any):
        super().__init__(cfg, **options)
        self.conn = conn

    def run(self) -> Report:
        self.team.join()
        try:
            return super().run()
        finally:
            self.team.leave()

    def gather(self, kind: str, value: Any) -> None:
        self.conn.send((kind, value))
        return None


class Stopped(BaseException):
    """SIGTERM: the lead (or someone) asks this worker to stop."""


def _stop_requested(signum: int, frame: Any) -> None:
    raise Stopped()


def _die_with_parent(parent_pid: int) -> None:
    """This worker is killed when the lead dies, however it dies (lifeline: PR_SET_PDEATHSIG on Linux,
    a watcher thread elsewhere)."""
    from llem_mlflow.lifeline import stop_with_parent

    if os.getppid() != parent_pid:  # the lead died before we could ask
        os._exit(EXIT_FAULT)
    stop_with_parent(signal.SIGKILL)


def describe_failure(exc: BaseException) -> tuple[str, str | None, int]:
    """(message, traceback or None, exit code) of what ended a worker."""
    from llem_mlflow.launch import fault_message

    if isinstance(exc, Stopped):
        return "stopped (SIGTERM)", None, EXIT_STOPPED
    if isinstance(exc, LlemError):
        return str(exc), None, exc.exit_code
    return fault_message(exc), traceback.format_exc(), EXIT_FAULT


def worker_main(argv: list[str]) -> None:
    rank, size, port, fd, lead_pid = map(int, argv)
    _die_with_parent(lead_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the lead, which stops us
    signal.signal(signal.SIGTERM, _stop_requested)
    conn = Connection(fd)
    measurement: WorkerMeasurement | None = None
    code = EXIT_FAULT
    try:
        setup = conn.recv()
        import torch
        import torch.distributed  # noqa: F401  (before "ready": from then on the lead waits for us in the group)

        if setup["threads"] is not None:
            torch.set_num_threads(setup["threads"])
        measurement = WorkerMeasurement(
            setup["cfg"], team=Team(rank, size, port), conn=conn, quiet=True, model_path=setup["model_path"], workdir=Path(setup["workdir"])
        )
        measurement.device_label = setup["device"]
        conn.send(("ready",))
        measurement.run()
        conn.send(("done",))
        code = 0
    except BaseException as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: a second request changes nothing
        message, detail, code = describe_failure(exc)
        records = measurement.report.records if measurement is not None else []
        with contextlib.suppress(Exception):
            conn.send(("failed", message, detail, code, isinstance(exc, TeamBroken), records))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: the lead has what it needs


if __name__ == "__main__":
    worker_main(sys.argv[1:])
