"""Refitting the lake's PCA basis (DAG `fruits_pca_basis`): which days, under which leases, and
how the history moves into the new basis with no day mixed, half-moved or lost.

1. `take_leases`: the lake-wide refit lease (lease.REFIT), then the lease of every day that has
   a lease record or a publication. A day a daily run is writing is waited for (up to
   `wait_s`); a daily run starting later sees the refit lease and fails at once
   (`lease.check_no_refit`). So while the refit runs, nothing else writes a published day.
2. The steps fit the new basis on the window's published days (written, not yet current) and
   reproject every published day into the refit's staging folder (`Lake.refit_staging`).
3. `switch`: day by day, the published reduced/ and report folders are copied to the staging
   folder's `previous/`, `_SUCCESS` is withdrawn, both folders are replaced and `_SUCCESS`
   written again; then the new basis is made current.
4. `restore_unless_current` (a teardown): if the new basis did not become current, every day
   already switched is put back from `previous/` and the new basis is deleted, so a failed
   refit leaves the current basis and every published day as they were. Then the leases are
   released.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import date, timedelta

from fruits_pipeline import basis, lease, validation
from fruits_pipeline.lake import SUCCESS, Lake
from fruits_pipeline.lake_io import LakeStorage
from fruits_pipeline.params import DEFAULT_LAST_DAYS
from fruits_pipeline.steps import PCA_SCRIPT, REPROJECT_SCRIPT
from spark_jobs import basis as basis_files
from spark_jobs.model import FEATURE_DIM
from spark_jobs.pca_math import DEFAULT_VARIANCE

# How long a refit waits for the daily runs it found writing (one run's length).
DAY_WAIT_S, DAY_POLL_S = 3600, 15
_DAY = "dt="


@dataclass(frozen=True)
class RefitParams:
    """The fit window [first, last] and the size of the basis (exactly one of variance, k)."""

    first: date
    last: date
    variance: float | None
    k: int | None


def validate_refit_params(raw: dict, today: date) -> RefitParams:
    """The form's values: `from_date` and `to_date`, or `last_days` (ending yesterday); a
    `variance` or a `k`. Raises ValueError naming the value that is wrong."""
    known = {"from_date", "to_date", "last_days", "variance", "k"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown params: {unknown}")
    first, last = (_day(raw, name) for name in ("from_date", "to_date"))
    last_days = raw.get("last_days")
    if first or last:
        if not (first and last):
            raise ValueError("give both from_date and to_date, or neither (then last_days)")
        if first > last:
            raise ValueError(f"from_date {first} is after to_date {last}")
    else:
        days = DEFAULT_LAST_DAYS if last_days in (None, "") else last_days
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3660:
            raise ValueError(f"last_days must be a whole number of days in 1..3660, got {days!r}")
        last = today - timedelta(days=1)
        first = last - timedelta(days=days - 1)
    k = raw.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise ValueError(f"k must be a whole number, got {k!r}")
    if k is not None and not 1 <= k <= FEATURE_DIM:
        raise ValueError(f"k must be in 1..{FEATURE_DIM}, got {k}")
    variance = raw.get("variance")
    variance = DEFAULT_VARIANCE if variance is None else variance
    if isinstance(variance, bool) or not isinstance(variance, int | float):
        raise ValueError(f"variance must be a number, got {variance!r}")
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance!r}")
    return RefitParams(first, last, None if k is not None else float(variance), k)


def _day(raw: dict, name: str) -> date | None:
    value = raw.get(name)
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None


def _days_in(storage: LakeStorage, folder: str, file_name: str | None) -> set[date]:
    days = set()
    for name in storage.list_files(folder):
        partition, _, rest = name.partition("/")
        if not partition.startswith(_DAY) or (file_name is not None and rest != file_name):
            continue
        try:
            days.add(date.fromisoformat(partition[len(_DAY) :]))
        except ValueError:
            continue
    return days


def published_days(storage: LakeStorage, lake: Lake) -> list[date]:
    """Days with a `_SUCCESS` marker, oldest first."""
    return sorted(_days_in(storage, lake.days_of("reports"), SUCCESS))


def published_rows(storage: LakeStorage, lake: Lake, days: list[date]) -> dict[date, int]:
    """The rows of each published day, as its `_SUCCESS` marker counts them (the day's feature
    rows: validation checked they are as many)."""
    return {
        dt: int(json.loads(storage.read_bytes(lake.success_marker(dt)))["reduced"]) for dt in days
    }


def take_leases(
    storage: LakeStorage,
    lake: Lake,
    run: lease.RunIdentity,
    terms: lease.LeaseTerms,
    *,
    wait_s: float = DAY_WAIT_S,
    poll_s: float = DAY_POLL_S,
) -> list[date]:
    """Take the refit lease, then every day's; returns the days. Raises LeaseHeld (holding
    nothing) when another refit runs or a day stays held for `wait_s`."""
    taken: list[lease.LeaseKey] = []

    def take(key: lease.LeaseKey) -> None:
        lease.acquire(storage, lake, key, run, terms)
        taken.append(key)

    take(lease.REFIT)
    try:
        days = sorted(
            _days_in(storage, lake.days_of("leases"), None) | set(published_days(storage, lake))
        )
        deadline = time.monotonic() + wait_s
        for dt in days:
            while True:
                try:
                    take(dt)
                    break
                except lease.LeaseHeld as held:
                    if time.monotonic() >= deadline:
                        raise lease.LeaseHeld(
                            f"{held} The refit waited {wait_s:.0f} s for it and stops."
                        ) from None
                    print(f"Waiting for the run writing dt={dt.isoformat()}: {held}")
                    time.sleep(poll_s)
    except BaseException:
        release_leases(storage, lake, run.token, taken)
        raise
    return days


def release_leases(
    storage: LakeStorage, lake: Lake, token: str, keys: list[lease.LeaseKey]
) -> None:
    """Release the days first, the refit lease last (daily runs wait on that one)."""
    for key in [k for k in keys if k != lease.REFIT] + [k for k in keys if k == lease.REFIT]:
        lease.release(storage, lake, key, token)


def refit_jobs(
    lake: Lake,
    token: str,
    *,
    basis_id: str,
    fit_days: list[date],
    moved_days: list[date],
    variance: float | None,
    k: int | None,
) -> list[tuple[str, str, list[str]]]:
    """The refit's two jobs, for both backends: (name, entry script, arguments)."""
    size = ["--variance", str(variance)] if k is None else ["--k", str(k)]
    staging = lake.refit_staging(token)
    fit = [
        "--input", *[lake.features(dt) for dt in fit_days],
        "--fit-basis", lake.basis(basis_id), *size,
        "--days", *[dt.isoformat() for dt in fit_days],
    ]  # fmt: skip
    reproject = [
        "--basis", lake.basis(basis_id),
        "--input", *[lake.features(dt) for dt in moved_days],
        "--days", *[dt.isoformat() for dt in moved_days],
        "--output", f"{staging}/reduced",
        "--report", f"{staging}/reports",
        "--previous-report", lake.days_of("reports"),
    ]  # fmt: skip
    return [("fit", PCA_SCRIPT, fit), ("reproject", REPROJECT_SCRIPT, reproject)]


def _staged(lake: Lake, token: str, dataset: str, dt: date, *, previous: bool = False) -> str:
    folder = f"{lake.refit_staging(token)}{'/previous' if previous else ''}"
    return f"{folder}/{dataset}/{_DAY}{dt.isoformat()}"


def _copied_marker(lake: Lake, token: str, dt: date) -> str:
    """Written once a day's published folders are completely copied to `previous/`."""
    return f"{lake.refit_staging(token)}/previous/copied/{_DAY}{dt.isoformat()}"


def _moves(lake: Lake, token: str, dt: date, *, previous: bool = False) -> list[tuple[str, str]]:
    """(staged, published) of the folders a refit replaces in a day."""
    return [
        (_staged(lake, token, "reduced", dt, previous=previous), lake.reduced(dt)),
        (_staged(lake, token, "reports", dt, previous=previous), lake.report(dt)),
    ]


def validate_refit(
    storage: LakeStorage, lake: Lake, token: str, basis_id: str, days: list[date]
) -> dict:
    """The fit (k, explained variance, finite numbers) and every reprojected day (rows as
    published, k-long finite vectors in the new basis); raises ValidationFailed naming all."""
    fitted = basis.manifest(storage, lake, basis_id)
    if fitted is None:
        raise validation.ValidationFailed(f"basis {basis_id} was not written: the fit failed")
    model = json.loads(storage.read_bytes(basis_files.model_uri(lake.basis(basis_id))))
    k, explained = int(fitted["k"]), float(fitted["explained_variance"])
    problems = []
    if not 1 <= k <= FEATURE_DIM:
        problems.append(f"k = {k} is not in 1..{FEATURE_DIM}")
    if not (math.isfinite(explained) and 0 < explained <= 1 + 1e-9):
        problems.append(f"explained variance {explained} is not in (0, 1]")
    for name in ("mean", "scale", "components", "eigenvalues"):
        values = model[name]
        if not all(math.isfinite(v) for v in _flat(values)):
            problems.append(f"the basis's {name} holds NaN or inf")
    rows = {}
    for dt in days:
        published = json.loads(storage.read_bytes(lake.success_marker(dt)))
        expected = int(published["reduced"])
        reduced, wrong_length, not_finite, other = validation.reduced_vectors_check(
            storage, _staged(lake, token, "reduced", dt), k, basis_id
        )
        if (reduced, wrong_length, not_finite, other) != (expected, 0, 0, 0):
            problems.append(
                f"dt={dt.isoformat()}: {reduced} reprojected rows (published: {expected}), "
                f"{wrong_length} not k={k} long, {not_finite} with NaN or inf, {other} in "
                "another basis"
            )
        rows[dt.isoformat()] = reduced
    if problems:
        raise validation.ValidationFailed(
            f"refit to {basis_id} is not valid: " + "; ".join(problems)
        )
    return {"basis": basis_id, "k": k, "explained_variance": explained, "rows": rows}


def switch(
    storage: LakeStorage,
    lake: Lake,
    token: str,
    *,
    basis_id: str,
    days: list[date],
    after: int | None,
) -> int:
    """Move every day into the new basis, then make it current; returns its generation.
    The caller holds the refit lease and every day's."""
    for dt in days:
        lease.check_held(storage, lake, dt, token)
        copied = _copied_marker(lake, token, dt)
        if not storage.exists(copied):  # a retried switch keeps the first complete copy
            for (_, published), (kept, _) in zip(
                _moves(lake, token, dt), _moves(lake, token, dt, previous=True), strict=True
            ):
                storage.delete_folder(kept)  # a copy cut short
                storage.copy_folder(published, kept)
            storage.write_bytes(copied, b"")
        marker = lake.success_marker(dt)
        summary = json.loads(storage.read_bytes(marker))
        storage.delete(marker)
        for staged, published in _moves(lake, token, dt):
            storage.replace_folder(staged, published)
        day = json.loads(storage.read_bytes(lake.manifest(dt)))
        summary |= {k: day[k] for k in ("basis", "k", "explained_variance")}
        storage.write_bytes(marker, json.dumps(summary, indent=2).encode())
        print(f"dt={dt.isoformat()} is now in basis {basis_id}")
    lease.check_held(storage, lake, lease.REFIT, token)
    return basis.make_current(storage, lake, basis_id, after=after)


def restore_unless_current(
    storage: LakeStorage, lake: Lake, token: str, *, basis_id: str, days: list[date]
) -> list[date]:
    """A refit's teardown: if `basis_id` is not current, put back every day it switched
    (from `previous/`) and delete the basis; then drop its staging folder. Returns the days
    restored."""
    found = basis.current(storage, lake)
    restored = []
    if found is None or found[1]["basis"] != basis_id:
        for dt in days:
            kept = _moves(lake, token, dt, previous=True)
            if not storage.exists(_copied_marker(lake, token, dt)):
                continue  # never switched: its copy was not complete, the day not touched
            marker = lake.success_marker(dt)
            summary = storage.read_bytes(f"{kept[1][0]}/{SUCCESS}")
            storage.delete(marker)
            for previous, published in kept:
                storage.replace_folder(previous, published)
            storage.write_bytes(marker, summary)
            restored.append(dt)
            print(f"dt={dt.isoformat()} restored as it was before the refit")
        # Never current, never used by a published day: the failed refit's basis goes too.
        storage.delete_folder(lake.basis(basis_id))
    storage.delete_folder(lake.refit_staging(token))
    return restored


def _flat(values: list) -> list[float]:
    return [v for row in values for v in row] if values and isinstance(values[0], list) else values

