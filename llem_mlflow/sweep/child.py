"""Start one point's `python -m llem_mlflow run ... --parent-run-id` process and follow it.

Both executors call `run_child`: the local one in the sweep's own process, the
Ray one inside a Ray task on a worker node. So a point's run is the same
command, with the same config file and options, whichever executor ran it.
Nothing here imports mlflow or ray (a Ray worker needs neither to launch a point).
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_ID_LINE = re.compile(r"run_id:\s*([0-9a-f]{32})\b")
TAIL_LINES = 20
STOP_TIMEOUT_S = 30.0  # time the child gets to end its run KILLED after SIGTERM
POLL_S = 0.2
READER_JOIN_S = 10.0  # the output pipe closes when the child exits (a grandchild could hold it open)
# Environment a child must not inherit: under `mlflow run` MLFLOW_RUN_ID names the parent,
# and a child that saw it would resume the parent instead of creating its own run.
PARENT_ONLY_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
# CUDA numbers GPUs fastest-first by default, NVML (and our energy meter) by PCI bus:
# in PCI order a CUDA_VISIBLE_DEVICES id names the GPU the meter reads.
DEVICE_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
# A point's process stops (its run KILLED) if the sweep or Ray task that started it dies (llem_mlflow.lifeline).
STOP_WITH_PARENT = {"LLEM_STOP_WITH_PARENT": "1"}


@dataclass(frozen=True)
class ChildSpec:
    """What a point's process needs: its config as YAML text (written where the process runs) and its run."""

    config_yaml: str
    config_name: str  # file name for the config, e.g. point-<hash>-<repeat>.yaml
    parent_id: str
    experiment_id: str
    run_name: str


@dataclass(frozen=True)
class ChildOutcome:
    run_id: str | None  # from the `run_id:` line; None when the process died before creating its run
    exit_code: int
    tail: list[str]  # the last lines of its output
    started_s: float  # wall clock (time.time) around the process, for overlap between points
    ended_s: float


def child_command(config_path: Path, spec: ChildSpec) -> list[str]:
    return [
        sys.executable, "-m", "llem_mlflow", "run", str(config_path),
        "--parent-run-id", spec.parent_id,
        "--experiment-id", spec.experiment_id,
        "--run-name", spec.run_name,
    ]  # fmt: skip


def child_env(base: Mapping[str, str], forced: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` without the parent's run, PCI device order unless the user chose another, then `forced`."""
    env = {k: v for k, v in base.items() if k not in PARENT_ONLY_ENV}
    for key, value in DEVICE_ORDER.items():
        env.setdefault(key, value)
    env.update(STOP_WITH_PARENT)
    env.update(forced or {})
    return env


def run_child(
    spec: ChildSpec,
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None = None,
    cwd: str | None = None,
    detached: bool = False,
) -> ChildOutcome:
    """Run the point's process to its end; its outcome as seen from outside (MLflow is read by the caller).

    On KeyboardInterrupt the child is given time to end its run KILLED, and the interrupt goes on.
    Attached (local executor), the child is in our process group and saw the same Ctrl-C.
    Detached (on a Ray worker), the child is in its own session, so the only signal it gets is
    our SIGTERM when Ray cancels the task; and Linux kills it if this process dies, so a crashed
    worker cannot leave a point running on a GPU that Ray hands to the next task.
    """
    with tempfile.TemporaryDirectory(prefix="llem-point-") as workdir:
        config_path = Path(workdir) / spec.config_name
        config_path.write_text(spec.config_yaml, encoding="utf-8")
        started = time.time()
        process = subprocess.Popen(
            child_command(config_path, spec),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env),
            cwd=cwd,
            bufsize=1,
            start_new_session=detached,
            preexec_fn=_kill_me_with_parent() if detached else None,
        )
        output = _Output(on_line)
        reader = threading.Thread(target=output.follow, args=(process.stdout,), name="llem-point-output", daemon=True)
        reader.start()
        try:
            # Wait in short slices, not in a blocking read: Ray cancels a task by raising
            # KeyboardInterrupt in Python code, which a read of a silent child would never reach.
            while (exit_code := process.poll()) is None:
                time.sleep(POLL_S)
        except BaseException:
            stop(process, terminate=detached)
            raise
        finally:
            reader.join(timeout=READER_JOIN_S)
        return ChildOutcome(output.run_id, exit_code, list(output.tail), started, time.time())


class _Output:
    """The child's output as it comes: its run id, its last lines, each line passed on."""

    def __init__(self, on_line: Callable[[str], None] | None):
        self.on_line = on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.run_id: str | None = None

    def follow(self, stream: Any) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.tail.append(line)
            found = RUN_ID_LINE.search(line)
            self.run_id = self.run_id or (found.group(1) if found else None)
            if self.on_line is not None:
                self.on_line(line)


def stop(process: subprocess.Popen, terminate: bool) -> None:
    """Wait for the child to end its run KILLED (after our SIGTERM if `terminate`), then SIGKILL it."""
    if terminate and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _kill_me_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when its parent dies (None elsewhere).

    The libc function is looked up before the fork, so the child only makes one system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    parent = os.getpid()

    def arm() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return arm
