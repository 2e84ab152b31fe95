"""The lake's current PCA basis: which one a daily run applies, and how the first one is made.

    models/pca/<basis id>/                    the bases (spark_jobs/basis.py): written once, kept
    models/current-basis/<generation>.json    which basis is current (generations.py)

A run reads the newest record. If its basis is complete, the run applies it. If the lake has no
basis yet, the run adds generation 1 naming a new basis that it fits on its own day. Of two first
days racing (a backfill over an empty lake) one adds that record and fits; the other applies the
winner's basis, its PCA step waiting for the basis to appear. If the run that reserved a basis
ended without fitting it (its day's lease is free and the basis is still missing), the next run
reserves a new one. A refit (fruits_pca_basis) writes its basis first, then adds its record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from fruits_pipeline import lease
from fruits_pipeline.generations import RecordLog
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LakeStorage
from spark_jobs import basis as basis_files


@dataclass(frozen=True)
class BasisPlan:
    """The basis a run reduces its day in, and whether the run fits it."""

    basis: str
    fit: bool
    generation: int


def _log(storage: LakeStorage, lake: Lake) -> RecordLog:
    return RecordLog(storage, lake.current_basis())


def current(storage: LakeStorage, lake: Lake) -> tuple[int, dict] | None:
    """(generation, record) of the current basis; None while the lake has none."""
    return _log(storage, lake).latest()


def manifest(storage: LakeStorage, lake: Lake, basis_id: str) -> dict | None:
    """The basis's manifest, or None while it is not (completely) written."""
    uri = basis_files.manifest_uri(lake.basis(basis_id))
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def day_basis(storage: LakeStorage, lake: Lake, dt: date) -> str | None:
    """The basis a published day is in (its manifest's), None without one."""
    uri = lake.manifest(dt)
    return json.loads(storage.read_bytes(uri)).get("basis") if storage.exists(uri) else None


def bases(storage: LakeStorage, lake: Lake) -> list[dict]:
    """Every complete basis of the lake, oldest first, with `current` set on the current one."""
    found = current(storage, lake)
    current_id = found[1]["basis"] if found else None
    names = {name.split("/")[0] for name in storage.list_files(lake.bases())}
    ids = sorted(name for name in names if basis_files.BASIS_ID.fullmatch(name))
    listed = []
    for basis_id in ids:
        document = manifest(storage, lake, basis_id)
        if document is not None:
            listed.append(document | {"current": basis_id == current_id})
    return listed


def plan_for_run(
    storage: LakeStorage,
    lake: Lake,
    dt: date,
    *,
    token: str,
    run_id: str,
    holder_alive: Callable[[str, str], bool],
    now: datetime | None = None,
) -> BasisPlan:
    """Apply the current basis, or reserve (then fit) the lake's next one when there is none
    or the run that reserved it has ended without fitting it. Called under the day's lease."""
    now = now or datetime.now(UTC)
    log = _log(storage, lake)
    found = log.latest()
    if found is not None:
        generation, record = found
        if manifest(storage, lake, record["basis"]) is not None or _fitter_alive(
            storage, lake, record, holder_alive, now
        ):
            return BasisPlan(record["basis"], fit=False, generation=generation)
    generation = found[0] + 1 if found else 1
    reserved = {
        "basis": basis_files.new_basis_id(now),
        "made_at": now.isoformat(timespec="seconds"),
        "fit_by": {"partition": dt.isoformat(), "token": token, "run_id": run_id},
    }
    if log.add(generation, reserved):
        print(f"The lake has no usable basis: this run fits {reserved['basis']} on dt={dt}")
        return BasisPlan(reserved["basis"], fit=True, generation=generation)
    # Another run reserved it first: apply the winner's basis.
    return BasisPlan(log.read(generation)["basis"], fit=False, generation=generation)


def make_current(storage: LakeStorage, lake: Lake, basis_id: str, *, after: int | None) -> int:
    """Make a complete basis current, as the generation after `after` (None: the first).

    Returns the generation; raises when another basis was made current meanwhile."""
    if manifest(storage, lake, basis_id) is None:
        raise ValueError(f"basis {basis_id} is not complete in the lake: it cannot be current")
    generation = (after or 0) + 1
    record = {"basis": basis_id, "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "fit_by": None}  # fmt: skip
    if not _log(storage, lake).add(generation, record):
        raise RuntimeError(
            f"another basis became current (generation {generation}) while {basis_id} was "
            "being made current: nothing changed; run the refit again"
        )
    return generation


def _fitter_alive(storage, lake, record, holder_alive, now) -> bool:
    """Whether the run that reserved the basis may still fit it."""
    fitter = record.get("fit_by")
    if not fitter:
        return False
    found = lease.current(storage, lake, date.fromisoformat(fitter["partition"]))
    if found is None or found[0].token != fitter["token"]:
        return False
    held, released = found
    return lease.why_free(held, released, now, holder_alive) is None


def run_weights(weights: str) -> dict | None:
    """The weights record a run's features will carry, when it is known before the run:
    random weights, or a file on this worker (its digest). None otherwise (the job checks)."""
    if weights == "random":
        return {"source": "random", "sha256": None}
    if weights.startswith("/") and Path(weights).is_file():
        digest = hashlib.sha256()
        with open(weights, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return {"source": weights, "sha256": digest.hexdigest()}
    return None


def check_run_weights(storage: LakeStorage, lake: Lake, basis_id: str, weights: str) -> None:
    """Refuse, before any cluster, a run whose weights are known to differ from the basis's.
    (The PCA step checks every run, with the digest its featurize step recorded.)"""
    fitted = manifest(storage, lake, basis_id)
    expected = run_weights(weights)
    if fitted is None or expected is None or fitted.get("weights") is None:
        return
    basis_files.check_weights(expected, fitted["weights"], basis_id)
