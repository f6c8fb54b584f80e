"""The fake machine behind llem_mlflow.bench.device.Hardware: CUDA's view of the fake boards.

CUDA numbers the devices it sees in its own order: CUDA_DEVICE_ORDER=FASTEST_FIRST (the
default: a speed heuristic, ties by PCI bus id) or PCI_BUS_ID, then keeps the entries of
CUDA_VISIBLE_DEVICES (indices in that order, or UUIDs and unique UUID prefixes; parsing stops at
the first invalid entry; a MIG UUID selects that instance). NVML always counts boards in PCI
order. The two orders differ on a machine with mixed boards, which is what UUID matching is for.

When the model is loaded, `model_devices()` makes its boards resident (context up, weights in
memory) and hooks the model's forward so that each call drives them: a call with more than one
new token is prefill, a one-token call is decode; between calls the board idles at its
resident level. So the board's power follows what the real pipeline actually does.
`forward_s` gives every forward call a floor duration (the fake board's kernel time), so a test
can size a measured window in seconds whatever the speed of the CPU running the model.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

from llem_mlflow.energy.devices import CudaDevice

SPEED = {9: 4, 8: 3, 7: 2, 5: 1, 4: 0}  # NVML architecture -> CUDA's "fastest first" rank (newer is faster)


class FakeHardware:
    def __init__(self, nvml, model_on: Sequence[int] | None = None, forward_s: float = 0.0):
        self.nvml = nvml
        self.model_on = list(model_on) if model_on is not None else [0]
        self.forward_s = forward_s
        self.synchronized: list[list[int]] = []  # every synchronize() call, in order
        self.hooked = False

    # --- the Hardware interface -------------------------------------------------------------
    def nvml_library(self) -> Any:
        return self.nvml

    def cuda_devices(self) -> list[CudaDevice]:
        handles = self._visible_handles()
        # torch prints the UUID CUDA gives: 8-4-4-4-12 hex, without NVML's GPU-/MIG- prefix
        return [CudaDevice(i, h.uuid.split("-", 1)[1]) for i, h in enumerate(handles)]

    def model_devices(self, loaded: Any) -> list[int]:
        boards = self.boards_of(self.model_on)
        model_bytes = int(sum(p.numel() * p.element_size() for p in loaded.model.parameters()))
        for board in boards:
            board.set_resident(model_bytes)
        self._hook(loaded.model, boards)
        return list(self.model_on)

    def synchronize(self, devices: Sequence[int]) -> None:
        self.synchronized.append(list(devices))

    # --- helpers ---------------------------------------------------------------------------
    def boards_of(self, cuda_indices: Sequence[int]) -> list:
        """The physical boards behind CUDA indices (a MIG instance's parent)."""
        handles = self._visible_handles()
        return [getattr(handles[i], "parent", handles[i]) for i in cuda_indices]

    def _visible_handles(self) -> list:
        order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
        boards = sorted(self.nvml.gpus, key=lambda b: b.pci_bus_id)
        if order != "PCI_BUS_ID":
            boards = sorted(boards, key=lambda b: -SPEED.get(b.architecture, 0))  # stable: ties keep PCI order
        devices = [b.mig_instances[0] if b.mig_mode and b.mig_instances else b for b in boards]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return devices
        everything = [h for b in boards for h in [b, *b.mig_instances]]
        chosen = []
        for raw in visible.split(","):
            entry = raw.strip()
            if entry.isdigit() and int(entry) < len(devices):
                chosen.append(devices[int(entry)])
            elif entry.startswith(("GPU-", "MIG-")) and len([h for h in everything if h.uuid.startswith(entry)]) == 1:
                chosen.append(next(h for h in everything if h.uuid.startswith(entry)))
            else:
                break  # CUDA stops at the first invalid entry
        return chosen

    def _hook(self, model: Any, boards: list) -> None:
        started = [0.0]

        def before(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            kind = "prefill" if ids is not None and ids.shape[-1] > 1 else "decode"
            started[0] = time.monotonic()
            for board in boards:
                board.set_activity(kind)

        def after(module, args, output):
            time.sleep(max(0.0, started[0] + self.forward_s - time.monotonic()))  # the board's kernel time
            for board in boards:
                board.set_activity(None)

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after)
        self.hooked = True
