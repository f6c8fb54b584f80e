"""Wait between trials until the GPU is back near its baseline temperature.

Pure: the temperature reader, the sleep and the clock are passed in, so this
module never imports NVML and the wait is tested without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until_cool(
    read_temperature: Callable[[], float | None],
    baseline_c: float,
    tolerance_c: float,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[float, bool]:
    """Poll until read_temperature() <= baseline_c + tolerance_c, at most timeout_s.

    Returns (seconds waited, whether the target was reached). A reader that
    returns None (temperature unavailable) ends the wait at once, unreached:
    waiting blind would only add time without knowing why.
    """
    if timeout_s < 0 or tolerance_c < 0 or poll_s <= 0:
        raise ValueError("timeout_s and tolerance_c must be >= 0 and poll_s > 0")
    target = baseline_c + tolerance_c
    start = clock()
    while True:
        waited = clock() - start
        temperature = read_temperature()
        if temperature is None:
            return waited, False
        if temperature <= target:
            return waited, True
        remaining = timeout_s - waited
        if remaining <= 0:
            return waited, False
        sleep(min(poll_s, remaining))
