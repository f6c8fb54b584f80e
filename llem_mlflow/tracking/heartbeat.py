"""A run's sign of life, and how to tell that the process behind a RUNNING run is dead.

While a run is open, a daemon thread sets the tag `llem.heartbeat` (UTC time, ISO 8601) every
`LLEM_HEARTBEAT_S` seconds (default 30). At the start the run also gets `llem.process` (host,
boot id, pid namespace, pid and start time of the process) and `llem.heartbeat_interval_s`.

A RUNNING run is dead when
- its process ran on this machine (same host name, boot and pid namespace) and no longer
  exists (checked at once: the pid and its start time), or
- its last heartbeat is older than `stale_after_s` (default: 10 beats), never less than 3 beats.
A run without a heartbeat tag (made by something else) is never judged.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HEARTBEAT_TAG = "llem.heartbeat"
INTERVAL_TAG = "llem.heartbeat_interval_s"
PROCESS_TAG = "llem.process"
INTERVAL_ENV = "LLEM_HEARTBEAT_S"
DEFAULT_INTERVAL_S = 30.0
MIN_INTERVAL_S = 0.2
STALE_BEATS = 10  # a run is dead after this many missed beats (default)
MIN_STALE_BEATS = 3  # never judged dead sooner


def interval_s() -> float:
    """The heartbeat period: LLEM_HEARTBEAT_S, else 30 s."""
    from llem_mlflow.errors import ConfigError

    raw = os.environ.get(INTERVAL_ENV)
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= MIN_INTERVAL_S:
        raise ConfigError(f"{INTERVAL_ENV}={raw!r}: give the heartbeat period in seconds, at least {MIN_INTERVAL_S}")
    return value


class Heartbeat:
    """Sets `llem.heartbeat` on one run every `interval` seconds until stopped."""

    def __init__(self, client: Any, run_id: str, interval: float | None = None):
        self.client = client
        self.run_id = run_id
        self.interval = interval if interval is not None else interval_s()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        from mlflow.entities import RunTag

        tags = {HEARTBEAT_TAG: now_iso(), INTERVAL_TAG: f"{self.interval:g}", PROCESS_TAG: process_identity()}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        self._thread = threading.Thread(target=self._beat, name=f"llem-heartbeat-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, now_iso())
            except Exception:  # a store outage must not end the benchmark; the next beat tries again
                pass


def now_iso(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso_ms(text: str) -> int | None:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except (ValueError, AttributeError):
        return None


# --- which machine and process a run belongs to -------------------------------------------------
def process_identity(pid: int | None = None) -> str:
    """'host=h boot=<id> pidns=<n> pid=<pid> started=<s>': enough to tell, on the same machine,
    whether that very process still exists (a pid alone may have been reused)."""
    import psutil

    pid = os.getpid() if pid is None else pid
    parts = {"host": socket.gethostname(), **_machine(), "pid": str(pid), "started": f"{psutil.Process(pid).create_time():.2f}"}
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _machine() -> dict[str, str]:
    """Boot id and pid namespace (Linux): two containers may share a host name, never both of these."""
    out = {}
    try:
        out["boot"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        out["pidns"] = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return out


def process_gone(identity: str) -> bool | None:
    """True: that process ran here and is gone. False: it is alive. None: cannot tell from here."""
    import psutil

    fields = dict(part.partition("=")[::2] for part in identity.split())
    here = {"host": socket.gethostname(), **_machine()}
    if not here.get("boot") or any(fields.get(k) != v for k, v in here.items()):
        return None  # another machine, container or OS without /proc: only the heartbeat can tell
    try:
        process = psutil.Process(int(fields["pid"]))
        return abs(process.create_time() - float(fields["started"])) > 0.05  # the pid was reused
    except psutil.NoSuchProcess:
        return True
    except (KeyError, ValueError, psutil.Error):
        return None


def dead_reason(run: Any, stale_after_s: float | None = None, now_ms: int | None = None) -> str | None:
    """Why the process of a RUNNING llem run is dead, or None when it may be alive."""
    tags = run.data.tags
    beat_ms = parse_iso_ms(tags.get(HEARTBEAT_TAG, ""))
    if beat_ms is None:
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = f"last heartbeat {datetime.fromtimestamp(beat_ms / 1000, tz=timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    identity = tags.get(PROCESS_TAG, "")
    if identity and process_gone(identity):
        pid = dict(part.partition("=")[::2] for part in identity.split()).get("pid", "?")
        return f"process died: its process (pid {pid} on this machine) no longer exists; {since}"
    try:
        beat_every = float(tags.get(INTERVAL_TAG, DEFAULT_INTERVAL_S))
    except ValueError:
        beat_every = DEFAULT_INTERVAL_S
    limit_s = max(stale_after_s if stale_after_s is not None else STALE_BEATS * beat_every, MIN_STALE_BEATS * beat_every)
    silent_s = (now_ms - beat_ms) / 1000
    if silent_s > limit_s:
        return f"process died: no heartbeat for {silent_s:.0f} s (it beat every {beat_every:g} s); {since}"
    return None


def last_beat_ms(run: Any) -> int | None:
    return parse_iso_ms(run.data.tags.get(HEARTBEAT_TAG, ""))
