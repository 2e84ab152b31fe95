"""Refit mechanics without Spark (issue R2 3/5): the form, the leases a refit takes, a daily run
refused during a refit, the switch of every day and the restore of a refit that failed midway.
On a local folder and on S3 (moto). The DAG end to end: tests/test_refit_dag.py."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fruits_pipeline import basis, lease, refit, validation
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from spark_jobs import basis as basis_files

DAYS = [date(2026, 9, day) for day in (1, 2, 3)]
OLD, NEW = "basis-20260901T000000Z-0000000a", "basis-20260910T000000Z-0000000b"
REFIT_RUN, DAILY_RUN = "20260910T060000Z-aaaaaaaa", "20260910T060100Z-bbbbbbbb"
ROWS, K_OLD, K_NEW = 5, 3, 2


def put_parquet(storage, uri: str, k: int, basis_id: str) -> None:
    table = pa.table(
        {
            "path": [f"p{i}" for i in range(ROWS)],
            "label": ["apple"] * ROWS,
            "pca_features": pa.array(
                np.arange(ROWS * k, dtype=np.float32).reshape(ROWS, k).tolist(),
                pa.list_(pa.float32()),
            ),
            "basis": [basis_id] * ROWS,
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes(f"{uri}/part-0.parquet", sink.getvalue().to_pybytes())


def put_basis(storage, lake: Lake, basis_id: str, k: int, days: list[date]) -> None:
    folder = lake.basis(basis_id)
    model = {"mean": [0.0] * 4, "scale": [1.0] * 4, "components": [[1.0] * 4] * k,
             "eigenvalues": [2.0, 1.0, 0.5][:k]}  # fmt: skip
    storage.write_bytes(basis_files.model_uri(folder), json.dumps(model).encode())
    fit_on = {"days": [d.isoformat() for d in days], "rows": ROWS * len(days)}
    manifest = {"basis": basis_id, "k": k, "explained_variance": 0.9, "created_at": "x",
                "fit_on": fit_on}  # fmt: skip
    storage.write_bytes(basis_files.manifest_uri(folder), json.dumps(manifest).encode())


def publish_day(storage, lake: Lake, dt: date) -> None:
    put_parquet(storage, lake.reduced(dt), K_OLD, OLD)
    day = {"basis": OLD, "k": K_OLD, "explained_variance": 0.8, "rows": ROWS}
    storage.write_bytes(lake.manifest(dt), json.dumps(day).encode())
    summary = {"partition": dt.isoformat(), "reduced": ROWS, "basis": OLD, "k": K_OLD,
               "explained_variance": 0.8}  # fmt: skip
    storage.write_bytes(lake.success_marker(dt), json.dumps(summary).encode())


def stage_reprojection(storage, lake: Lake, dt: date) -> None:
    staging = lake.refit_staging(REFIT_RUN)
    put_parquet(storage, f"{staging}/reduced/dt={dt.isoformat()}", K_NEW, NEW)
    day = {"basis": NEW, "k": K_NEW, "explained_variance": 0.7, "rows": ROWS}
    report = f"{staging}/reports/dt={dt.isoformat()}"
    storage.write_bytes(f"{report}/manifest.json", json.dumps(day).encode())


@pytest.fixture
def lake_in_old_basis(lake_and_storage):
    lake, storage = lake_and_storage
    put_basis(storage, lake, OLD, K_OLD, DAYS[:1])
    generation = basis.make_current(storage, lake, OLD, after=None)
    for dt in DAYS:
        publish_day(storage, lake, dt)
    return lake, storage, generation


@pytest.fixture
def staged_refit(lake_in_old_basis):
    """A refit holding its leases, its basis written, every day reprojected, nothing switched;
    with the published days as they were before it."""
    lake, storage, generation = lake_in_old_basis
    before = snapshot(storage, lake)
    take_refit_leases(lake, storage)
    put_basis(storage, lake, NEW, K_NEW, DAYS)
    for dt in DAYS:
        stage_reprojection(storage, lake, dt)
    return lake, storage, generation, before


def snapshot(storage, lake: Lake) -> dict[str, bytes]:
    published = {}
    for dt in DAYS:
        for folder in (lake.reduced(dt), lake.report(dt)):
            for name in storage.list_files(folder):
                published[f"{folder}/{name}"] = storage.read_bytes(f"{folder}/{name}")
    return published


def take_refit_leases(lake, storage, *, alive=lambda token, key: True, wait_s=0.0):
    return refit.take_leases(
        storage, lake, lease.RunIdentity("fruits_pca_basis", "manual__refit", REFIT_RUN),
        lease.LeaseTerms(alive, 600, 3600), wait_s=wait_s, poll_s=0.01,
    )  # fmt: skip


def take_day(lake, storage, dt: date, token: str = DAILY_RUN):
    return lease.acquire(
        storage, lake, dt, lease.RunIdentity("fruits_features", f"manual__{token}", token),
        lease.LeaseTerms(lambda token, key: True, 600, 3600),
    )  # fmt: skip


# --- the form ----------------------------------------------------------------------------------


def test_the_window_is_the_dates_given_or_the_last_days_ending_yesterday():
    today = date(2026, 9, 10)
    given = refit.validate_refit_params({"from_date": "2026-09-01", "to_date": "2026-09-03"}, today)
    assert (given.first, given.last, given.variance, given.k) == (DAYS[0], DAYS[2], 0.95, None)
    last = refit.validate_refit_params({"last_days": 7, "k": 40}, today)
    assert (last.first, last.last, last.variance, last.k) == (
        date(2026, 9, 3), date(2026, 9, 9), None, 40
    )


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"from_date": "2026-09-03", "to_date": "2026-09-01"}, "from_date 2026-09-03 is after"),
        ({"from_date": "2026-09-01"}, "give both from_date and to_date"),
        ({"from_date": "2026-02-30", "to_date": "2026-03-01"}, "from_date must be a date"),
        ({"last_days": 0}, "last_days must be"),
        ({"variance": 1.5}, "variance must be in (0, 1]"),
        ({"k": 0}, "k must be in 1..1280"),
        ({"days": 3}, "unknown params: ['days']"),
    ],
)
def test_a_bad_form_value_is_refused_naming_it(raw, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace("[", r"\[")):
        refit.validate_refit_params(raw, date(2026, 9, 10))


# --- leases ------------------------------------------------------------------------------------


def test_a_refit_holds_the_refit_lease_and_every_days_lease(lake_in_old_basis):
    lake, storage, _ = lake_in_old_basis
    take_day(lake, storage, date(2026, 9, 4))  # a day being written, not yet published...
    lease.release(storage, lake, date(2026, 9, 4), DAILY_RUN)  # ...then done
    days = take_refit_leases(lake, storage)
    assert days == [*DAYS, date(2026, 9, 4)]
    for key in [lease.REFIT, *days]:
        assert lease.check_held(storage, lake, key, REFIT_RUN).token == REFIT_RUN
    refit.release_leases(storage, lake, REFIT_RUN, [lease.REFIT, *days])
    assert all(lease.holder(storage, lake, key, lambda *_: True) is None for key in days)


def test_a_daily_run_started_during_a_refit_fails_at_once_naming_it(lake_in_old_basis):
    lake, storage, _ = lake_in_old_basis
    take_refit_leases(lake, storage)
    new_day = date(2026, 9, 5)
    take_day(lake, storage, new_day)  # a day the refit does not know: the daily run gets it...
    with pytest.raises(lease.LeaseHeld, match="the PCA basis is being refit by run 'manual__"):
        lease.check_no_refit(storage, lake, new_day, lambda *_: True)  # ...and then stops


def test_a_refit_waits_for_a_day_being_written_then_stops_naming_it(lake_in_old_basis):
    lake, storage, _ = lake_in_old_basis
    take_day(lake, storage, DAYS[1])
    with pytest.raises(lease.LeaseHeld, match=r"dt=2026-09-02 is being written by .*waited"):
        take_refit_leases(lake, storage, wait_s=0.05)
    # It holds nothing afterwards: the refit lease and the days it took are released.
    assert lease.holder(storage, lake, lease.REFIT, lambda *_: True) is None
    assert lease.holder(storage, lake, DAYS[0], lambda *_: True) is None
    assert lease.check_held(storage, lake, DAYS[1], DAILY_RUN).token == DAILY_RUN


def test_one_refit_at_a_time(lake_in_old_basis):
    lake, storage, _ = lake_in_old_basis
    take_refit_leases(lake, storage)
    with pytest.raises(lease.LeaseHeld, match="one refit at a time"):
        refit.take_leases(
            storage, lake, lease.RunIdentity("fruits_pca_basis", "manual__2", DAILY_RUN),
            lease.LeaseTerms(lambda *_: True, 600, 3600), wait_s=0,
        )  # fmt: skip


# --- switch and restore ------------------------------------------------------------------------


def test_the_switch_moves_every_day_then_makes_the_basis_current(lake_in_old_basis):
    lake, storage, generation = lake_in_old_basis
    days = take_refit_leases(lake, storage)
    put_basis(storage, lake, NEW, K_NEW, DAYS)
    for dt in DAYS:
        stage_reprojection(storage, lake, dt)
    summary = refit.validate_refit(storage, lake, REFIT_RUN, NEW, DAYS)
    assert summary["rows"] == {dt.isoformat(): ROWS for dt in DAYS}
    refit.switch(storage, lake, REFIT_RUN, basis_id=NEW, days=DAYS, after=generation)
    assert basis.current(storage, lake)[1]["basis"] == NEW
    for dt in DAYS:
        rows, wrong, not_finite, other = validation.reduced_vectors_check(
            storage, lake.reduced(dt), K_NEW, NEW
        )
        assert (rows, wrong, not_finite, other) == (ROWS, 0, 0, 0)
        assert json.loads(storage.read_bytes(lake.success_marker(dt)))["basis"] == NEW
        assert basis.day_basis(storage, lake, dt) == NEW
    # The teardown restores nothing and leaves no staging behind.
    assert refit.restore_unless_current(storage, lake, REFIT_RUN, basis_id=NEW, days=DAYS) == []
    assert storage.list_files(lake.refit_staging(REFIT_RUN)) == []
    refit.release_leases(storage, lake, REFIT_RUN, [lease.REFIT, *days])


def test_a_refit_failing_midway_through_the_switch_leaves_every_day_as_it_was(
    staged_refit, monkeypatch
):
    lake, storage, generation, before = staged_refit
    replaced = []
    original = storage.replace_folder

    def dies_on_the_third_move(source, target):
        if len(replaced) == 2:  # day 1 moved whole, day 2's reduced moved: the worker dies
            raise OSError("worker lost")
        replaced.append(target)
        original(source, target)

    monkeypatch.setattr(storage, "replace_folder", dies_on_the_third_move)
    with pytest.raises(OSError, match="worker lost"):
        refit.switch(storage, lake, REFIT_RUN, basis_id=NEW, days=DAYS, after=generation)
    monkeypatch.setattr(storage, "replace_folder", original)
    assert basis.current(storage, lake)[1]["basis"] == OLD
    restored = refit.restore_unless_current(storage, lake, REFIT_RUN, basis_id=NEW, days=DAYS)
    assert restored == DAYS[:2]
    assert snapshot(storage, lake) == before
    assert storage.list_files(lake.refit_staging(REFIT_RUN)) == []


def test_validation_names_each_problem_of_the_fit_and_the_days(lake_in_old_basis):
    lake, storage, _ = lake_in_old_basis
    put_basis(storage, lake, NEW, K_NEW, DAYS)
    model_uri = basis_files.model_uri(lake.basis(NEW))
    model = json.loads(storage.read_bytes(model_uri))
    model["eigenvalues"][0] = float("nan")
    storage.write_bytes(model_uri, json.dumps(model).encode())
    stage_reprojection(storage, lake, DAYS[0])
    put_parquet(storage, f"{lake.refit_staging(REFIT_RUN)}/reduced/dt=2026-09-02", K_OLD, NEW)
    with pytest.raises(validation.ValidationFailed) as failed:
        refit.validate_refit(storage, lake, REFIT_RUN, NEW, DAYS[:3])
    message = str(failed.value)
    assert "the basis's eigenvalues holds NaN or inf" in message
    assert "dt=2026-09-02: 5 reprojected rows (published: 5), 5 not k=2 long" in message
    assert "dt=2026-09-03: 0 reprojected rows (published: 5)" in message
    assert "dt=2026-09-01" not in message


def test_a_refit_dying_while_it_copies_a_day_restores_only_the_days_it_replaced(
    staged_refit, monkeypatch
):
    lake, storage, generation, before = staged_refit
    copies = []
    copy_folder = type(storage).copy_folder

    def dies_copying_the_second_days_report(self, source, target):
        copies.append(target)
        copy_folder(self, source, target)
        if len(copies) == 4:  # day 2's report copied but not yet marked complete
            raise OSError("worker lost")

    monkeypatch.setattr(type(storage), "copy_folder", dies_copying_the_second_days_report)
    with pytest.raises(OSError, match="worker lost"):
        refit.switch(storage, lake, REFIT_RUN, basis_id=NEW, days=DAYS, after=generation)
    assert basis.day_basis(storage, lake, DAYS[0]) == NEW  # day 1 was replaced
    assert basis.day_basis(storage, lake, DAYS[1]) == OLD  # day 2 never was
    monkeypatch.undo()
    restored = refit.restore_unless_current(storage, lake, REFIT_RUN, basis_id=NEW, days=DAYS)
    assert restored == DAYS[:1]
    assert snapshot(storage, lake) == before
    assert not storage.exists(basis_files.manifest_uri(lake.basis(NEW)))


# --- make refit's parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-date", "2026-09-01"], "give both FROM and TO, or neither"),
        (["--from-date", "2026-09-31", "--to-date", "2026-10-01"], "FROM must be a date"),
        (["--from-date", "2026-09-03", "--to-date", "2026-09-01"], "FROM 2026-09-03 is after"),
        (["--from-date", "2026-09-01", "--to-date", "2026-09-03", "--k", "0"], "K must be in"),
        ([], "give FROM=YYYY-MM-DD and TO=YYYY-MM-DD"),
        (["--from-date", "2026-10-01", "--to-date", "2026-10-03"], "no published day in"),
    ],
)
def test_make_refit_refuses_bad_parameters_in_one_line_starting_nothing(
    tmp_path, capsys, args, message
):
    from devtools import refit as refit_cli

    lake = Lake(str(tmp_path / "lake"))
    storage = LocalLakeStorage()
    for dt in DAYS:
        publish_day(storage, lake, dt)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert refit_cli.main([*args, "--lake", lake.root]) == 2
    error = capsys.readouterr().err
    assert error.startswith("make refit: ") and message in error and error.count("\n") == 1
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_make_refit_refuses_a_lake_that_does_not_exist(tmp_path, capsys):
    from devtools import refit as refit_cli

    args = ["--from-date", "2026-09-01", "--to-date", "2026-09-03"]
    assert refit_cli.main([*args, "--lake", str(tmp_path / "none")]) == 2
    assert "does not exist: run make demo first" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_make_bases_lists_every_basis_marking_the_current_one(tmp_path, capsys):
    from devtools import refit as refit_cli

    lake, storage = Lake(str(tmp_path / "lake")), LocalLakeStorage()
    put_basis(storage, lake, OLD, K_OLD, DAYS[:1])
    basis.make_current(storage, lake, OLD, after=None)
    put_basis(storage, lake, NEW, K_NEW, DAYS)
    assert refit_cli.main(["--list", "--lake", lake.root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"* {OLD}  k=3") and "fit on 2026-09-01, 5 rows" in lines[0]
    assert lines[1].startswith(f"  {NEW}  k=2") and "2026-09-01 .. 2026-09-03 (3 days)" in lines[1]
    assert lines[2] == "(* current)"
