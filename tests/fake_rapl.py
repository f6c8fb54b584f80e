"""A fake Linux powercap tree in a folder: the files llem_mlflow.energy.rapl reads, laid out as the kernel does.

    root/intel-rapl:0/{name=package-0, energy_uj, max_energy_range_uj}
    root/intel-rapl:0:0/{name=core, ...}       a part of the package (never added)
    root/intel-rapl:0:1/{name=dram, ...}       the socket's memory (when dram=True)
    root/intel-rapl:1/{name=psys, ...}         the platform (never added; when psys=True)
    root/intel-rapl-mmio:0/{name=package-0}    the package again through MMIO (never added)

Only the hardware is fake: the test moves a counter by writing energy_uj, as the CPU would.
"""

from __future__ import annotations

from pathlib import Path

MAX_UJ = 262_143_328_850  # a real Intel package's max_energy_range_uj


class FakeRapl:
    def __init__(self, root: Path, sockets: int = 1, dram: bool = True, psys: bool = False, start_uj: int = 1_000_000):
        self.root = Path(root)
        self.zones: dict[str, Path] = {}
        for socket in range(sockets):
            self._zone(f"intel-rapl:{socket}", f"package-{socket}", start_uj)
            self._zone(f"intel-rapl:{socket}:0", "core", start_uj)
            if dram:
                self._zone(f"intel-rapl:{socket}:1", "dram", start_uj)
            self._zone(f"intel-rapl-mmio:{socket}", f"package-{socket}", start_uj)
        if psys:
            self._zone(f"intel-rapl:{sockets}", "psys", start_uj)

    def _zone(self, folder: str, name: str, start_uj: int) -> None:
        zone = self.root / folder
        zone.mkdir(parents=True)
        (zone / "name").write_text(name + "\n")
        (zone / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
        (zone / "energy_uj").write_text(f"{start_uj}\n")
        self.zones[folder] = zone

    def read(self, folder: str) -> int:
        return int((self.zones[folder] / "energy_uj").read_text())

    def set(self, folder: str, microjoules: int) -> None:
        (self.zones[folder] / "energy_uj").write_text(f"{microjoules}\n")

    def add_joules(self, folder: str, joules: float) -> None:
        """The counter advances by `joules`, wrapping past max_energy_range_uj as the hardware does."""
        self.set(folder, (self.read(folder) + round(joules * 1e6)) % MAX_UJ)

    def add_everywhere(self, joules: float) -> None:
        """Every zone advances (the core and psys and mmio ones too, which must not be counted)."""
        for folder in self.zones:
            self.add_joules(folder, joules)
