"""waits.py: each step's wait budget, from the run's data, as a pure function."""

from __future__ import annotations

import pytest

from fruits_pipeline import waits
from fruits_pipeline.settings import DEFAULT_LEASE_TTL_S
from fruits_pipeline.steps import BASIS_WAIT_S

IMAGES = [0, 1, 6, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 10**9]


@pytest.mark.parametrize("backend", ["emr", "local"])
@pytest.mark.parametrize("fit", [True, False])
def test_daily_waits_grow_with_the_images_within_the_bounds(backend, fit):
    budgets = [waits.daily_step_waits(backend, images, fit=fit) for images in IMAGES]
    for step in (0, 1):
        series = [budget[step] for budget in budgets]
        assert series == sorted(series), f"step {step} not monotone: {series}"
        assert all(waits.MIN_WAIT_S <= s <= DEFAULT_LEASE_TTL_S for s in series)
    # A huge day is capped at the bound, not left to wait for days.
    assert budgets[-1] == [DEFAULT_LEASE_TTL_S, DEFAULT_LEASE_TTL_S]


def test_the_featurize_budget_is_the_formula_with_the_readme_figures():
    images = 100_000
    expected = waits.SAFETY_FACTOR * (
        waits.CLUSTER_START_S["emr"] + waits.JOB_START_S + images / waits.FEATURIZE_IMAGES_PER_S
    )
    assert waits.daily_step_waits("emr", images, fit=True)[0] == pytest.approx(expected, abs=1)
    # A big day is given more than the provider's default (60 polls of 30 s, one hour)...
    assert waits.daily_step_waits("emr", 10 * images, fit=True)[0] > 3600
    # ...and EMR's start is counted: more than locally for the same images.
    assert (
        waits.daily_step_waits("emr", 6, fit=True)[0]
        > waits.daily_step_waits("local", 6, fit=True)[0]
    )


def test_a_pca_applying_the_basis_may_first_wait_for_it():
    fit = waits.daily_step_waits("emr", 6, fit=True)[1]
    apply = waits.daily_step_waits("emr", 6, fit=False)[1]
    assert fit == waits.MIN_WAIT_S
    assert apply >= BASIS_WAIT_S + waits.SAFETY_FACTOR * waits.JOB_START_S


def test_the_lease_ttl_bounds_every_wait():
    assert waits.daily_step_waits("emr", 10**9, fit=False, max_wait_s=7200) == [7200, 7200]
    # A lease shorter than MIN_WAIT_S wins over it.
    assert waits.daily_step_waits("local", 0, fit=True, max_wait_s=300) == [300, 300]
    with pytest.raises(ValueError, match="max_wait_s must be positive"):
        waits.daily_step_waits("local", 0, fit=True, max_wait_s=0)
    with pytest.raises(ValueError, match="images must be at least 0"):
        waits.daily_step_waits("local", -1, fit=True)


def test_refit_waits_grow_with_rows_and_days_within_the_bounds():
    sizes = [(0, 0), (4_120, 1), (100_000, 30), (1_000_000, 300), (10**8, 3000), (10**10, 10**5)]
    budgets = [
        waits.refit_step_waits("emr", fit_rows=rows, moved_rows=rows, moved_days=days)
        for rows, days in sizes
    ]
    for step in (0, 1):
        series = [budget[step] for budget in budgets]
        assert series == sorted(series)
        assert all(waits.MIN_WAIT_S <= s <= DEFAULT_LEASE_TTL_S for s in series)
    assert budgets[-1] == [DEFAULT_LEASE_TTL_S, DEFAULT_LEASE_TTL_S]
    # The README's reprojection of a million rows over 300 days took 369.5 s: the budget is
    # well above it.
    assert budgets[3][1] > 3 * 369.5


@pytest.mark.parametrize(
    ("wait_s", "poll_s", "expected"), [(1980, 30, 66), (1981, 30, 67), (900, 5, 180), (1, 30, 1)]
)
def test_attempts_cover_the_budget_and_a_hung_step_ends_at_it(wait_s, poll_s, expected):
    assert waits.attempts(wait_s, poll_s) == expected
    # The last poll is at the budget, within one poll interval.
    assert wait_s <= expected * poll_s < max(wait_s, poll_s) + poll_s


def test_attempts_need_a_positive_interval():
    with pytest.raises(ValueError, match="poll_s must be positive"):
        waits.attempts(900, 0)
