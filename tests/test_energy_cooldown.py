"""wait_until_cool with a scripted temperature reader and a simulated clock."""

import pytest

from llem_mlflow.energy.cooldown import wait_until_cool


class SimulatedTime:
    """A clock that advances only when sleep() is called."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def reader(temperatures):
    it = iter(temperatures)
    return lambda: next(it)


def test_returns_at_once_when_already_cool():
    t = SimulatedTime()
    assert wait_until_cool(reader([40.0]), 40.0, 3.0, 60.0, sleep=t.sleep, clock=t.clock) == (0.0, True)
    assert t.sleeps == []


def test_waits_until_within_tolerance():
    t = SimulatedTime()
    waited, reached = wait_until_cool(
        reader([60.0, 50.0, 44.0, 43.0]), 40.0, 3.0, 60.0, sleep=t.sleep, clock=t.clock, poll_s=2.0
    )
    assert reached and waited == 6.0 and t.sleeps == [2.0, 2.0, 2.0]


def test_gives_up_at_the_timeout():
    t = SimulatedTime()
    waited, reached = wait_until_cool(lambda: 80.0, 40.0, 3.0, 5.0, sleep=t.sleep, clock=t.clock, poll_s=2.0)
    assert not reached and waited == 5.0 and t.sleeps == [2.0, 2.0, 1.0]


def test_unreadable_temperature_ends_the_wait_unreached():
    t = SimulatedTime()
    assert wait_until_cool(reader([70.0, None]), 40.0, 3.0, 60.0, sleep=t.sleep, clock=t.clock) == (1.0, False)


def test_real_sleep_and_clock_are_the_defaults():
    waited, reached = wait_until_cool(lambda: 99.0, 40.0, 1.0, 0.05, poll_s=0.02)
    assert not reached and 0.04 <= waited < 1.0


def test_refuses_bad_arguments():
    with pytest.raises(ValueError):
        wait_until_cool(lambda: 1.0, 0.0, 1.0, 1.0, poll_s=0)
