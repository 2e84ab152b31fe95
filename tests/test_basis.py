"""The lake's current PCA basis: which one a run applies, how the first one is made."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, date, datetime, timedelta

import pytest

from fruits_pipeline import basis, lease
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from spark_jobs import basis as basis_files
from tests.support.dag_harness import write_basis

D1, D2 = date(2026, 5, 1), date(2026, 5, 2)
T0 = datetime(2026, 5, 3, 2, 0, tzinfo=UTC)
ALIVE = lambda token, partition: True  # noqa: E731
DEAD = lambda token, partition: False  # noqa: E731


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


STORAGE = LocalLakeStorage()


def hold_day(lake: Lake, dt: date, token: str, now=T0) -> None:
    run = lease.RunIdentity("fruits_features", f"manual__{token}", token)
    lease.acquire(STORAGE, lake, dt, run, lease.LeaseTerms(ALIVE, 600, 3600), now)


def plan(lake: Lake, dt: date, token: str, *, alive=ALIVE, now=T0) -> basis.BasisPlan:
    return basis.plan_for_run(
        STORAGE, lake, dt, token=token, run_id=f"manual__{token}", holder_alive=alive, now=now
    )


A, B, C = "20260503T020000Z-aaaaaaaa", "20260503T020100Z-bbbbbbbb", "20260503T020200Z-cccccccc"


def test_the_first_run_of_an_empty_lake_reserves_and_fits_the_first_basis(lake):
    hold_day(lake, D1, A)
    first = plan(lake, D1, A)
    assert (first.fit, first.generation) == (True, 1)
    assert basis_files.BASIS_ID.fullmatch(first.basis)
    generation, record = basis.current(STORAGE, lake)
    assert (generation, record["basis"]) == (1, first.basis)
    assert record["fit_by"] == {"partition": "2026-05-01", "token": A, "run_id": f"manual__{A}"}


def test_a_day_run_while_the_first_basis_is_being_fit_applies_it(lake):
    hold_day(lake, D1, A)
    first = plan(lake, D1, A)
    second = plan(lake, D2, B, now=T0 + timedelta(seconds=30))
    assert (second.basis, second.fit) == (first.basis, False)
    # Once written, it is applied whatever its fitter does.
    write_basis(STORAGE, lake, first.basis, 5, days=["2026-05-01"], rows=40)
    lease.release(STORAGE, lake, D1, A)
    assert plan(lake, D2, C, alive=DEAD) == basis.BasisPlan(first.basis, False, 1)


def test_a_reserved_basis_whose_fitter_ended_without_it_is_reserved_anew(lake):
    hold_day(lake, D1, A)
    abandoned = plan(lake, D1, A)
    lease.release(STORAGE, lake, D1, A)  # the run failed before its PCA step wrote the basis
    again = plan(lake, D2, B)
    assert again.fit and again.generation == 2 and again.basis != abandoned.basis
    # A fitter past its grace with no live cluster is dead too.
    hold_day(lake, D2, B)
    later = plan(lake, D1, C, alive=DEAD, now=T0 + timedelta(seconds=601))
    assert later.fit and later.generation == 3


def test_of_first_days_racing_on_an_empty_lake_one_fits_the_others_apply_its_basis(lake):
    days = [date(2026, 5, day) for day in range(1, 7)]
    tokens = [f"20260503T0300{i:02d}Z-{i:08x}" for i in range(len(days))]
    for dt, token in zip(days, tokens, strict=True):
        hold_day(lake, dt, token)
    start = threading.Barrier(len(days))
    plans: list[basis.BasisPlan] = []

    def run(dt, token):
        start.wait()
        plans.append(plan(lake, dt, token))

    threads = [threading.Thread(target=run, args=pair) for pair in zip(days, tokens, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(p.fit for p in plans) == 1, plans
    assert len({p.basis for p in plans}) == 1
    assert basis.current(STORAGE, lake)[0] == 1


def test_bases_are_listed_with_the_current_one_marked(lake):
    write_basis(STORAGE, lake, "basis-20260501T020000Z-00000001", 4, days=["2026-05-01"], rows=9)
    write_basis(STORAGE, lake, "basis-20260502T020000Z-00000002", 6, days=["2026-05-02"], rows=9)
    STORAGE.write_bytes(f"{lake.bases()}/notes.txt", b"not a basis")
    assert basis.make_current(STORAGE, lake, "basis-20260502T020000Z-00000002", after=None) == 1
    listed = basis.bases(STORAGE, lake)
    assert [(b["basis"], b["k"], b["current"]) for b in listed] == [
        ("basis-20260501T020000Z-00000001", 4, False),
        ("basis-20260502T020000Z-00000002", 6, True),
    ]


def test_only_a_complete_basis_becomes_current_and_never_over_another(lake):
    with pytest.raises(ValueError, match="not complete"):
        basis.make_current(STORAGE, lake, "basis-20260501T020000Z-00000001", after=None)
    write_basis(STORAGE, lake, "basis-20260501T020000Z-00000001", 4, days=["2026-05-01"], rows=9)
    assert basis.make_current(STORAGE, lake, "basis-20260501T020000Z-00000001", after=None) == 1
    with pytest.raises(RuntimeError, match="another basis became current"):
        basis.make_current(STORAGE, lake, "basis-20260501T020000Z-00000001", after=None)


def test_weights_known_before_the_run_are_checked_against_the_basis(lake, tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert basis.run_weights(str(weights)) == {"source": str(weights), "sha256": digest}
    assert basis.run_weights("random") == {"source": "random", "sha256": None}
    assert basis.run_weights("imagenet") is None  # known only once the job resolves it
    same = "basis-20260501T020000Z-00000001"
    write_basis(STORAGE, lake, same, 4, days=["2026-05-01"], rows=9,
                weights={"source": "/elsewhere/w.h5", "sha256": digest})  # fmt: skip
    basis.check_run_weights(STORAGE, lake, same, str(weights))  # same bytes, other path: fine
    with pytest.raises(basis_files.WeightsMismatch) as refused:
        basis.check_run_weights(STORAGE, lake, same, "random")
    assert "random" in str(refused.value) and "/elsewhere/w.h5" in str(refused.value)
