"""Trial statistics against hand-computed values and scipy."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llem_mlflow.stats import MAX_TRIAL_CV, drift, trial_summary


def test_single_trial_gives_only_the_mean():
    assert trial_summary("energy/j_per_output_token", [2.5]) == {"energy/j_per_output_token": 2.5}


def test_three_positive_trials_get_the_log_normal_interval():
    # values 1, 2, 3 (positive): modified Cox on y = ln x; ybar = ln(6)/3, s^2 = 0.308651..., t(0.975, 2) = 4.3026527
    out = trial_summary("x", [1.0, 2.0, 3.0])
    logs = [0.0, math.log(2), math.log(3)]
    ybar = sum(logs) / 3
    var = sum((y - ybar) ** 2 for y in logs) / 2
    half = 4.302652729911275 * math.sqrt(var / 3 + var**2 / 4)
    assert out["x"] == pytest.approx(2.0)
    assert out["x_std"] == pytest.approx(1.0)
    assert out["x_ci95_low"] == pytest.approx(math.exp(ybar + var / 2 - half)) == pytest.approx(0.458449, rel=1e-5)
    assert out["x_ci95_high"] == pytest.approx(math.exp(ybar + var / 2 + half))
    assert out["x_cv"] == pytest.approx(0.5)
    assert set(out) == {"x", "x_std", "x_ci95_low", "x_ci95_high", "x_cv"}


def test_unlike_trials_never_give_a_negative_interval():
    # issue 11: 3.28 and 0.48 J/token gave a Student t interval of -15.9..19.7
    out = trial_summary("energy/j_per_output_token", [3.28, 0.48])
    assert 0 < out["energy/j_per_output_token_ci95_low"] < 0.48
    assert out["energy/j_per_output_token_ci95_high"] > 3.28


def test_a_quantity_that_is_not_positive_keeps_the_student_t_interval():
    # values 10 and -2: not a positive quantity; t(0.975, 1) = 12.706204736174698, std = 12/sqrt(2)
    out = trial_summary("t", [10.0, -2.0])
    std = 12.0 / math.sqrt(2)
    assert out["t_std"] == pytest.approx(std)
    assert out["t_ci95_high"] - out["t"] == pytest.approx(12.706204736174698 * std / math.sqrt(2))
    assert out["t_ci95_low"] < 0


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
    assert out["m"] == pytest.approx(mean, abs=1e-6)
    assert out["m_std"] == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9, abs=1e-9)
    t = stats.t.ppf(0.975, len(values) - 1)
    if all(v > 0 for v in values):  # modified Cox on the log scale
        logs = np.log(values)
        var = float(np.var(logs, ddof=1))
        half = t * math.sqrt(var / len(values) + var**2 / (2 * (len(values) - 1)))
        centre = float(np.mean(logs)) + var / 2
        if centre + half > 700:  # exp() would overflow: no interval, rather than an infinite one
            assert "m_ci95_low" not in out and "m_ci95_high" not in out
            return
        assert out["m_ci95_low"] == pytest.approx(math.exp(centre - half), rel=1e-9)
        assert out["m_ci95_high"] == pytest.approx(math.exp(centre + half), rel=1e-9)
    elif stats.sem(values) > 0:
        low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
        assert out["m_ci95_low"] == pytest.approx(low, rel=1e-9, abs=1e-6)
        assert out["m_ci95_high"] == pytest.approx(high, rel=1e-9, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=10.0), min_size=2, max_size=10))  # up to 100x apart
def test_positive_quantities_have_positive_intervals(values):
    out = trial_summary("m", values)
    assert 0 < out["m_ci95_low"] <= out["m_ci95_high"]
    assert math.isfinite(out["m_ci95_high"])


# --- drift -------------------------------------------------------------------------------------------


def test_drift_warns_on_a_spread_above_the_threshold():
    assert drift([1.0, 1.02, 0.99]) is None  # cv 1.5%
    text = drift([1.0, 1.3, 0.9])
    assert "coefficient of variation" in text and f"> {MAX_TRIAL_CV:.0%}" in text and "1.3" in text


def test_drift_warns_on_a_monotone_trend_from_four_trials():
    # a steady 1% rise: each trial agrees closely with the next, but they trend (a warming GPU, a neighbour)
    assert drift([1.00, 1.01, 1.02, 1.03]).startswith("rose in every trial")
    assert drift([1.03, 1.02, 1.01, 1.00]).startswith("fell in every trial")
    assert drift([1.00, 1.01, 1.02]) is None  # 3 trials: monotone by chance one time in three
    assert drift([1.00, 1.02, 1.01, 1.03]) is None
    assert drift([2.0]) is None
