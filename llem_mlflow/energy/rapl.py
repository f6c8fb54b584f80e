"""CPU package and DRAM energy from RAPL counters, read through Linux powercap (sysfs).

    /sys/class/powercap/intel-rapl:<socket>/          name "package-<socket>", energy_uj, max_energy_range_uj
    /sys/class/powercap/intel-rapl:<socket>:<n>/      sub-domains; the one named "dram" is the socket's memory

Recent AMD CPUs expose their package counters under the same names. Other
sub-domains (core, uncore) are parts of the package and `psys` (the whole
platform) would count the package again, so only package and dram are read;
`intel-rapl-mmio:*` repeats the package through another interface and is skipped.

Each counter is a microjoule count that wraps to 0 after `max_energy_range_uj`.
A window adds the wrap-aware difference between consecutive reads; a polling
thread reads again every few seconds so that a long window cannot hide a wrap
between its two edges (one wrap per poll interval at most; the interval is a
quarter of the fastest wrap at 1 kW per domain, and 30 s at most). The root is
a parameter, so tests read a fake tree in a temporary folder through this same code.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llem_mlflow.energy.readings import RaplReading
from llem_mlflow.errors import EnergyError

POWERCAP_ROOT = Path("/sys/class/powercap")
_ZONE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_PACKAGE_NAME = re.compile(r"^package-(\d+)")
MAX_POLL_S = 30.0
POLL_ASSUMED_W = 1000.0  # a domain drawing more than this between polls could wrap unseen


class RaplUnavailable(EnergyError):
    """RAPL cannot be read here; the message says why (absent, permission, unreadable)."""


@dataclass(frozen=True)
class RaplDomain:
    label: str  # "package-0", "dram-0": the name in tags and energy_phases.json
    kind: str  # "package" | "dram"
    socket: int
    path: Path  # the zone folder holding energy_uj
    max_energy_uj: int


def find_domains(root: Path | None = None) -> list[RaplDomain]:
    """The package and dram domains under `root`, each read once; RaplUnavailable says why there are none."""
    root = Path(POWERCAP_ROOT if root is None else root)
    if not root.is_dir():
        raise RaplUnavailable(f"{root} is absent (no powercap interface: not Linux, a VM or container without it)")
    zones = sorted(p for p in root.iterdir() if _ZONE.match(p.name))
    if not zones:
        raise RaplUnavailable(f"no intel-rapl zone under {root} (the CPU or kernel exposes no RAPL counters)")
    packages = {}
    for zone in zones:
        if _ZONE.match(zone.name).group(2) is None:
            name = _read_text(zone / "name")
            found = _PACKAGE_NAME.match(name)
            if found:
                packages[zone.name] = int(found.group(1))
    domains = []
    for zone in zones:
        top, sub = _ZONE.match(zone.name).groups()
        name = _read_text(zone / "name")
        socket = packages.get(f"intel-rapl:{top}")
        if socket is None:
            continue  # psys or another platform-wide zone: it would count the packages again
        if sub is None:
            kind, label = "package", f"package-{socket}"
        elif name == "dram":
            kind, label = "dram", f"dram-{socket}"
        else:
            continue  # core/uncore: parts of the package
        domains.append(RaplDomain(label, kind, socket, zone, _read_int(zone / "max_energy_range_uj")))
    if not any(d.kind == "package" for d in domains):
        raise RaplUnavailable(f"no package domain under {root}")
    for domain in domains:
        read_energy_uj(domain)  # readable now, or the reason (energy_uj is root-only on most kernels)
    return domains


def read_energy_uj(domain: RaplDomain) -> int:
    return _read_int(domain.path / "energy_uj")


def wrapped_delta_uj(start: int, end: int, max_energy_uj: int) -> int:
    """end - start for a counter that wraps to 0 after max_energy_uj (one wrap at most)."""
    return end - start if end >= start else end + max_energy_uj - start


def poll_interval_s(domains: list[RaplDomain]) -> float:
    fastest_wrap_s = min(d.max_energy_uj for d in domains) / 1e6 / POLL_ASSUMED_W
    return max(0.5, min(MAX_POLL_S, fastest_wrap_s / 4))


class RaplSource:
    """begin()/end() -> RaplReading: package and dram joules per socket over the window."""

    def __init__(self, domains: list[RaplDomain], poll_s: float | None = None):
        self.domains = domains
        self.poll_s = poll_interval_s(domains) if poll_s is None else poll_s
        self._last: dict[str, int] = {}
        self._total_uj: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_s = 0.0

    @classmethod
    def open(cls, root: Path | None = None) -> RaplSource:
        return cls(find_domains(root))

    def describe(self) -> str:
        return ", ".join(d.label for d in self.domains)

    def begin(self) -> None:
        self.close()
        with self._lock:
            self._last = {d.label: read_energy_uj(d) for d in self.domains}
            self._total_uj = dict.fromkeys(self._last, 0)
        self._start_s = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_until_stopped, name="llem-rapl-poll", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        """Read every counter and add what it counted since the last read (at most one wrap since then)."""
        with self._lock:
            for domain in self.domains:
                now = read_energy_uj(domain)
                self._total_uj[domain.label] += wrapped_delta_uj(self._last[domain.label], now, domain.max_energy_uj)
                self._last[domain.label] = now

    def end(self) -> RaplReading:
        self.close()
        self.poll()
        joules = {label: uj / 1e6 for label, uj in self._total_uj.items()}
        package = {d.socket: joules[d.label] for d in self.domains if d.kind == "package"}
        dram = {d.socket: joules[d.label] for d in self.domains if d.kind == "dram"}
        return RaplReading(package_j=package, dram_j=dram, duration_s=time.monotonic() - self._start_s)

    def close(self) -> None:
        """Stop the polling thread (bounded: it checks the stop flag every poll interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 5)
            self._thread = None

    def _poll_until_stopped(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except RaplUnavailable:
                return  # end() reads again and reports the failure


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise RaplUnavailable(
            f"permission denied reading {path} (Linux makes RAPL counters root-only since 5.10; "
            "grant read access, e.g. a udev rule or `chmod o+r` on energy_uj, or run as root)"
        ) from None
    except OSError as exc:
        raise RaplUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_int(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text)
    except ValueError:
        raise RaplUnavailable(f"{path} holds {text!r}, not a whole number of microjoules") from None
