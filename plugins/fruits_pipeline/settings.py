"""Deployment settings of the pipeline, read from environment variables at DAG parse time.

Environment variables rather than Airflow Variables: they cost no metadata-database query at
parse time, and the same names work in `make demo`, docker-compose's `.env` and a real
deployment. EMR-specific ones (`FRUITS_EMR_*`) are read by `emr_config.EmrSettings.from_env`.

| variable | meaning | default |
|---|---|---|
| FRUITS_BACKEND | `local` (Spark standalone on this machine) or `emr` | local |
| FRUITS_LAKE_ROOT | lake root: a local folder, or s3://bucket/prefix for EMR | <repo>/.lake |
| FRUITS_WEIGHTS | default weights of the form: imagenet, random, a path, an s3 URI | see below |
| FRUITS_DAILY_AT | time of day (UTC, HH:MM) of the daily run for the day before | 02:00 |
| FRUITS_MAX_ACTIVE_RUNS | runs, hence clusters, alive at once | 2 |
| FRUITS_AWS_CONN_ID | Airflow connection for S3 and EMR | aws_default |
| FRUITS_LOCAL_STATE_DIR | local backend: cluster state, logs, staged code | <repo>/.lake-clusters |
| FRUITS_LOCAL_IDLE_TIMEOUT_S | local backend: a cluster with no step for this long stops | 1800 |
| FRUITS_LEASE_GRACE_S | a day's lease whose run has no live cluster after this long is free | 900 |
| FRUITS_LEASE_TTL_S | a lease expires this long after it was taken, whatever its run | 43200 |
| FRUITS_REFIT_SCHEDULE | cron (UTC) of `fruits_pca_basis`, or `off` | 0 6 * * 0 (Sundays 06:00) |
| FRUITS_DEFERRABLE_WAITS | EMR waits (steps, termination) in the triggerer, or a worker | true |

Default weights: ../shared's ImageNet weights file when it is beside the repository, else
`imagenet` (Keras downloads them; on EMR nodes with internet access).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fruits_pipeline.lake import Lake

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_WEIGHTS = REPO_ROOT.parent / "shared/models/mobilenet_v2_1.0_224_imagenet_notop.weights.h5"
BACKENDS = ("local", "emr")
_DAILY_AT = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


# Weekly, after the daily run (FRUITS_DAILY_AT) has long finished.
DEFAULT_REFIT_SCHEDULE = "0 6 * * 0"
# A lease expires this long after it was taken (FRUITS_LEASE_TTL_S), and no step waits longer.
DEFAULT_LEASE_TTL_S = 43_200
# What both DAGs share: no catch-up of past dates, the owning team, and no automatic retry (a
# failed run is looked at, then cleared).
DAG_DEFAULTS = {
    "start_date": datetime(2026, 1, 1, tzinfo=UTC),
    "catchup": False,
    "default_args": {"owner": "data-platform", "retries": 0},
}


@dataclass(frozen=True)
class PipelineSettings:
    backend: str
    lake: Lake
    default_weights: str
    daily_at: str
    max_active_runs: int
    aws_conn_id: str
    local_state_dir: str
    local_idle_timeout_s: float
    lease_grace_s: float
    lease_ttl_s: float
    refit_schedule: str | None  # None: manual runs only
    # EMR step sensors and termination defer to the triggerer (waits.py, backends/emr/); off for a
    # deployment without a triggerer. The local backend's sensors never defer (README, Waits).
    deferrable_waits: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineSettings:
        env = os.environ if env is None else env
        backend = env.get("FRUITS_BACKEND", "local")
        if backend not in BACKENDS:
            raise ValueError(f"FRUITS_BACKEND must be one of {BACKENDS}, got {backend!r}")
        daily_at = env.get("FRUITS_DAILY_AT", "02:00")
        if not _DAILY_AT.fullmatch(daily_at):
            raise ValueError(f"FRUITS_DAILY_AT must be HH:MM (UTC), got {daily_at!r}")
        max_active_runs = _number(env, "FRUITS_MAX_ACTIVE_RUNS", "2", int)
        if max_active_runs < 1:
            raise ValueError(f"FRUITS_MAX_ACTIVE_RUNS must be at least 1, got {max_active_runs}")
        idle_timeout_s = _seconds(env, "FRUITS_LOCAL_IDLE_TIMEOUT_S", "1800")
        lease_grace_s = _seconds(env, "FRUITS_LEASE_GRACE_S", "900")
        lease_ttl_s = _seconds(env, "FRUITS_LEASE_TTL_S", str(DEFAULT_LEASE_TTL_S))
        if lease_ttl_s <= lease_grace_s:
            raise ValueError(
                f"FRUITS_LEASE_TTL_S ({lease_ttl_s}) must be longer than FRUITS_LEASE_GRACE_S "
                f"({lease_grace_s})"
            )
        refit_schedule = env.get("FRUITS_REFIT_SCHEDULE", DEFAULT_REFIT_SCHEDULE).strip()
        if refit_schedule != "off" and len(refit_schedule.split()) != 5:
            raise ValueError(
                "FRUITS_REFIT_SCHEDULE must be a cron expression of 5 fields (UTC) or 'off', "
                f"got {refit_schedule!r}"
            )
        deferrable = env.get("FRUITS_DEFERRABLE_WAITS", "true").strip().lower()
        if deferrable not in ("true", "false"):
            raise ValueError(f"FRUITS_DEFERRABLE_WAITS must be true or false, got {deferrable!r}")
        return cls(
            backend=backend,
            lake=Lake(env.get("FRUITS_LAKE_ROOT", str(REPO_ROOT / ".lake"))),
            default_weights=env.get("FRUITS_WEIGHTS") or default_weights(),
            daily_at=daily_at,
            max_active_runs=max_active_runs,
            aws_conn_id=env.get("FRUITS_AWS_CONN_ID", "aws_default"),
            local_state_dir=env.get("FRUITS_LOCAL_STATE_DIR", str(REPO_ROOT / ".lake-clusters")),
            local_idle_timeout_s=idle_timeout_s,
            lease_grace_s=lease_grace_s,
            lease_ttl_s=lease_ttl_s,
            refit_schedule=None if refit_schedule == "off" else refit_schedule,
            deferrable_waits=deferrable == "true",
        )

    @property
    def daily_cron(self) -> str:
        hour, minute = self.daily_at.split(":")
        return f"{int(minute)} {int(hour)} * * *"


def default_weights() -> str:
    """The weights when FRUITS_WEIGHTS names none: ../shared's ImageNet weights file when it is
    beside the repository, else `imagenet`."""
    return str(SHARED_WEIGHTS) if SHARED_WEIGHTS.is_file() else "imagenet"


def _seconds(env: Mapping[str, str], name: str, default: str) -> float:
    seconds = _number(env, name, default, float)
    if not 0 < seconds < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")
    return seconds


def _number(env: Mapping[str, str], name: str, default: str, kind: type[int] | type[float]):
    """A numeric variable, with an error that names it (not just "invalid literal")."""
    text = env.get(name, default)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
