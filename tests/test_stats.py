"""Trial statistics against hand-computed values and scipy."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llem_mlflow.stats import trial_summary


def test_single_trial_gives_only_the_mean():
    assert trial_summary("energy/j_per_output_token", [2.5]) == {"energy/j_per_output_token": 2.5}


def test_three_trials_match_hand_computed_values():
    # values 1, 2, 3: mean 2, sample std 1, t(0.975, 2) = 4.302652729911275
    out = trial_summary("x", [1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert out["x"] == pytest.approx(2.0)
    assert out["x_std"] == pytest.approx(1.0)
    assert out["x_ci95_low"] == pytest.approx(2.0 - half)
    assert out["x_ci95_high"] == pytest.approx(2.0 + half)
    assert out["x_cv"] == pytest.approx(0.5)
    assert set(out) == {"x", "x_std", "x_ci95_low", "x_ci95_high", "x_cv"}


def test_two_trials_use_the_wide_t_interval():
    # n=2: t(0.975, 1) = 12.706204736174698, std = |a-b|/sqrt(2)
    out = trial_summary("t", [10.0, 12.0])
    std = 2.0 / math.sqrt(2)
    assert out["t_std"] == pytest.approx(std)
    assert out["t_ci95_high"] - out["t"] == pytest.approx(12.706204736174698 * std / math.sqrt(2))


def test_identical_trials_have_zero_spread():
    out = trial_summary("y", [4.0, 4.0, 4.0, 4.0])
    assert out["y_std"] == 0.0 and out["y_ci95_low"] == out["y_ci95_high"] == 4.0
    assert out["y_cv"] == 0.0


def test_zero_mean_has_no_cv():
    out = trial_summary("z", [-1.0, 1.0])
    assert "z_cv" not in out and out["z"] == 0.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_refuses_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        trial_summary("m", bad)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=2, max_size=30))
def test_agrees_with_scipy(values):
    import numpy as np
    from scipy import stats

    out = trial_summary("m", values)
    mean = float(np.mean(values))
    sem = stats.sem(values)
    assert out["m"] == pytest.approx(mean, abs=1e-6)
    assert out["m_std"] == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9, abs=1e-9)
    if sem > 0:
        low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
        assert out["m_ci95_low"] == pytest.approx(low, rel=1e-9, abs=1e-6)
        assert out["m_ci95_high"] == pytest.approx(high, rel=1e-9, abs=1e-6)
