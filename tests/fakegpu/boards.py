"""Board classes: how each generation of NVIDIA board reports power and energy through NVML.

Sources (docs/methodology.md, "The fake GPU", lists them with the tests that cover each):

* NVML API reference, nvmlDeviceGetTotalEnergyConsumption: mJ since the driver was last
  reloaded, "for Volta or newer fully supported devices" -> pre-Volta boards have no counter.
* NVML API reference, nvmlDeviceGetPowerUsage: "On Ampere (except GA100) or newer GPUs, the API
  returns power averaged over 1 sec interval. On GA100 and older architectures, instantaneous
  power is returned"; NVML_FI_DEV_POWER_INSTANT (nvmlDeviceGetFieldValues) gives the
  instantaneous value on drivers that have the field (Zeus v0.9.1 reads it on every architecture).
* The counter advances in steps "approximately every 100 ms" (ML.ENERGY blog, "Thermally stable
  profiling"; PETSc's NVML notes say 20-100 ms on newer GPUs); Zeus v0.6.1 notes a window shorter
  than the update period can read 0 J.
* Temperature raises power (leakage) and back-to-back trials heat the board (same blog).
* Idle and busy powers are round figures in the range published for each board (H100 SXM idles
  at 60-70 W with persistence on); they matter only as a realistic floor and ratios.

The numbers are per class; a scenario can replace any of them (dataclasses.replace).
"""

from __future__ import annotations

from dataclasses import dataclass

# nvmlDeviceGetArchitecture values (nvml.h)
ARCH_PASCAL, ARCH_VOLTA, ARCH_AMPERE, ARCH_HOPPER = 4, 5, 7, 9


@dataclass(frozen=True)
class BoardClass:
    name: str  # what nvmlDeviceGetName returns
    architecture: int
    idle_w: float  # persistence on, no CUDA context
    resident_w: float  # CUDA context up, weights resident, no kernel running
    prefill_w: float  # compute-bound burst
    decode_w: float  # memory-bound plateau
    power_limit_w: float  # enforced limit: above it the board caps power (SW power cap)
    has_counter: bool  # nvmlDeviceGetTotalEnergyConsumption supported
    counter_period_s: float  # the counter advances in steps of this period (0: continuously)
    sensor_period_s: float  # power sensor refresh (the instant reading holds between refreshes)
    usage_is_averaged: bool  # nvmlDeviceGetPowerUsage is a 1 s moving average
    instant_field: bool  # NVML_FI_DEV_POWER_INSTANT supported by the driver
    memory_total_gib: int
    idle_clock_mhz: int
    max_clock_mhz: int
    noise_w: float = 1.5  # sensor noise (standard deviation) on a power reading
    power_sensor_gain: float = 1.0  # a miscalibrated sensor reads this many times the true power
    ambient_c: float = 30.0
    c_per_w: float = 0.08  # steady-state temperature rise per watt
    thermal_tau_s: float = 40.0  # heatsink time constant
    slowdown_c: float = 87.0  # above it: HW thermal slowdown (clocks and power cut)
    leakage_per_c: float = 0.002  # power grows 0.2 % per degree above ambient (leakage)
    response_tau_s: float = 0.015  # electrical response of board power to a load change
    mig_capable: bool = False


# Hopper: counter, averaged nvmlDeviceGetPowerUsage, and the instant field on current drivers.
H100 = BoardClass(
    name="NVIDIA H100 80GB HBM3", architecture=ARCH_HOPPER, idle_w=65.0, resident_w=78.0, prefill_w=640.0,
    decode_w=330.0, power_limit_w=700.0, has_counter=True, counter_period_s=0.1, sensor_period_s=0.02,
    usage_is_averaged=True, instant_field=True, memory_total_gib=80, idle_clock_mhz=345, max_clock_mhz=1980,
    mig_capable=True,
)  # fmt: skip
# Ampere GA100 (A100): counter; nvmlDeviceGetPowerUsage is instantaneous on GA100; no instant field on older drivers.
A100 = BoardClass(
    name="NVIDIA A100-SXM4-40GB", architecture=ARCH_AMPERE, idle_w=55.0, resident_w=66.0, prefill_w=380.0,
    decode_w=210.0, power_limit_w=400.0, has_counter=True, counter_period_s=0.1, sensor_period_s=0.05,
    usage_is_averaged=False, instant_field=False, memory_total_gib=40, idle_clock_mhz=210, max_clock_mhz=1410,
    mig_capable=True,
)  # fmt: skip
# Ampere GA10x (A10): counter; nvmlDeviceGetPowerUsage is a 1 s average, and an older driver has no instant field.
A10 = BoardClass(
    name="NVIDIA A10", architecture=ARCH_AMPERE, idle_w=22.0, resident_w=58.0, prefill_w=148.0,
    decode_w=120.0, power_limit_w=150.0, has_counter=True, counter_period_s=0.1, sensor_period_s=0.05,
    usage_is_averaged=True, instant_field=False, memory_total_gib=24, idle_clock_mhz=210, max_clock_mhz=1695,
)  # fmt: skip
# Volta (V100): the first generation with the counter; instantaneous power.
V100 = BoardClass(
    name="Tesla V100-SXM2-32GB", architecture=ARCH_VOLTA, idle_w=42.0, resident_w=55.0, prefill_w=290.0,
    decode_w=170.0, power_limit_w=300.0, has_counter=True, counter_period_s=0.1, sensor_period_s=0.05,
    usage_is_averaged=False, instant_field=False, memory_total_gib=32, idle_clock_mhz=135, max_clock_mhz=1530,
)  # fmt: skip
# Pascal (P100): no energy counter at all; power only.
P100 = BoardClass(
    name="Tesla P100-PCIE-16GB", architecture=ARCH_PASCAL, idle_w=31.0, resident_w=38.0, prefill_w=240.0,
    decode_w=150.0, power_limit_w=250.0, has_counter=False, counter_period_s=0.1, sensor_period_s=0.05,
    usage_is_averaged=False, instant_field=False, memory_total_gib=16, idle_clock_mhz=405, max_clock_mhz=1328,
)  # fmt: skip

BOARD_CLASSES = {"H100": H100, "A100": A100, "A10": A10, "V100": V100, "P100": P100}
