"""The `fruits_features` DAG end to end with the local backend, as `make demo` runs it.

Each scenario stages a folder of photos into a temporary lake and runs `airflow dags test` (what
`devtools.demo` does), on one migrated AIRFLOW_HOME shared by the module, with random
weights and the session's TFLite model cache. The scenarios run in file order, sequentially:

- a: 12 synthetic fruits are featurized, reduced, validated and published;
- b: 15 uploads of which 4 are broken: the error ratio fails validation, nothing is published;
- d: b's run, on another date, leaves every file of a's date byte-identical;
- e: a's date run again with its uploads gone: the run skips, a's publication stays untouched;
- c: an empty upload folder, through `demo.main`: the run skips, writes nothing, starts no cluster.

After each run no process of its cluster (nor of its Airflow) is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from devtools import demo, staging, throwaway
from devtools.samples import make_synthetic_fruits
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.lake import Lake
from tests.support.corpora import make_bad_input_corpus
from tests.support.dag_harness import (
    ClusterStateDirs,
    cluster_ids,
    cluster_leftovers,
    leftover_processes,
    migrate_demo_home,
    terminate_clusters,
    tree_digest,
)
from tests.support.states import SKIPPED_RUN, expected_states

pytestmark = pytest.mark.slow

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "fruits_features"
D1, D2, D_EMPTY = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
# The broken uploads of scenario b, from the bad-input corpus, and the reason each must get.
BROKEN = {
    "Apple Braeburn/zero_bytes.jpg": "empty",
    "Apple Braeburn/truncated.jpg": "truncated",
    "Apple Braeburn/not_an_image.jpg": "not an image",
    "Banana/decompression_bomb.png": "decompression bomb",
}
# Every dataset of a date partition, inputs included.
DATASETS = ("raw", "features", "errors", "reduced", "reports")
PART = re.compile(r"part-\d+-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
OUTPUTS = ("features", "errors", "reduced", "models", "reports")


@dataclass(frozen=True)
class Run:
    dt: date
    code: int
    output: str  # `airflow dags test`'s stdout and stderr
    summary: str  # what `make demo` prints at the end
    dag_run_state: str
    task_states: dict[str, str]
    state_dir: Path
    clusters: list[str]  # ids of the local clusters the run created


@dataclass(frozen=True)
class Env(ClusterStateDirs):
    home: Path
    lake: Lake
    tmp: Path


def dag_runs(home: Path) -> dict[str, str]:
    with sqlite3.connect(home / "airflow.db") as db:
        return dict(db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ?", (DAG_ID,)))


def task_states(home: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (DAG_ID, run_id),
        )
        return dict(rows)


def file_kinds(folder: Path) -> set[str]:
    """File names with Spark's part numbers and write UUIDs left out, and without Hadoop's
    checksum files (a manifest rewritten at publication drops its stale one)."""
    return {
        PART.sub("part", path.name)
        for path in folder.rglob("*")
        if path.is_file() and not path.name.endswith(".crc")
    }


def partition_digest(lake: Lake, dt: date) -> dict[str, dict[str, str]]:
    digest = {}
    for dataset in DATASETS:
        folder = Path(lake.root) / dataset / f"dt={dt.isoformat()}"
        digest[dataset] = tree_digest(folder)
    return digest


def staged_run(lake: Lake, dt: date) -> str:
    """The token of the one run whose outputs are staged for `dt`."""
    (folder,) = Path(lake.staging(dt)).iterdir()
    return folder.name


def run_partition(env: Env, scenario: str, raw: Path | None, dt: date) -> Run:
    """What `make demo` does, on the module's AIRFLOW_HOME: stage RAW (None: the partition is
    already in place), `airflow dags test`, summary."""
    state_dir = env.state_dir(scenario)
    images = staging.stage_raw(str(raw), Path(env.lake.raw(dt))) if raw else "already in the lake"
    airflow_env = throwaway.airflow_env(env.home, Path(env.lake.root), "random") | {
        "FRUITS_LOCAL_STATE_DIR": str(state_dir),
        # A safety net: a cluster nobody terminates stops by itself.
        "FRUITS_LOCAL_IDLE_TIMEOUT_S": "600",
    }
    assert airflow_env["FRUITS_MODEL_CACHE"] == os.environ["FRUITS_MODEL_CACHE"]
    runs_before = dag_runs(env.home)
    started = time.monotonic()
    test = subprocess.run(
        [AIRFLOW, "dags", "test", DAG_ID, "--conf", json.dumps({"partition_date": str(dt)})],
        env=airflow_env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    seconds = time.monotonic() - started
    summary = demo.summary(env.lake, dt, "random", images, seconds, test.returncode)
    print(f"\n--- dt={dt}: exit {test.returncode} after {seconds:.0f} s\n{summary}")
    new_runs = {k: v for k, v in dag_runs(env.home).items() if k not in runs_before}
    assert len(new_runs) == 1, (new_runs, test.stdout[-5000:], test.stderr[-5000:])
    [(run_id, state)] = new_runs.items()
    return Run(
        dt=dt,
        code=test.returncode,
        output=test.stdout + test.stderr,
        summary=summary,
        dag_run_state=state,
        task_states=task_states(env.home, run_id),
        state_dir=state_dir,
        clusters=cluster_ids(state_dir),
    )


def explain(run: Run) -> str:
    """Context for a failed assertion: the run's states and the end of its log."""
    return f"{run.dag_run_state} {run.task_states}\n{run.summary}\n{run.output[-6000:]}"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    """One AIRFLOW_HOME (SQLite, migrated once) and one lake for every scenario."""
    tmp = tmp_path_factory.mktemp("dag-local")
    home = tmp / "airflow-home"
    home.mkdir()
    lake = Lake(str(tmp / "lake"))
    migrate_demo_home(home, lake)
    yield Env(home=home, lake=lake, tmp=tmp)
    # Whatever failed, leave no cluster running.
    terminate_clusters(tmp)


@pytest.fixture(scope="module")
def published(env) -> Run:
    """Scenario a: 12 synthetic fruits (3 classes x 4) for D1."""
    raw = env.tmp / "uploads-a"
    assert sum(make_synthetic_fruits(raw, n_classes=3, per_class=4, seed=0).values()) == 12
    return run_partition(env, "a", raw, D1)


@pytest.fixture(scope="module")
def rejected(env, published) -> tuple[Run, dict, dict]:
    """Scenario b (and d): 11 good and 4 broken uploads for D2, after D1 was published.

    Returns the run and the digests of D1's files before and after it.
    """
    raw = env.tmp / "uploads-b"
    make_synthetic_fruits(raw, n_classes=3, per_class=4, seed=2)
    (sorted(raw.rglob("*.jpg"))[-1]).unlink()
    corpus = env.tmp / "corpus"
    make_bad_input_corpus(corpus)
    for relpath in BROKEN:
        (raw / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / relpath, raw / relpath)
    assert sum(1 for p in raw.rglob("*") if p.is_file()) == 15
    before = partition_digest(env.lake, D1)
    run = run_partition(env, "b", raw, D2)
    return run, before, partition_digest(env.lake, D1)


def test_a_folder_of_fruits_is_published(env, published):
    run, lake = published, env.lake
    assert run.code == 0, explain(run)
    assert run.dag_run_state == "success", explain(run)
    assert run.task_states == expected_states(), explain(run)
    assert Path(lake.success_marker(D1)).is_file()

    manifest = json.loads(Path(lake.manifest(D1)).read_text())
    k = manifest["k"]
    assert 1 <= k <= 12
    reduced = pq.read_table(lake.reduced(D1)).to_pandas()
    assert len(reduced) == 12
    assert sorted(len(vector) for vector in reduced["pca_features"]) == [k] * 12
    assert pq.read_table(lake.features(D1)).num_rows == 12
    assert pq.read_table(lake.errors(D1)).num_rows == 0
    marker = json.loads(Path(lake.success_marker(D1)).read_text())
    assert marker == {
        "partition": "2026-03-01",
        "images_found": 12,
        "featurized": 12,
        "errors": 0,
        "reduced": 12,
        "basis": manifest["basis"],
        "k": k,
        "explained_variance": manifest["explained_variance"],
        "error_ratio": 0.0,
    }
    assert manifest["mode"] == "fit"  # the first day of an empty lake fits its basis
    assert set(reduced["basis"]) == {manifest["basis"]}
    assert f"result:   PUBLISHED dt={D1} in " in run.summary
    assert f"basis:    {manifest['basis']} (fit by this run; fit on dt={D1}" in run.summary
    assert f"featurized 12, errors 0 (see {lake.errors(D1)}), k = {k}, " in run.summary
    assert "raw:      12 files under" in run.summary


def test_a_leaves_no_process_and_one_terminated_cluster(env, published):
    run = published
    assert len(run.clusters) == 1, run.clusters
    cluster = local_cluster.describe_cluster(run.state_dir, run.clusters[0])
    assert (cluster["state"], cluster["reason"]) == ("TERMINATED", "user request")
    assert cluster_leftovers(run.state_dir, env.home) == []


def test_b_too_many_broken_uploads_fail_the_run(env, rejected):
    run, _, _ = rejected
    lake = env.lake
    # `airflow dags test` exits non-zero when the run fails (Airflow 3.3: SystemExit).
    assert run.code == 1, explain(run)
    assert "DagRun failed" in run.output
    assert run.dag_run_state == "failed"
    assert run.task_states == expected_states(
        validate="failed", publish="upstream_failed"
    ), explain(run)
    assert not Path(lake.success_marker(D2)).exists()
    message = f"partition dt={D2} is not valid: error ratio 4/15 = 26.67% exceeds the maximum 5.00%"
    assert message in run.output, explain(run)
    assert f"result:   FAILED dt={D2} (exit 1); not published." in run.summary

    # The rejected run's outputs stay in its staging folder, for inspection; none is published.
    run_token = staged_run(lake, D2)
    for dataset in ("features", "errors", "reduced"):
        assert not (Path(lake.root) / dataset / f"dt={D2}").exists(), dataset
    errors = pq.read_table(lake.errors(D2, run_token)).to_pandas()
    root = f"file:{lake.raw(D2)}/"
    assert all(path.startswith(root) for path in errors["path"]), list(errors["path"])
    reasons = {
        path[len(root) :]: error
        for path, error in zip(errors["path"], errors["error"], strict=True)
    }
    assert set(reasons) == set(BROKEN)
    for relpath, reason in BROKEN.items():
        assert reason in reasons[relpath].lower(), (relpath, reasons[relpath])
    assert dict(zip(errors["path"].str[len(root) :], errors["label"], strict=True)) == {
        relpath: relpath.split("/")[0] for relpath in BROKEN
    }
    assert pq.read_table(lake.features(D2, run_token)).num_rows == 11
    assert pq.read_table(lake.reduced(D2, run_token)).num_rows == 11


def test_b_leaves_no_process(env, rejected):
    run, _, _ = rejected
    assert len(run.clusters) == 1, run.clusters
    cluster = local_cluster.describe_cluster(run.state_dir, run.clusters[0])
    assert cluster["state"] == "TERMINATED"
    assert cluster_leftovers(run.state_dir, env.home) == []


def test_d_another_date_leaves_the_published_one_byte_identical(env, rejected):
    run, before, after = rejected
    assert run.code == 1, explain(run)
    # b ran both jobs: it staged every dataset of D2 as a's run published D1's, but _SUCCESS.
    run_token = staged_run(env.lake, D2)
    published = [(env.lake.features, "features"), (env.lake.errors, "errors"),
                 (env.lake.reduced, "reduced"), (env.lake.report, "reports")]  # fmt: skip
    layout = {
        D1: {name: file_kinds(Path(path(D1))) for path, name in published},
        D2: {name: file_kinds(Path(path(D2, run_token))) for path, name in published},
    }
    assert layout[D2] == layout[D1] | {"reports": layout[D1]["reports"] - {"_SUCCESS"}}
    assert all(before.values())
    assert after == before
    assert "_SUCCESS" in before["reports"]


def test_e_a_published_date_rerun_without_uploads_stays_published(env, rejected):
    """A later run of D1 whose upload folder is now empty skips and changes nothing of D1."""
    before = partition_digest(env.lake, D1)
    # The day's uploads are gone (make demo refuses an empty RAW, so empty it here).
    shutil.rmtree(env.lake.raw(D1))
    Path(env.lake.raw(D1)).mkdir()
    run = run_partition(env, "e", None, D1)
    assert run.code == 0, explain(run)
    assert run.dag_run_state == "success"
    assert run.task_states == SKIPPED_RUN, explain(run)
    assert "No uploads for this day" in run.output
    assert f"result:   SKIPPED dt={D1}: no uploads, nothing written" in run.summary
    assert f"note:     an earlier run's publication of dt={D1} stays: " in run.summary
    assert "PUBLISHED" not in run.summary
    after = partition_digest(env.lake, D1)
    assert after == before | {"raw": {}}
    assert not run.state_dir.exists()
    assert leftover_processes(run.state_dir, env.home) == []


def test_c_an_empty_upload_folder_is_refused_before_anything(tmp_path, monkeypatch, capfd):
    """Through `demo.main`: a RAW with no image is a parameter error; nothing is started."""
    raw = tmp_path / "uploads-empty"
    raw.mkdir()
    lake = Lake(str(tmp_path / "lake"))
    homes: list[Path] = []
    airflow_env = throwaway.airflow_env

    def recorded(home: Path, lake_root: Path, weights: str) -> dict[str, str]:
        homes.append(home)
        return airflow_env(home, lake_root, weights)

    monkeypatch.setattr(throwaway, "airflow_env", recorded)
    argv = ["--raw", str(raw), "--date", str(D_EMPTY), "--lake", lake.root, "--weights", "random"]
    code = demo.main(argv)
    out, err = capfd.readouterr()

    assert code == 2, out[-3000:] + err[-3000:]
    assert f"RAW '{raw}' holds no images" in err
    assert not Path(lake.root).exists() or list(Path(lake.root).iterdir()) == []
    assert homes == []
