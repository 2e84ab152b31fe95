"""Every day in one feature space (issue R2 2/5): four days, four DAG runs, one basis.

Four days of synthetic fruits (other draws of the same six kinds each day) go through the DAG
with the local backend (`dag.test()`, real Spark clusters, random weights). The first run fits
the lake's basis, the three others apply it. Then `reduced/` reads as one table, and a
classifier trained on three days' reduced vectors keeps its accuracy on the fourth.
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

from fruits_pipeline import basis
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from fruits_pipeline.samples import make_synthetic_fruits
from tests import dag_harness
from tests.dag_harness import (
    cluster_ids,
    cluster_leftovers,
    load_dag,
    settings_modules_restored,
)

airflow_db = dag_harness.airflow_db  # fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

DAYS = [date(2026, 9, day) for day in (1, 2, 3, 4)]
CLASSES, PER_CLASS = 6, 6


@pytest.fixture(scope="module")
def four_days(airflow_db, tmp_path_factory) -> Iterator[tuple[Lake, Path, list]]:
    from fruits_pipeline.local_cluster import terminate_cluster
    from fruits_pipeline.local_operators import LocalStepSensor  # noqa: F401  (imported early)

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
