"""Failure modes, reruns and concurrency on this machine (issue 5/5).

- Input validation: what `tests/test_params.py` did not cover yet (unit).
- Bad inputs, concurrency, reruns: the real featurize and PCA jobs, with the command lines the
  DAG gives them, on two date partitions at once in one local Spark session (two threads).
- Failures: the local backend's cluster and step runner for real, through `dag.test()` in this
  process (tasks run here, the cluster's processes are detached as in production); after each,
  no process of the cluster is left.

Covered elsewhere, not repeated: the step runner's death at step level
(`tests/test_local_backend.py::test_killed_runner_fails_its_step_and_stops_it`), a forgotten
cluster ending by itself (`::test_idle_timeout_terminates_the_cluster`), validation failing a
whole local run (`tests/test_dag_local.py::test_b_too_many_broken_uploads_fail_the_run`).
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from devtools.samples import make_synthetic_fruits
from fruits_pipeline import lease, steps, validation
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from fruits_pipeline.params import validate_params
from spark_jobs.basis import new_basis_id
from tests.support.corpora import BAD_INPUT_OUTCOMES, make_bad_input_corpus
from tests.support.dag_harness import (
    cluster_ids,
    cluster_leftovers,
    load_dag,
    settings_modules_restored,
    tree_digest,
)
from tests.support.processes import SCRIPTS, is_gone, wait_for
from tests.support.states import FEATURIZE_FAILED, task_states

S3_LAKE = Lake("s3://fruits-lake/prod")


# --- input validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"partition_date": "2026-01-02/../../etc"},
            "partition_date must be a date written YYYY-MM-DD, got '2026-01-02/../../etc'",
        ),
        ({"partition_date": "2026-01-02\n"}, "YYYY-MM-DD, got '2026-01-02\\n'"),
        ({"partition_date": "/2026-01-02"}, "YYYY-MM-DD, got '/2026-01-02'"),
        (
            {"weights": "s3a://other-bucket/w.h5"},
            "weights URI 's3a://other-bucket/w.h5' is outside the lake 's3://fruits-lake/prod'",
        ),
        (
            {"weights": "s3://fruits-lake/prod/./w.h5"},
            "weights URI 's3://fruits-lake/prod/./w.h5' is outside the lake",
        ),
        (
            {"weights": "/home/airflow/.aws/credentials"},
            "a weights path must name a Keras .h5 file, got '/home/airflow/.aws/credentials'",
        ),
        ({"variance": math.inf}, "variance must be in (0, 1], got inf"),
        ({"variance": -0.5}, "variance must be in (0, 1], got -0.5"),
        ({"max_error_ratio": math.nan}, "max_error_ratio must be in [0, 1], got nan"),
        ({"k": "5"}, "k must be an integer from 1 to 1280, got '5'"),
    ],
    ids=[
        "date-then-dotdot",
        "date-newline",
        "date-absolute",
        "s3a-outside-lake",
        "dot-segment",
        "worker-file",
        "variance-inf",
        "variance-negative",
        "ratio-nan",
        "k-string",
    ],
)
def test_params_refuse_what_test_params_did_not_try(raw, message):
    with pytest.raises(ValueError) as refused:
        validate_params(raw, S3_LAKE)
    assert message in str(refused.value)


# --- two partitions at once: the real jobs ---------------------------------------------------

D_EARLIER, D_A, D_B = date(2026, 6, 1), date(2026, 6, 2), date(2026, 6, 3)
DATASETS = ("raw", "features", "errors", "reduced", "reports")
# Every file of the bad-input corpus and exactly what the featurize job makes of it: the
# reason of an error, the label of a processed image.
CORPUS_OUTCOMES = {
    relpath: (outcome, reason if outcome == "error" else label)
    for relpath, (outcome, label, reason) in BAD_INPUT_OUTCOMES.items()
}


@dataclass(frozen=True)
class Processed:
    """One partition's outputs, read once the jobs were done (later tests may rewrite them)."""

    featurize: dict[str, Any]  # the job's manifest
    pca: dict[str, Any]
    features: Any  # pandas frames
    errors: Any
    reduced: Any
    seconds: tuple[float, float]  # when its featurize job started and ended (monotonic)
    run: str  # the run token: its outputs are in that run's staging folder


@dataclass(frozen=True)
class TwoPartitions:
    lake: Lake
    uploads: dict[date, set[str]]  # relative paths of each date's upload folder
    earlier_before: dict[str, dict[str, str]]
    earlier_after: dict[str, dict[str, str]]
    done: dict[date, Processed]


def partition_digest(lake: Lake, dt: date) -> dict[str, dict[str, str]]:
    return {
        dataset: tree_digest(Path(lake.root) / dataset / f"dt={dt.isoformat()}")
        for dataset in DATASETS
    }


def process_partition(spark, lake: Lake, dt: date, start: threading.Barrier | None = None):
    """The DAG's two steps for one date, with the arguments the DAG gives them."""
    from spark_jobs import featurize, pca

    if start is not None:
        start.wait(timeout=60)
    run = lease.new_run_token()
    started = time.monotonic()
    featurized = featurize.run(
        spark, featurize.parse_args(steps.featurize_args(lake, dt, "random", run))
    )
    ended = time.monotonic()
    # Each date bootstraps a basis of its own here: these tests are about one day's rows.
    fit = steps.pca_args(lake, dt, run, basis=new_basis_id(), fit=True, variance=0.95)
    reduced = pca.run(spark, pca.parse_args(fit))
    return Processed(
        featurize=featurized,
        pca=reduced,
        features=pq.read_table(lake.features(dt, run)).to_pandas(),
        errors=pq.read_table(lake.errors(dt, run)).to_pandas(),
        reduced=pq.read_table(lake.reduced(dt, run)).to_pandas(),
        seconds=(started, ended),
        run=run,
    )


def relative_to_raw(lake: Lake, dt: date, path: str) -> str:
    prefix = f"file:{lake.raw(dt)}/"
    assert path.startswith(prefix), (dt, path)
    return path[len(prefix) :]


@pytest.fixture(scope="module")
def two_partitions(spark, tmp_path_factory) -> TwoPartitions:
    """An earlier date processed alone; then dates A (fruits and the bad-input corpus) and B
    (other fruits) processed at the same time, each in its own thread."""
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    make_synthetic_fruits(Path(lake.raw(D_EARLIER)), n_classes=2, per_class=2, size=64, seed=3)
    make_synthetic_fruits(Path(lake.raw(D_A)), n_classes=2, per_class=3, size=64, seed=4)
    make_bad_input_corpus(Path(lake.raw(D_A)))
    make_synthetic_fruits(Path(lake.raw(D_B)), n_classes=3, per_class=2, size=64, seed=5)
    uploads = {
        dt: {
            str(path.relative_to(lake.raw(dt)))
            for path in Path(lake.raw(dt)).rglob("*")
            if path.is_file()
        }
        for dt in (D_A, D_B)
    }
    # The earlier date is published, as a run would leave it (it also warms the model cache).
    earlier = process_partition(spark, lake, D_EARLIER)
    summary = validation.validate_partition(
        LocalLakeStorage(),
        lake,
        D_EARLIER,
        images_found=earlier.featurize["images_found"],
        max_error_ratio=0,
        run=earlier.run,
    )
    validation.publish_partition(LocalLakeStorage(), lake, summary, run=earlier.run)
    before = partition_digest(lake, D_EARLIER)

    start = threading.Barrier(2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {dt: pool.submit(process_partition, spark, lake, dt, start) for dt in (D_A, D_B)}
        done = {dt: future.result(timeout=600) for dt, future in futures.items()}
    # Close the threads' py4j connections now, not at interpreter exit (when logging is gone).
    gc.collect()
    return TwoPartitions(lake, uploads, before, partition_digest(lake, D_EARLIER), done)


@pytest.mark.slow
def test_bad_input_corpus_every_file_has_its_exact_outcome(two_partitions):
    lake, a = two_partitions.lake, two_partitions.done[D_A]
    corpus = {rel for rel in two_partitions.uploads[D_A] if rel in CORPUS_OUTCOMES}
    assert corpus == set(CORPUS_OUTCOMES)  # the corpus is this table, no more, no less
    observed = {rel: ("ignored", None) for rel in corpus}
    for path, label in zip(a.features["path"], a.features["label"], strict=True):
        observed[relative_to_raw(lake, D_A, path)] = ("processed", label)
    for path, error in zip(a.errors["path"], a.errors["error"], strict=True):
        rel = relative_to_raw(lake, D_A, path)
        expected = CORPUS_OUTCOMES.get(rel, ("error", "?"))[1]
        observed[rel] = ("error", expected if expected in error.lower() else error)

    assert {rel: observed[rel] for rel in corpus} == CORPUS_OUTCOMES
    # Airflow counts the uploads as the job finds them: found == featurized + errors.
    found = validation.count_images(LocalLakeStorage(), lake, D_A)
    assert found == a.featurize["images_found"] == len(a.features) + len(a.errors)
    assert (a.featurize["featurized"], a.featurize["errors"]) == (len(a.features), len(a.errors))


@pytest.mark.slow
def test_two_partitions_at_once_touch_only_their_own_outputs(two_partitions):
    lake, done = two_partitions.lake, two_partitions.done
    (a_start, a_end), (b_start, b_end) = done[D_A].seconds, done[D_B].seconds
    assert a_start < b_end and b_start < a_end, "the two featurize jobs should overlap in time"
    for dt, other in ((D_A, D_B), (D_B, D_A)):
        out = done[dt]
        ignored = {rel for rel, (outcome, _) in CORPUS_OUTCOMES.items() if outcome == "ignored"}
        images = two_partitions.uploads[dt] - ignored
        seen = [relative_to_raw(lake, dt, p) for p in [*out.features["path"], *out.errors["path"]]]
        assert sorted(seen) == sorted(images), dt  # its own images, each once, nothing else
        assert sorted(out.reduced["path"]) == sorted(out.features["path"]), dt
        assert {len(v) for v in out.reduced["pca_features"]} == {out.pca["k"]}
        assert out.pca["rows"] == len(out.features)
        # Each job read and wrote its own date's folders only.
        assert out.featurize["input"] == lake.raw(dt)
        assert (out.pca["input"], out.pca["output"]) == (
            lake.features(dt, out.run),
            lake.reduced(dt, out.run),
        )
        assert not any(lake.raw(other) in path for path in out.reduced["path"])
    # The published date was not touched by either: every byte, _SUCCESS included.
    assert "_SUCCESS" in two_partitions.earlier_before["reports"]
    assert two_partitions.earlier_after == two_partitions.earlier_before
    # And the lake holds nothing but the three dates' partitions (and the shared model cache).
    partitions = {
        str(path.relative_to(lake.root))
        for dataset in DATASETS
        for path in (Path(lake.root) / dataset).glob("dt=*")
    }
    assert partitions == {
        *(f"{dataset}/dt={D_EARLIER.isoformat()}" for dataset in DATASETS),
        *(f"raw/dt={dt.isoformat()}" for dt in (D_A, D_B)),
    }
    # The unpublished dates' outputs are in their runs' staging folders, nowhere else.
    assert {
        str(path.relative_to(lake.root)) for path in (Path(lake.root) / "staging").glob("*/*")
    } == {f"staging/dt={dt.isoformat()}/{done[dt].run}" for dt in (D_A, D_B)}


@pytest.mark.slow
def test_pca_rerun_replaces_its_outputs(spark, two_partitions):
    """Rerunning a step over its own outputs: same rows, same vectors, no duplicate, no stale
    part file. (The featurize job's rerun: `tests/test_featurize_job.py::
    test_rerun_replaces_outputs`; `_SUCCESS` withdrawn while a rerun is in flight:
    `tests/test_dag_emr.py::test_rerun_of_a_published_partition_keeps_it_published_until_it_replaces_it`
    and, locally, `test_failed_featurize_step_fails_the_local_run_and_leaves_no_process`.)"""
    from spark_jobs import pca

    lake, first = two_partitions.lake, two_partitions.done[D_B]
    reduced_folder = Path(lake.reduced(D_B, first.run))
    parts_before = sorted(p.name for p in reduced_folder.glob("*.parquet"))

    # The rerun applies the basis the first run fitted, as a later run of the day would.
    apply = steps.pca_args(lake, D_B, first.run, basis=first.pca["basis"], fit=False)
    again = pca.run(spark, pca.parse_args(apply))

    reduced = pq.read_table(reduced_folder).to_pandas()
    assert reduced["path"].is_unique and len(reduced) == len(first.reduced)
    left = first.reduced.sort_values("path").reset_index(drop=True)
    right = reduced.sort_values("path").reset_index(drop=True)
    assert list(left["path"]) == list(right["path"])
    assert list(left["label"]) == list(right["label"])
    np.testing.assert_allclose(
        np.stack(right["pca_features"]), np.stack(left["pca_features"]), atol=1e-5
    )
    assert (again["k"], again["rows"]) == (first.pca["k"], first.pca["rows"])
    parts_after = sorted(p.name for p in reduced_folder.glob("*.parquet"))
    assert len(parts_after) == len(parts_before) and set(parts_after).isdisjoint(parts_before)


# --- failures of the local backend, through the DAG -------------------------------------------


@dataclass
class LocalWorld:
    """The DAG with the local backend in a temporary lake and cluster state folder; sensor
    errors are recorded, and `before_poke[task_id](sensor)` runs before that sensor's first poke."""

    lake: Lake
    state_dir: Path
    sensor_errors: dict[str, str] = field(default_factory=dict)
    before_poke: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    runs: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def run(self, conf: dict[str, Any]):
        dag = load_dag()
        for task_id in ("watch_featurize", "watch_pca"):
            sensor = dag.get_task(task_id)
            sensor.poke_interval, sensor.timeout = 0.5, 300
        logical_date = datetime(2026, 7, 1, next(self.runs), tzinfo=UTC)
        return dag.test(logical_date=logical_date, run_conf=conf)

    def clusters(self) -> list[dict[str, Any]]:
        from fruits_pipeline.backends.local.cluster import describe_cluster

        return [describe_cluster(self.state_dir, cid) for cid in cluster_ids(self.state_dir)]


IDLE_TIMEOUT_S = 90


@pytest.fixture
def local_world(airflow_db, monkeypatch, tmp_path) -> Iterator[LocalWorld]:
    from fruits_pipeline.backends.local.cluster import terminate_cluster
    from fruits_pipeline.backends.local.operators import LocalStepSensor

    for name in [n for n in os.environ if n.startswith("FRUITS_")]:
        if name != "FRUITS_MODEL_CACHE":
            monkeypatch.delenv(name)
    world = LocalWorld(lake=Lake(str(tmp_path / "lake")), state_dir=tmp_path / "clusters")
    monkeypatch.setenv("FRUITS_BACKEND", "local")
    monkeypatch.setenv("FRUITS_LAKE_ROOT", world.lake.root)
    monkeypatch.setenv("FRUITS_LOCAL_STATE_DIR", str(world.state_dir))
    monkeypatch.setenv("FRUITS_LOCAL_IDLE_TIMEOUT_S", str(IDLE_TIMEOUT_S))
    monkeypatch.setenv("FRUITS_WEIGHTS", "random")
    poke = LocalStepSensor.poke

    def watched_poke(sensor, context):
        hook = world.before_poke.pop(sensor.task_id, None)
        if hook is not None:
            hook(sensor)
        try:
            return poke(sensor, context)
        except Exception as err:
            world.sensor_errors[sensor.task_id] = str(err)
            raise

    monkeypatch.setattr(LocalStepSensor, "poke", watched_poke)
    make_synthetic_fruits(Path(world.lake.raw(D_A)), n_classes=1, per_class=2, size=64)
    with settings_modules_restored():
        yield world
    for cluster_id in cluster_ids(world.state_dir):  # whatever failed, nothing keeps running
        terminate_cluster(world.state_dir, cluster_id, reason="test teardown")


def assert_ended_without_a_trace(world: LocalWorld) -> dict[str, Any]:
    """One cluster, terminated by the teardown task; no process of it anywhere."""
    from fruits_pipeline.backends.local.cluster import cluster_processes_alive

    (cluster,) = world.clusters()
    assert (cluster["state"], cluster["reason"]) == ("TERMINATED", "user request")
    # The backstop should Airflow die before its teardown: the cluster stops once idle.
    assert cluster["idle_timeout_s"] == IDLE_TIMEOUT_S
    assert cluster_processes_alive(world.state_dir, cluster["cluster_id"]) == []
    assert cluster_leftovers(world.state_dir) == []
    return cluster


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_failed_featurize_step_fails_the_local_run_and_leaves_no_process(local_world, tmp_path):
    """A rerun of a published date with a weights file that passes the form but not the job:
    the earlier publication stays exactly as it was, the failed run's outputs stay staged."""
    from fruits_pipeline.backends.local.runner import describe_step

    world, storage = local_world, LocalLakeStorage()
    storage.write_bytes(world.lake.success_marker(D_A), b'{"partition": "2026-06-02"}')
    storage.write_bytes(f"{world.lake.reduced(D_A)}/part-earlier.parquet", b"earlier run")
    published = {
        dataset: tree_digest(Path(world.lake.root) / dataset) for dataset in ("reports", "reduced")
    }
    marker_in_flight: list[bool] = []
    world.before_poke["watch_featurize"] = lambda sensor: marker_in_flight.append(
        storage.exists(world.lake.success_marker(D_A))
    )
    corrupt = tmp_path / "corrupt.weights.h5"
    corrupt.write_bytes(b"not an HDF5 file")

    run = world.run({"partition_date": D_A.isoformat(), "weights": str(corrupt)})

    assert run.state == "failed"
    assert task_states(run) == FEATURIZE_FAILED
    cluster = assert_ended_without_a_trace(world)
    steps_file = json.loads((Path(cluster["cluster_dir"]) / "steps.json").read_text())
    featurize, pca = (describe_step(world.state_dir, cluster["cluster_id"], s["step_id"])
                      for s in steps_file)  # fmt: skip
    error = world.sensor_errors["watch_featurize"]
    assert error.startswith(
        f"step featurize dt={D_A} ({featurize['step_id']}) FAILED: spark-submit failed "
        "(exit code 1):\nTraceback (most recent call last):"
    ), error
    assert f"WeightsUnavailable: --weights {corrupt}: not MobileNetV2" in error
    assert error.endswith(f"; log: {featurize['log_path']}")
    assert (pca["state"], pca["reason"]) == (
        "CANCELLED",
        f"cancelled after step {featurize['step_id']} failed",
    )
    assert pca["started_at"] is None
    # The earlier publication stayed published while the run ran, and after it failed.
    assert marker_in_flight == [True]
    assert {
        dataset: tree_digest(Path(world.lake.root) / dataset) for dataset in ("reports", "reduced")
    } == published
    assert lease.current(storage, world.lake, D_A)[1] is True  # the lease was given back


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_dead_step_runner_fails_the_sensor_and_the_teardown_leaves_no_process(local_world):
    from fruits_pipeline.backends.local.cluster import describe_cluster
    from fruits_pipeline.backends.local.runner import describe_step

    world = local_world
    killed: dict[str, Any] = {}

    def kill_the_runner(sensor) -> None:
        """Once featurize's spark-submit runs, SIGKILL the runner that watches it."""

        def running():
            step = describe_step(world.state_dir, sensor.job_flow_id, sensor.step_id)
            return step["state"] == "RUNNING" and step["process"] and step

        step = wait_for(running, 60, "a running featurize step")
        cluster = describe_cluster(world.state_dir, sensor.job_flow_id)
        runner = psutil.Process(cluster["processes"]["runner"]["pid"])
        killed.update(step=step, submit_pid=step["process"]["pid"])
        runner.send_signal(signal.SIGKILL)
        wait_for(lambda: is_gone(runner.pid), 10, "the runner's end")

    world.before_poke["watch_featurize"] = kill_the_runner

    run = world.run({"partition_date": D_A.isoformat()})

    assert run.state == "failed"
    assert task_states(run) == FEATURIZE_FAILED
    step = killed["step"]
    assert world.sensor_errors == {
        "watch_featurize": (
            f"step featurize dt={D_A} ({step['step_id']}) FAILED: step runner died; "
            f"log: {step['log_path']}"
        )
    }
    # The orphaned spark-submit (and the JVM and Python it started) were stopped.
    assert is_gone(killed["submit_pid"])
    assert_ended_without_a_trace(world)
    assert not Path(world.lake.success_marker(D_A)).exists()
    # The lease was given back once the cluster was gone: the next run may take the day.
    assert lease.current(LocalLakeStorage(), world.lake, D_A)[1] is True


# --- a killed sensor, on the local backend --------------------------------------------------


@pytest.mark.slow
def test_killed_local_sensor_cancels_its_step_and_every_process_of_it(tmp_path):
    """LocalStepSensor.on_kill: the step is CANCELLED, its driver and spark-submit are gone;
    the cluster stays for the teardown, as on EMR. (EMR: `tests/test_reliability_emr.py::
    test_killed_step_sensor_cancels_its_step_with_cancel_steps`.)"""
    from airflow.sdk.exceptions import AirflowException

    from fruits_pipeline.backends.local.cluster import (
        cluster_processes_alive,
        describe_cluster,
        start_cluster,
        terminate_cluster,
    )
    from fruits_pipeline.backends.local.operators import LocalStepSensor
    from fruits_pipeline.backends.local.runner import STEP_ENV, add_steps, describe_step
    from fruits_pipeline.procs import marked_processes

    state_dir, script, pid_file = tmp_path / "clusters", tmp_path / "sleep.py", tmp_path / "pid"
    script.write_text(SCRIPTS["sleep.py"])
    cluster_id = start_cluster(state_dir, idle_timeout_s=120, worker_memory="1g")["cluster_id"]
    try:
        args = ["spark-submit", "--driver-memory", "512m", "--conf", "spark.ui.enabled=false"]
        (step_id,) = add_steps(
            state_dir,
            cluster_id,
            [{"name": "featurize", "args": [*args, str(script), str(pid_file)]}],
        )
        driver_pid = int(
            wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 60, "driver")
        )
        submit_pid = describe_step(state_dir, cluster_id, step_id)["process"]["pid"]
        sensor = LocalStepSensor(
            task_id="watch_featurize",
            state_dir=str(state_dir),
            job_flow_id=cluster_id,
            step_id=step_id,
        )
        assert sensor.poke({}) is False

        sensor.on_kill()

        step = describe_step(state_dir, cluster_id, step_id)
        assert (step["state"], step["reason"]) == ("CANCELLED", "cancelled by request")
        assert is_gone(driver_pid) and is_gone(submit_pid)
        assert marked_processes(STEP_ENV, step_id) == []
        with pytest.raises(AirflowException, match="CANCELLED: cancelled by request"):
            sensor.poke({})
        assert describe_cluster(state_dir, cluster_id)["state"] == "WAITING"
    finally:
        terminate_cluster(state_dir, cluster_id)
    assert cluster_processes_alive(state_dir, cluster_id) == []
