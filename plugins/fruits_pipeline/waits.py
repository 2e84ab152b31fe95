"""How long a step's sensor waits for it: sized from the run's data, not the provider's default.

The amazon provider's step sensor waits `max_attempts` x `poke_interval` (60 x 30 s, one hour):
too short for a big day, and a hung step would keep a sensor waiting for as long as it is given.
Here each step gets a budget from what it processes and the throughput measured in the README
(section Performance), on this machine kind (2 cores), which is slower than the default EMR
cluster's core nodes (the README's cost model takes them as 4 such cores), so conservative there:

    wait_s = clamp(SAFETY_FACTOR x (start_s + work_s) [+ BASIS_WAIT_S], MIN_WAIT_S, max_wait_s)

- start_s: the cluster's start for the first step (EMR: about 10 minutes, the README's cost
  model; local: seconds), plus JOB_START_S for a spark-submit (Spark, the model's load);
- work_s: images / FEATURIZE_IMAGES_PER_S for featurize, rows / PCA_ROWS_PER_S for the day's
  PCA; for the refit, rows / FIT_ROWS_PER_S for the fit, rows / REPROJECT_ROWS_PER_S plus
  REPORT_S_PER_DAY a day for the reprojection;
- BASIS_WAIT_S (steps.py): a PCA step applying the basis may first wait that long for a run
  still fitting it; that wait has its own bound, added as it is;
- max_wait_s: the lease's time to live (FRUITS_LEASE_TTL_S, 12 h by default). A run's lease
  expires then, whatever the run: a step still running would write for nobody.

A sensor polls every `poll_s`; its trigger makes `attempts(wait_s, poll_s)` attempts, so a step
that never ends stops being waited for at the budget.
"""

from __future__ import annotations

import math

from fruits_pipeline.settings import DEFAULT_LEASE_TTL_S
from fruits_pipeline.steps import BASIS_WAIT_S

# README, Performance: `spark_jobs.featurize`, steady 276.9 images/s on 4,120 photos (2 cores).
FEATURIZE_IMAGES_PER_S = 276.9
# README, Performance: PCA fit + projection of a day, 4,120 rows 6.6 s, 100,000 rows 28.6 s:
# about 4,300 rows/s past the start.
PCA_ROWS_PER_S = 4_300.0
# README, `make bench-refit`: the fit's steady time is 79 to 100 us a row.
FIT_ROWS_PER_S = 10_000.0
# README, `make bench-refit`: reprojection of 1,000,000 rows over 300 days, 2,707 rows/s for the
# whole job; the per-day reports 0.53 s a day (counted again here, on top).
REPROJECT_ROWS_PER_S = 2_700.0
REPORT_S_PER_DAY = 0.53
# A spark-submit's own start: Spark, Python workers, the model (the README: 41.3 s with a cold
# model cache against 27.0 s, 4,120 photos included; `make demo`: PCA 20 s on a few photos).
JOB_START_S = 60.0
# The cluster's start, waited for by the first step's sensor (steps are queued while it starts).
CLUSTER_START_S = {
    "emr": 600.0,  # README, "What a daily run costs on EMR": about 10 minutes
    "local": 30.0,  # README: `make demo`'s cluster starts in 4 s
}
# Measured figures move (this machine's speed drifts by 10% within minutes, EMR's start with
# the region's capacity): every estimate is multiplied by this.
SAFETY_FACTOR = 3.0
# No step is given less than this (small days: Spark's start dominates), nor more than the
# lease's TTL (`max_wait_s`, by default settings.DEFAULT_LEASE_TTL_S).
MIN_WAIT_S = 900.0


def _bounded(estimate_s: float, max_wait_s: float, *, bounded_wait_s: float = 0.0) -> int:
    """The estimate with its margin, plus a wait that has its own bound, within the bounds
    (the upper one wins over MIN_WAIT_S: a lease shorter than that ends every wait sooner)."""
    if max_wait_s <= 0:
        raise ValueError(f"max_wait_s must be positive, got {max_wait_s}")
    wait_s = SAFETY_FACTOR * estimate_s + bounded_wait_s
    return math.ceil(min(max(wait_s, MIN_WAIT_S), max_wait_s))


def _count(name: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{name} must be at least 0, got {value}")
    return value


def daily_step_waits(
    backend: str, images: int, *, fit: bool, max_wait_s: float = DEFAULT_LEASE_TTL_S
) -> list[int]:
    """Seconds to wait for the day's featurize and PCA steps, in that order, for `images`
    uploads; `fit`: the PCA step fits the basis (it does not wait for another run's)."""
    images = _count("images", images)
    featurize = CLUSTER_START_S[backend] + JOB_START_S + images / FEATURIZE_IMAGES_PER_S
    pca = JOB_START_S + images / PCA_ROWS_PER_S
    return [
        _bounded(featurize, max_wait_s),
        _bounded(pca, max_wait_s, bounded_wait_s=0.0 if fit else BASIS_WAIT_S),
    ]


def refit_step_waits(
    backend: str, *, fit_rows: int, moved_rows: int, moved_days: int,
    max_wait_s: float = DEFAULT_LEASE_TTL_S,
) -> list[int]:  # fmt: skip
    """Seconds to wait for the refit's fit (over `fit_rows` rows) and reprojection (of
    `moved_rows` rows over `moved_days` days), in that order."""
    fit_rows = _count("fit_rows", fit_rows)
    moved_rows, moved_days = _count("moved_rows", moved_rows), _count("moved_days", moved_days)
    fit = CLUSTER_START_S[backend] + JOB_START_S + fit_rows / FIT_ROWS_PER_S
    reproject = JOB_START_S + moved_rows / REPROJECT_ROWS_PER_S + moved_days * REPORT_S_PER_DAY
    return [_bounded(fit, max_wait_s), _bounded(reproject, max_wait_s)]


def attempts(wait_s: float, poll_s: float) -> int:
    """Polls of a trigger waiting `wait_s` seconds every `poll_s` (at least one)."""
    if poll_s <= 0:
        raise ValueError(f"poll_s must be positive, got {poll_s}")
    return max(1, math.ceil(wait_s / poll_s))
