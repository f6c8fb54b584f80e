"""The reporter's own process: the only one that imports MLflow during a run.

    python -m llem_mlflow.tracking.report_worker READ_FD WRITE_FD

The measuring process sends jobs over a pipe, in order: ("open", kwargs) opens the run,
("call", function, args) runs `function(logger, *args)`, ("sync",) answers with the first
error since the last sync (or None) once every earlier job is done, ("close",) ends the
worker. After an error, later jobs are skipped until the next sync has reported it, so the
run never holds half of a later step.

Ctrl-C and SIGTERM reach the whole process group; this process ignores them and lets the
measuring process decide the run's end. If the measuring process dies without closing
(kill -9, the OOM killer), the pipe ends, and an open run is marked FAILED with that reason.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

DIED = (
    "the measuring process died without ending the run (killed with SIGKILL, or by the out-of-memory "
    "killer); what was logged before is kept"
)


def serve(inbox: Connection, outbox: Connection) -> bool:
    """Run jobs until closed (True) or the measuring process is gone (False)."""
    logger: Any = None
    error: dict[str, Any] | None = None
    closed = False
    while not closed:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            break
        kind = message[0]
        if kind == "sync":
            try:
                outbox.send(error)
            except OSError:  # the measuring process died waiting for this answer
                break
            error = None  # reported: the measuring process decides what comes next
            continue
        if kind == "close":
            closed = True
            continue
        if error is not None:
            continue
        try:
            if kind == "open":
                from llem_mlflow.tracking.run import RunLogger

                logger = RunLogger.start(**message[1])
            elif kind == "call":
                _, function, args = message
                function(logger, *args)
        except BaseException as exc:  # sent back, raised in the measuring process
            error = describe_error(exc)
    if not closed and logger is not None and not logger.ended:
        _mark_died(logger)
    return closed


def describe_error(exc: BaseException) -> dict[str, Any]:
    from llem_mlflow.errors import LlemError

    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "llem": isinstance(exc, LlemError),
        "exit_code": getattr(exc, "exit_code", 1),
    }


def _mark_died(logger: Any) -> None:
    try:
        logger.set_tags({"llem.error": DIED, "llem.status": "failed"})
        logger.end("FAILED")
    except Exception as exc:
        print(f"warning: could not mark run {logger.run_id} FAILED after the measuring process died: {exc}", file=sys.stderr)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    read_fd, write_fd = int(sys.argv[1]), int(sys.argv[2])
    serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False))
    sys.stdout.flush()
    sys.stderr.flush()
    # Every job is done and synced: skip interpreter teardown (MLflow's exit hooks cost a second or more).
    os._exit(0)


if __name__ == "__main__":
    main()
