"""Every day in one feature space (issues R2 2/5 and 3/5): four days, four DAG runs, one basis;
then refits of the basis over three of them.

Four days of synthetic fruits (other draws of the same six kinds each day) go through the DAG
with the local backend (`dag.test()`, real Spark clusters, random weights). The first run fits
the lake's basis, the three others apply it. Then `reduced/` reads as one table, and a
classifier trained on three days' reduced vectors keeps its accuracy on the fourth. Then, in this
order on the same lake: a daily run started while a refit holds the lake is refused; a refit
dying in the middle of its switch leaves every day as it was; a refit over three days moves all
four into a basis equal to numpy's PCA of those three days, and the classifier still transfers.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from sklearn.linear_model import LogisticRegression

from devtools.samples import make_synthetic_fruits
from fruits_pipeline import basis, lease
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from spark_jobs import basis as basis_files
from tests.support.dag_harness import (
    REFIT_DAG_FILE,
    cluster_ids,
    cluster_leftovers,
    load_dag,
    settings_modules_restored,
    tree_digest,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

DAYS = [date(2026, 9, day) for day in (1, 2, 3, 4)]
CLASSES, PER_CLASS = 6, 6


@pytest.fixture(scope="module")
def four_days(airflow_db, tmp_path_factory) -> Iterator[tuple[Lake, Path, list]]:
    from fruits_pipeline.backends.local.cluster import terminate_cluster
    from fruits_pipeline.backends.local.operators import LocalStepSensor  # noqa: F401  (imported early)

    tmp = tmp_path_factory.mktemp("one-space")
    lake, state_dir = Lake(str(tmp / "lake")), tmp / "clusters"
    for index, dt in enumerate(DAYS):
        make_synthetic_fruits(
            Path(lake.raw(dt)), n_classes=CLASSES, per_class=PER_CLASS, seed=100 + index
        )
    env = {
        "FRUITS_BACKEND": "local",
        "FRUITS_LAKE_ROOT": lake.root,
        "FRUITS_LOCAL_STATE_DIR": str(state_dir),
        "FRUITS_LOCAL_IDLE_TIMEOUT_S": "300",
        "FRUITS_WEIGHTS": "random",
    }
    runs = []
    # The environment stays for the whole module: the refit tests run DAGs on the same lake.
    with pytest.MonkeyPatch.context() as patch, settings_modules_restored():
        for name in [n for n in os.environ if n.startswith("FRUITS_")]:
            if name != "FRUITS_MODEL_CACHE":
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        hours = itertools.count(1)
        for dt in DAYS:
            dag = load_dag()
            for task_id in ("watch_featurize", "watch_pca"):
                dag.get_task(task_id).poke_interval = 0.5
            runs.append(
                dag.test(
                    logical_date=datetime(2026, 9, 10, next(hours), tzinfo=UTC),
                    run_conf={"partition_date": dt.isoformat()},
                )
            )
        yield lake, state_dir, runs
        for cluster_id in cluster_ids(state_dir):
            terminate_cluster(state_dir, cluster_id, reason="test teardown")


def test_four_days_are_published_in_one_basis_and_one_k(four_days):
    lake, state_dir, runs = four_days
    assert [run.state for run in runs] == ["success"] * 4
    manifests = [json.loads(Path(lake.manifest(dt)).read_text()) for dt in DAYS]
    assert [m["mode"] for m in manifests] == ["fit", "apply", "apply", "apply"]
    assert len({m["basis"] for m in manifests}) == 1
    assert len({m["k"] for m in manifests}) == 1
    (only,) = basis.bases(LocalLakeStorage(), lake)
    assert only["current"] and only["basis"] == manifests[0]["basis"]
    assert only["fit_on"] == {"days": [DAYS[0].isoformat()], "rows": CLASSES * PER_CLASS}
    # The fit figure: on its own day the basis captures what it explained at fit; every day
    # says both.
    assert manifests[0]["explained_variance"] == pytest.approx(
        manifests[0]["explained_variance_at_fit"], abs=1e-6
    )
    for manifest in manifests:
        assert 0 < manifest["explained_variance"] <= 1
        assert manifest["explained_variance_at_fit"] == only["explained_variance"]
    assert cluster_leftovers(state_dir) == []


def test_reduced_reads_as_one_table_and_a_classifier_transfers_across_days(four_days):
    lake, _, _ = four_days
    table = ds.dataset(f"{lake.root}/reduced", partitioning="hive").to_table()
    assert {"dt", "path", "label", "pca_features", "basis"} <= set(table.column_names)
    assert table.num_rows == len(DAYS) * CLASSES * PER_CLASS
    assert sorted(set(table.column("dt").to_pylist())) == [str(dt) for dt in DAYS]
    assert len(set(table.column("basis").to_pylist())) == 1
    assert table.schema.field("pca_features").type == pa.list_(pa.float32())
    (k,) = {json.loads(Path(lake.manifest(dt)).read_text())["k"] for dt in DAYS}
    assert set(pc.list_value_length(table.column("pca_features")).to_pylist()) == {k}
    vectors = np.stack(table.column("pca_features").to_numpy(zero_copy_only=False))
    labels = np.asarray(table.column("label").to_pylist())
    days = np.asarray(table.column("dt").to_pylist())
    accuracies = []
    for held_out in map(str, DAYS):
        train = days != held_out
        classifier = LogisticRegression(max_iter=2000).fit(vectors[train], labels[train])
        accuracies.append(classifier.score(vectors[~train], labels[~train]))
    print(f"\ncross-day accuracy, each day held out: {accuracies}")
    assert min(accuracies) >= 0.9, accuracies


# --- refits of the basis (fruits_pca_basis) ---------------------------------------------------

REFIT_TOKEN = "20260911T000000Z-0000abcd"  # noqa: S105 (a run token)
FIFTH_DAY = date(2026, 9, 5)


def run_refit(days: list[date], hour: int, **conf):
    dag = load_dag(REFIT_DAG_FILE)
    for task_id in ("watch_fit", "watch_reproject"):
        dag.get_task(task_id).poke_interval = 0.5
    return dag.test(
        logical_date=datetime(2026, 9, 12, hour, tzinfo=UTC),
        run_conf={"from_date": days[0].isoformat(), "to_date": days[-1].isoformat(), **conf},
    )


def lake_state(lake: Lake) -> dict[str, dict[str, str]]:
    root = Path(lake.root)
    return {
        name: tree_digest(root / name) for name in ("reduced", "reports", "models/current-basis")
    }


def test_a_daily_run_started_during_a_refit_fails_at_once_and_touches_nothing(four_days):
    lake, state_dir, _ = four_days
    make_synthetic_fruits(Path(lake.raw(FIFTH_DAY)), n_classes=CLASSES, per_class=2, seed=7)
    before, clusters_before = lake_state(lake), cluster_ids(state_dir)
    storage = LocalLakeStorage()
    # A refit in flight, as its take_leases task leaves the lake.
    lease.acquire(
        storage, lake, lease.REFIT,
        lease.RunIdentity("fruits_pca_basis", "manual__refit-in-flight", REFIT_TOKEN),
        lease.LeaseTerms(lambda *_: True, 900, 3600),
    )  # fmt: skip
    try:
        dag = load_dag()
        run = dag.test(
            logical_date=datetime(2026, 9, 11, 1, tzinfo=UTC),
            run_conf={"partition_date": FIFTH_DAY.isoformat()},
        )
    finally:
        lease.release(storage, lake, lease.REFIT, REFIT_TOKEN)
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["prepare_run"] == "failed" and states["create_cluster"] != "success"
    assert cluster_ids(state_dir) == clusters_before
    assert lake_state(lake) == before
    assert not Path(lake.features(FIFTH_DAY)).exists()
    # It gave its day back: the day can be run once the refit has ended.
    assert lease.holder(storage, lake, FIFTH_DAY, lambda *_: True) is None


def test_a_refit_dying_in_its_switch_leaves_every_day_and_the_basis_as_they_were(
    four_days, monkeypatch
):
    lake, state_dir, _ = four_days
    storage = LocalLakeStorage()
    before = lake_state(lake)
    current_before = basis.current(storage, lake)
    moves = itertools.count()
    replace_folder = LocalLakeStorage.replace_folder

    def dies_on_the_third_move(self, source, target):
        if next(moves) == 2:  # the first day moved, the second half-moved
            raise OSError("the Airflow worker died")
        replace_folder(self, source, target)

    monkeypatch.setattr(LocalLakeStorage, "replace_folder", dies_on_the_third_move)
    run = run_refit(DAYS[:3], hour=1)
    monkeypatch.undo()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["switch_basis"] == "failed"
    assert states["terminate_cluster"] == states["restore_and_release"] == "success"
    assert lake_state(lake) == before
    assert basis.current(storage, lake) == current_before
    assert [b["basis"] for b in basis.bases(storage, lake)] == [current_before[1]["basis"]]
    assert lease.holder(storage, lake, lease.REFIT, lambda *_: True) is None
    assert cluster_leftovers(state_dir) == []


def test_a_refit_over_three_days_moves_every_day_into_numpys_basis(four_days):
    lake, state_dir, _ = four_days
    storage = LocalLakeStorage()
    old = basis.current(storage, lake)[1]["basis"]
    run = run_refit(DAYS[:3], hour=2, variance=0.9)
    assert run.state == "success"
    new = basis.current(storage, lake)[1]["basis"]
    assert new != old
    listed = {b["basis"]: b for b in basis.bases(storage, lake)}
    assert set(listed) == {old, new} and listed[new]["current"]  # the old one is kept
    fitted = listed[new]
    assert fitted["fit_on"] == {
        "days": [dt.isoformat() for dt in DAYS[:3]], "rows": 3 * CLASSES * PER_CLASS
    }
    # Every published day moved: one basis, one k, manifests and markers say so.
    for dt in DAYS:
        manifest = json.loads(Path(lake.manifest(dt)).read_text())
        assert (manifest["basis"], manifest["k"], manifest["mode"]) == (
            new, fitted["k"], "reprojected"
        )
        assert json.loads(Path(lake.success_marker(dt)).read_text())["basis"] == new
    table = ds.dataset(lake.table("reduced"), partitioning="hive").to_table()
    assert set(table.column("basis").to_pylist()) == {new}
    assert set(pc.list_value_length(table.column("pca_features")).to_pylist()) == {fitted["k"]}
    assert table.num_rows == len(DAYS) * CLASSES * PER_CLASS
    # The basis equals numpy's PCA of the three days' features: k, explained variance, axes.
    features = ds.dataset(lake.table("features"), partitioning="hive").to_table()
    days = np.asarray([str(dt) for dt in features.column("dt").to_pylist()])
    rows = np.stack(features.column("features").to_numpy(zero_copy_only=False))
    rows = rows[np.isin(days, [str(dt) for dt in DAYS[:3]])].astype(np.float64)
    scale = rows.std(axis=0)
    scale[scale == 0] = 1.0
    standardized = (rows - rows.mean(axis=0)) / scale
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(standardized, rowvar=False))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    k = int(np.searchsorted(cumulative, 0.9 - 1e-12) + 1)
    assert fitted["k"] == k
    assert fitted["explained_variance"] == pytest.approx(cumulative[k - 1], abs=1e-4)
    model = json.loads(Path(basis_files.model_uri(lake.basis(new))).read_text())
    components = np.asarray(model["components"])
    cosines = np.abs(np.sum(components[:3] * eigenvectors[:, :3].T, axis=1))
    np.testing.assert_allclose(cosines, 1.0, atol=1e-4)
    # A classifier trained on three days still transfers to the fourth.
    vectors = np.stack(table.column("pca_features").to_numpy(zero_copy_only=False))
    labels = np.asarray(table.column("label").to_pylist())
    reduced_days = np.asarray([str(dt) for dt in table.column("dt").to_pylist()])
    held_out = reduced_days == str(DAYS[3])
    classifier = LogisticRegression(max_iter=2000).fit(vectors[~held_out], labels[~held_out])
    assert classifier.score(vectors[held_out], labels[held_out]) >= 0.9
    # Nothing left: no staging of the refit, no lease held, no process.
    assert not list((Path(lake.root) / "staging" / "refits").glob("*/*"))
    assert lease.holder(storage, lake, lease.REFIT, lambda *_: True) is None
    assert cluster_leftovers(state_dir) == []
