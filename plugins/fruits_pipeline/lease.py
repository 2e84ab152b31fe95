"""One writer per day: the lease a run holds on its date partition, and the run's token.

A run acquires the lease of its day in `prepare_run` and releases it in its last teardown. Its
steps write only under `staging/dt=D/<token>/`; the holder alone moves that into place before
`_SUCCESS` (`publish`), after checking it still holds the lease. So a second run of the day, a
killed run's steps still going, or a superseded run can never change a published day nor a day
another run is writing.

The lease is a sequence of records `leases/dt=D/<generation>.json` (generations.py): of two
runs creating the same generation, one wins. The newest generation is the lease. It is free
when its holder released it (`<generation>.released`), when it expired (`expires_at`), or when
its holder is known dead: past `grace_until` (time enough to create a cluster) with no live
cluster carrying its token.
A run finding it held fails at once, naming the holder: waiting would hold a worker slot for a
run that may take an hour, and a rerun is one click once the holder is done.

A refit of the PCA basis (fruits_pca_basis) rewrites every published day, so it holds the lake's
`REFIT` lease (`leases/refit/`) and the lease of every day it moves. A daily run takes its day's
lease and then looks at the refit lease: held, it gives its day back and fails at once. Both
sides take their own lease before looking at the other's, so of a daily run and a refit starting
together at least one sees the other.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from fruits_pipeline.generations import RecordLog
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LakeStorage

RELEASED = ".released"
REFIT = "refit"  # the key of the lake-wide lease a refit holds (the others are days)
LeaseKey = date | str


class LeaseHeld(RuntimeError):
    """The day is being written by another run; the message names it."""


class LeaseLost(RuntimeError):
    """This run no longer holds its day's lease: it must not publish."""


@dataclass(frozen=True)
class RunIdentity:
    """A run that holds leases and clusters: its DAG, its Airflow run id, and its token (which
    names its staging folder and tags its cluster)."""

    dag_id: str
    run_id: str
    token: str


@dataclass(frozen=True)
class LeaseTerms:
    """How a run takes a lease: how it tells that a holder's cluster lives
    (`holder_alive(token, key)`), how long a new holder has to start one, and when a lease
    expires."""

    holder_alive: Callable[[str, str], bool]
    grace_s: float
    ttl_s: float


@dataclass(frozen=True)
class Lease:
    partition: str
    generation: int
    token: str  # the run's token: its staging folder and the tag of its cluster
    dag_id: str
    run_id: str
    acquired_at: str
    grace_until: str  # before this, the holder may not have a cluster yet
    expires_at: str

    def describe(self) -> str:
        return (
            f"run {self.run_id!r} of {self.dag_id} (lease {self.generation}, token {self.token}, "
            f"since {self.acquired_at}, expires {self.expires_at})"
        )


def new_run_token(now: datetime | None = None) -> str:
    """A token unique to one run: sortable by time, safe in paths and cluster tags."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def _log(storage: LakeStorage, lake: Lake, key: LeaseKey) -> RecordLog:
    return RecordLog(storage, lake.lease(key) if isinstance(key, date) else lake.refit_lease())


def key_name(key: LeaseKey) -> str:
    return f"dt={key.isoformat()}" if isinstance(key, date) else "the PCA basis (refit)"


def _key_value(key: LeaseKey) -> str:
    if isinstance(key, date):
        return key.isoformat()
    if key != REFIT:
        raise ValueError(f"a lease is a day's or {REFIT!r}, not {key!r}")
    return key


def current(storage: LakeStorage, lake: Lake, dt: LeaseKey) -> tuple[Lease, bool] | None:
    """The newest lease record of the day and whether it was released; None when none."""
    log = _log(storage, lake, dt)
    latest = log.latest()
    if latest is None:
        return None
    generation, record = latest
    return Lease(**record), log.marked(generation, RELEASED)


def why_free(
    lease: Lease, released: bool, now: datetime, holder_alive: Callable[[str, str], bool]
) -> str | None:
    """Why the lease no longer protects its holder's writes, or None while it does."""
    if released:
        return "released"
    if now >= datetime.fromisoformat(lease.expires_at):
        return "expired"
    if now >= datetime.fromisoformat(lease.grace_until) and not holder_alive(
        lease.token, lease.partition
    ):
        return "its holder has no live cluster"
    return None


def acquire(
    storage: LakeStorage,
    lake: Lake,
    dt: LeaseKey,
    run: RunIdentity,
    terms: LeaseTerms,
    now: datetime | None = None,
) -> Lease:
    """Take the day's (or the refit's) lease for `run`, or raise LeaseHeld naming the
    holder."""
    now = now or datetime.now(UTC)
    found = current(storage, lake, dt)
    taken_over = None
    if found is not None:
        held, released = found
        reason = why_free(held, released, now, terms.holder_alive)
        if reason is None:
            raise LeaseHeld(_held_message(dt, held))
        taken_over = (held, reason)
    lease = Lease(
        partition=_key_value(dt),
        generation=found[0].generation + 1 if found else 1,
        token=run.token,
        dag_id=run.dag_id,
        run_id=run.run_id,
        acquired_at=now.isoformat(),
        grace_until=(now + timedelta(seconds=terms.grace_s)).isoformat(),
        expires_at=(now + timedelta(seconds=terms.ttl_s)).isoformat(),
    )
    log = _log(storage, lake, dt)
    if not log.add(lease.generation, asdict(lease)):
        # Another run created this generation first: it holds the lease.
        raise LeaseHeld(_held_message(dt, Lease(**log.read(lease.generation))))
    if taken_over is not None:
        held, reason = taken_over
        print(f"Took over the lease of {key_name(dt)} from {held.describe()}: {reason}")
    log.prune(below=lease.generation - 1, suffixes=(RELEASED,))
    return lease


def holder(
    storage: LakeStorage,
    lake: Lake,
    key: LeaseKey,
    holder_alive: Callable[[str, str], bool],
    now: datetime | None = None,
) -> Lease | None:
    """The lease of `key` while it protects its holder's writes; None when it is free."""
    found = current(storage, lake, key)
    if found is None or why_free(*found, now or datetime.now(UTC), holder_alive) is not None:
        return None
    return found[0]


def check_no_refit(
    storage: LakeStorage, lake: Lake, dt: date, holder_alive: Callable[[str, str], bool]
) -> None:
    """Called by a daily run holding its day's lease: fail while a refit moves the history."""
    refit = holder(storage, lake, REFIT, holder_alive)
    if refit is not None:
        raise LeaseHeld(
            f"the PCA basis is being refit by {refit.describe()}: while it moves every day "
            f"into the new basis no daily run publishes. This run stops without touching "
            f"dt={dt.isoformat()}; rerun it once the refit has ended."
        )


def check_held(storage: LakeStorage, lake: Lake, dt: LeaseKey, token: str) -> Lease:
    """The run's lease, if it still holds it; else LeaseLost naming who does."""
    found = current(storage, lake, dt)
    if found is None or found[0].token != token or found[1]:
        holding = "nobody" if found is None else found[0].describe()
        raise LeaseLost(
            f"run {token} no longer holds the lease of {key_name(dt)} (now: {holding}); "
            "it publishes nothing"
        )
    return found[0]


def release(storage: LakeStorage, lake: Lake, dt: LeaseKey, token: str) -> bool:
    """Release the run's lease; False (and nothing written) when it is not the holder."""
    found = current(storage, lake, dt)
    if found is None or found[0].token != token:
        return False
    _log(storage, lake, dt).mark(found[0].generation, RELEASED, token.encode())
    return True


def _held_message(dt: LeaseKey, lease: Lease) -> str:
    if not isinstance(dt, date):
        return (
            f"{key_name(dt)} is being written by {lease.describe()}: one refit at a time. "
            "This run stops without touching the lake; rerun it once that run has ended."
        )
    return (
        f"dt={dt.isoformat()} is being written by {lease.describe()}: one run per day at a "
        "time. This run stops without touching the day; rerun it once that run has ended."
    )
