"""Run parameters of the ``fruits_features`` DAG: the UI form and its validation.

The form (``dag_params``) catches type errors early; ``validate_params`` is the authority and
also checks what a JSON schema cannot (real dates, paths inside the lake).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

from fruits_pipeline.lake import S3_SCHEMES, Lake
from spark_jobs.model import FEATURE_DIM
from spark_jobs.pca_math import DEFAULT_VARIANCE

DEFAULT_MAX_ERROR_RATIO = 0.05
DEFAULT_WEIGHTS = "imagenet"
MAX_K = FEATURE_DIM  # a basis has at most one component per feature
NAMED_WEIGHTS = ("imagenet", "random")
# The refit form's window when no date is given: the last N days.
DEFAULT_LAST_DAYS = 30
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class RunParams:
    """Validated parameters; exactly one of ``variance`` and ``k`` is set."""

    partition_date: date | None
    variance: float | None = DEFAULT_VARIANCE
    k: int | None = None
    max_error_ratio: float = DEFAULT_MAX_ERROR_RATIO
    weights: str = DEFAULT_WEIGHTS


def parse_partition_date(value: str) -> date:
    """Parse ``YYYY-MM-DD`` strictly: no other ISO form, and a day that exists."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError(f"partition_date must be a date written YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"partition_date {value!r} is not a calendar date: {err}") from None


def is_local_path(weights: str) -> bool:
    """Weights given as a file on the Airflow worker; EMR runs stage them to S3."""
    return weights.startswith("/")


def validate_params(
    raw: Mapping[str, Any], lake: Lake, *, default_weights: str = DEFAULT_WEIGHTS
) -> RunParams:
    """Check the params of a run; a missing or null value takes its default.

    ``k``, when given, takes precedence over ``variance``: the form always sends a variance.
    """
    unknown = sorted(set(raw) - {field.name for field in fields(RunParams)})
    if unknown:
        raise ValueError(f"unknown params: {unknown}")

    partition_text = raw.get("partition_date")
    partition_date = None if partition_text in (None, "") else parse_partition_date(partition_text)
    k = raw.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K):
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    variance = _number(raw, "variance", DEFAULT_VARIANCE)
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance!r}")
    max_error_ratio = _number(raw, "max_error_ratio", DEFAULT_MAX_ERROR_RATIO)
    if not 0 <= max_error_ratio <= 1:
        raise ValueError(f"max_error_ratio must be in [0, 1], got {max_error_ratio!r}")
    return RunParams(
        partition_date=partition_date,
        variance=None if k is not None else variance,
        k=k,
        max_error_ratio=max_error_ratio,
        weights=_weights(raw.get("weights") or default_weights, lake),
    )


def partition_date_from_context(
    params_date: str | date | None,
    data_interval_start: datetime | None,
    logical_date: datetime | None,
) -> date:
    """The partition a run processes: the ``partition_date`` param, else the UTC day the data
    interval starts (interval [D, D+1) processes dt=D), else the UTC day of the logical date."""
    if isinstance(params_date, date):
        return params_date
    if params_date:
        return parse_partition_date(params_date)
    for moment in (data_interval_start, logical_date):
        if moment is not None:
            return (moment.astimezone(UTC) if moment.tzinfo else moment).date()
    raise ValueError(
        "this run has no logical date nor data interval: give partition_date (YYYY-MM-DD)"
    )


def dag_params(default_weights: str = DEFAULT_WEIGHTS) -> dict:
    """The trigger form of the DAG, as ``airflow.sdk.Param`` objects."""
    from airflow.sdk import Param

    return {
        "partition_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Partition date",
            description="Day to process (dt=YYYY-MM-DD). Empty: the day the data interval starts.",
        ),
        "variance": Param(
            DEFAULT_VARIANCE,
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            title="Explained variance",
            description=(
                "Only when this run fits the lake's basis (the lake has none yet): keep the "
                "fewest components explaining this share. Once the lake has a basis, every run "
                "applies it and ignores this; refit the basis to change it."
            ),
        ),
        "k": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=MAX_K,
            title="Number of components",
            description=(
                "Only when this run fits the lake's basis: a fixed number of components, "
                "overriding the variance. Ignored once the lake has a basis."
            ),
        ),
        "max_error_ratio": Param(
            DEFAULT_MAX_ERROR_RATIO,
            type="number",
            minimum=0,
            maximum=1,
            title="Maximum error ratio",
            description="Fail the run when a larger share of the images cannot be featurized.",
        ),
        "weights": Param(
            default_weights,
            type="string",
            minLength=1,
            title="Model weights",
            description=(
                "'imagenet', 'random', an absolute path on the Airflow worker (staged to S3 "
                "for EMR) or an s3:// URI inside the lake."
            ),
        ),
    }


def refit_dag_params() -> dict:
    """The trigger form of `fruits_pca_basis`, as ``airflow.sdk.Param`` objects."""
    from airflow.sdk import Param

    return {
        "from_date": Param(
            None, type=["null", "string"], format="date", title="From date",
            description="First day of the fit window (with To date). Empty: the last N days.",
        ),
        "to_date": Param(
            None, type=["null", "string"], format="date", title="To date",
            description="Last day of the fit window, included.",
        ),
        "last_days": Param(
            DEFAULT_LAST_DAYS, type=["null", "integer"], minimum=1, maximum=3660,
            title="Or the last N days",
            description="Without dates: the window is the N days ending yesterday (UTC).",
        ),
        "variance": Param(
            DEFAULT_VARIANCE, type="number", exclusiveMinimum=0, maximum=1,
            title="Explained variance",
            description="The new basis keeps the fewest components explaining this share.",
        ),
        "k": Param(
            None, type=["null", "integer"], minimum=1, maximum=MAX_K,
            title="Number of components",
            description="A fixed number of components instead, overriding the variance.",
        ),
    }  # fmt: skip


def _number(raw: Mapping[str, Any], name: str, default: float) -> float:
    value = raw.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _weights(weights: Any, lake: Lake) -> str:
    if not isinstance(weights, str):
        raise ValueError(f"weights must be a string, got {weights!r}")
    if ".." in weights.split("/"):
        raise ValueError(f"weights must not contain a '..' segment, got {weights!r}")
    if weights in NAMED_WEIGHTS:
        return weights
    if is_local_path(weights):
        # EMR runs upload this file to the lake: never let the form pick any file of the worker.
        if not weights.endswith(".h5"):
            raise ValueError(f"a weights path must name a Keras .h5 file, got {weights!r}")
        # Refused here, in check_uploads, rather than minutes later by the featurize step.
        if not os.path.exists(weights):
            raise ValueError(f"the weights file {weights!r} does not exist")
        if not os.path.isfile(weights):
            raise ValueError(f"the weights path {weights!r} is not a file")
        return weights
    if weights.startswith(S3_SCHEMES):
        if not lake.is_within(weights):
            raise ValueError(f"weights URI {weights!r} is outside the lake {lake.root!r}")
        return weights
    raise ValueError(
        f"weights must be one of {', '.join(NAMED_WEIGHTS)}, an absolute path or an s3:// URI "
        f"inside the lake, got {weights!r}"
    )
