"""Stop with the parent: a benchmark started by `mlflow run` or by a sweep ends when that parent dies.

A scheduler that stops `mlflow run` (SIGTERM to its pid) kills only that process; without this,
`python -m llem_mlflow run` would run on with parent 1 and mark its run FINISHED. Here the child
asks for SIGTERM when its parent dies, and SIGTERM takes the usual path: the run ends KILLED
with what was measured so far.

- Linux: prctl(PR_SET_PDEATHSIG, SIGTERM) through ctypes (the kernel sends it; no thread).
- Elsewhere: a daemon thread polls os.getppid() every second and sends SIGTERM to this
  process when the parent changes.
Used only when there is a parent to follow (under `mlflow run`: MLFLOW_RUN_ID; a sweep's child:
LLEM_STOP_WITH_PARENT=1), so `nohup llem-mlflow run ... &` from a shell still outlives the shell.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

STOP_WITH_PARENT_ENV = "LLEM_STOP_WITH_PARENT"
PR_SET_PDEATHSIG = 1
POLL_S = 1.0


def wanted() -> bool:
    return bool(os.environ.get("MLFLOW_RUN_ID")) or os.environ.get(STOP_WITH_PARENT_ENV) == "1"


def stop_with_parent(signum: int = signal.SIGTERM) -> str:
    """Send `signum` to this process when its parent dies. Returns how ('prctl' or 'watcher')."""
    parent = os.getppid()
    how = "prctl" if _set_parent_death_signal(signum) else _start_watcher(parent, signum)
    if os.getppid() != parent:  # the parent died before we asked: nobody will send it now
        os.kill(os.getpid(), signum)
    return how


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _start_watcher(parent: int, signum: int) -> str:
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(POLL_S):
            if os.getppid() != parent:
                os.kill(os.getpid(), signum)
                return

    threading.Thread(target=watch, name="llem-parent-watcher", daemon=True).start()
    return "watcher"
