"""The EMR path of `fruits_features` end to end: `dag.test()` against moto, in this process.

Airflow 3's `dag.test()` runs every task in the test's process (`run_task_in_process`), so
`mock_aws` serves S3 and EMR to the provider's operators and sensors. moto never moves EMR steps
on its own: each sensor poke first advances the cluster one transition (`FakeEmr`), and a step
that ends writes what its Spark job would write to the mocked lake.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID

from fruits_pipeline import artifacts, basis, lease
from fruits_pipeline.backends.emr.config import EmrSettings, job_flow_overrides
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import S3LakeStorage
from fruits_pipeline.settings import REPO_ROOT
from tests.dag_harness import (
    SKIPPED_RUN,
    FakeEmr,
    airflow_db,  # noqa: F401  (fixture)
    lease_holder,
    load_dag,
    settings_modules_restored,
    step_status_with_failure_details,
    write_featurize_outputs,
    write_pca_outputs,
)

pytestmark = [
    pytest.mark.slow,
    # Airflow's in-process execution API client, not this code.
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

REGION = "eu-west-3"
BUCKET = "fruits-dag-test"
LAKE = Lake(f"s3://{BUCKET}/lake")
D = date(2026, 1, 2)
K = 3
POKE_INTERVAL_S = 0.05
# 6 uploads in 2 labels; the featurize job reads 5 and records 1 as an error.
UPLOADS = [("Apple Braeburn", f"apple_{i}.jpg") for i in range(3)] + [
    ("Banana", f"banana_{i}.jpg") for i in range(3)
]
FEATURIZED = [(f"{LAKE.raw(D)}/{label}/{name}", label) for label, name in UPLOADS[:-1]]
ERRORS = [(f"{LAKE.raw(D)}/{UPLOADS[-1][0]}/{UPLOADS[-1][1]}", "Banana", "cannot identify image")]
FAILURE = {
    "Reason": "Unknown Error.",
    "Message": "RuntimeError: featurize exploded",
    "LogFile": f"{LAKE.emr_logs()}j-FAKE/steps/s-FAKE/stderr.gz",
}
# One error in six uploads is under this threshold.
RUN_CONF = {"partition_date": D.isoformat(), "k": K, "max_error_ratio": 0.2}
FEATURIZE, PCA = f"featurize dt={D.isoformat()}", f"pca dt={D.isoformat()}"


@dataclass
class Pipeline:
    """One test's world: the mocked lake, moto's EMR driven by `emr`, and what was recorded:
    every RunJobFlow request (with the hook's region) and each sensor's failure message."""

    s3: Any
    storage: S3LakeStorage
    emr: FakeEmr
    run_job_flow_calls: list[dict[str, Any]]
    sensor_errors: dict[str, str]
    runs: Iterator[int] = field(default_factory=lambda: iter(range(1, 100)))

    def put_uploads(self, uploads: list[tuple[str, str]]) -> None:
        for label, name in uploads:
            self.s3.put_object(
                Bucket=BUCKET, Key=LAKE.s3_key(f"{LAKE.raw(D)}/{label}/{name}"), Body=b"\xff\xd8"
            )
        self.s3.put_object(Bucket=BUCKET, Key=LAKE.s3_key(f"{LAKE.raw(D)}/notes.txt"), Body=b"x")

    def run(self, conf: dict[str, Any] | None = None):
        """One manual run for partition D; a new logical date each time, so a new run."""
        dag = load_dag()
        for task_id in ("watch_featurize", "watch_pca"):
            dag.get_task(task_id).poke_interval = POKE_INTERVAL_S
        logical_date = datetime(2026, 2, 1, next(self.runs), tzinfo=UTC)
        return dag.test(logical_date=logical_date, run_conf=RUN_CONF | (conf or {}))

    @property
    def emr_client(self) -> Any:
        return boto3.client("emr", region_name=REGION)

    def clusters_by_region(self) -> dict[str, list[str]]:
        """Ids of the clusters ever created, by region, in every region moto has state for."""
        from moto.emr.models import emr_backends

        return {
            region: list(backend.clusters)
            for region, backend in emr_backends[DEFAULT_ACCOUNT_ID].items()
            if backend.clusters
        }

    def cluster_ids(self) -> list[str]:
        return [cluster_id for ids in self.clusters_by_region().values() for cluster_id in ids]

    def steps(self, cluster_id: str) -> list[dict[str, Any]]:
        """Steps of a cluster in the order they were added (ListSteps has no stable order)."""
        from moto.emr.models import emr_backends

        cluster = emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id]
        return [
            self.emr_client.describe_step(ClusterId=cluster_id, StepId=step.id)["Step"]
            for step in cluster.steps
        ]

    def asset_events(self, run) -> list[tuple[str, str, dict]]:
        from airflow.models.asset import AssetEvent, AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            rows = session.execute(
                select(AssetModel.name, AssetModel.uri, AssetEvent.extra)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .where(AssetEvent.source_run_id == run.run_id)
            ).all()
        return [tuple(row) for row in rows]

    def keys(self, uri: str) -> list[str]:
        return self.storage.list_files(uri)


def task_states(run) -> dict[str, str | None]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture
def pipeline(airflow_db, monkeypatch) -> Iterator[Pipeline]:  # noqa: F811
    from airflow.providers.amazon.aws.hooks.emr import EmrHook
    from moto.emr.models import Step, emr_backends

    from fruits_pipeline.backends.emr.sensor import CancellingEmrStepSensor

    # Fake credentials, and no setting of the environment running the tests leaks in.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    for name in [n for n in os.environ if n.startswith("FRUITS_")] + [
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    ]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps({"conn_type": "aws", "extra": {"region_name": REGION}}),
    )
    monkeypatch.setenv("FRUITS_BACKEND", "emr")
    monkeypatch.setenv("FRUITS_LAKE_ROOT", LAKE.root)
    monkeypatch.setenv("FRUITS_WEIGHTS", "imagenet")
    monkeypatch.setattr(Step, "status", step_status_with_failure_details(Step.status))

    run_job_flow_calls: list[dict[str, Any]] = []
    create_job_flow = EmrHook.create_job_flow

    def recording_create_job_flow(hook, overrides):
        run_job_flow_calls.append(
            {"region": hook.conn_region_name, "overrides": copy.deepcopy(overrides)}
        )
        return create_job_flow(hook, overrides)

    monkeypatch.setattr(EmrHook, "create_job_flow", recording_create_job_flow)

    with settings_modules_restored(), mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        storage = S3LakeStorage(LAKE, s3)
        emr = FakeEmr(emr_backends[DEFAULT_ACCOUNT_ID][REGION], jobs={})
        sensor_errors: dict[str, str] = {}
        poke = CancellingEmrStepSensor.poke

        def advancing_poke(sensor, context):
            emr.advance(sensor.job_flow_id)
            try:
                return poke(sensor, context)
            except Exception as err:
                sensor_errors[sensor.task_id] = str(err)
                raise

        monkeypatch.setattr(CancellingEmrStepSensor, "poke", advancing_poke)
        yield Pipeline(s3, storage, emr, run_job_flow_calls, sensor_errors)


def featurize_job(pipeline: Pipeline) -> Callable[[str], tuple[str, None]]:
    def job(name: str) -> tuple[str, None]:
        run = lease_holder(pipeline.storage, LAKE, D)
        write_featurize_outputs(pipeline.storage, LAKE, D, FEATURIZED, ERRORS, run=run)
        return "COMPLETED", None

    return job


def pca_job(pipeline: Pipeline, *, rows=FEATURIZED, vector_length: int = K):
    def job(name: str) -> tuple[str, None]:
        write_pca_outputs(
            pipeline.storage,
            LAKE,
            D,
            rows,
            K,
            vector_length=vector_length,
            explained_variance=0.9,
            run=lease_holder(pipeline.storage, LAKE, D),
        )
        return "COMPLETED", None

    return job


def staged_prefix() -> str:
    return LAKE.artifacts(artifacts.artifact_digest(artifacts.artifact_files(REPO_ROOT, None)))


def test_success_creates_one_cluster_runs_both_steps_publishes_and_terminates(pipeline):
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}

    run = pipeline.run()

    assert run.state == "success"
    assert task_states(run) == {
        "check_uploads": "success",
        "prepare_run": "success",
        "create_cluster": "success",
        "add_steps": "success",
        "watch_featurize": "success",
        "watch_pca": "success",
        "validate": "success",
        "publish": "success",
        "terminate_cluster": "success",
        "release_partition": "success",
    }
    # Exactly one RunJobFlow, in the EU region, with the spec emr_config plans.
    prefix = staged_prefix()
    [call] = pipeline.run_job_flow_calls
    token = {tag["Key"]: tag["Value"] for tag in call["overrides"]["Tags"]}["run_token"]
    expected = job_flow_overrides(
        EmrSettings(),
        LAKE,
        artifacts_prefix=prefix,
        dag_id="fruits_features",
        run_id=run.run_id,
        partition=D,
        token=token,
    )
    assert pipeline.run_job_flow_calls == [{"region": REGION, "overrides": expected}]
    assert expected["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    ((region, (cluster_id,)),) = pipeline.clusters_by_region().items()
    assert region == REGION
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.13.0"
    assert cluster["LogUri"] == f"s3://{BUCKET}/lake/logs/emr/"
    assert cluster["Name"] == f"dt={D.isoformat()} fruits_features"
    tags = {tag["Key"]: tag["Value"] for tag in cluster["Tags"]}
    assert (tags["project"], tags["partition"]) == ("fruits", D.isoformat())
    assert tags["dag_run"] == run.run_id
    assert cluster["Status"]["State"] == "TERMINATED"
    # Two spark-submit steps in cluster mode, run in order.
    steps = pipeline.steps(cluster_id)
    assert [step["Name"] for step in steps] == [FEATURIZE, PCA]
    for step, script in zip(steps, ("featurize.py", "pca.py"), strict=True):
        assert step["Config"]["Jar"] == "command-runner.jar"
        assert step["Config"]["Args"][:3] == ["spark-submit", "--deploy-mode", "cluster"]
        assert f"{prefix}/{script}" in step["Config"]["Args"]
        assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
        assert step["Status"]["State"] == "COMPLETED"
    assert steps[1]["Config"]["Args"][-4:-2] == ["--k", str(K)]
    assert pipeline.emr.transitions == [
        (FEATURIZE, "RUNNING"),
        (FEATURIZE, "COMPLETED"),
        (PCA, "RUNNING"),
        (PCA, "COMPLETED"),
    ]
    # The code was staged under its digest, encrypted at rest.
    staged = pipeline.keys(prefix)
    assert staged == sorted(
        ["bootstrap.sh", "featurize.py", "pca.py", "reproject.py", "requirements-jobs.txt",
         "spark_jobs.zip"]
    )
    for name in staged:
        head = pipeline.s3.head_object(Bucket=BUCKET, Key=LAKE.s3_key(f"{prefix}/{name}"))
        assert head["ServerSideEncryption"] == "AES256"
    # Published: _SUCCESS holds the validated numbers; the notes.txt upload did not count.
    # The lake had no basis: this run reserved the first one and its PCA step fit it.
    (generation, record) = basis.current(pipeline.storage, LAKE)
    assert generation == 1 and record["fit_by"]["token"] == token
    assert f"--fit-basis {LAKE.basis(record['basis'])} --k {K} --days {D}" in " ".join(
        steps[1]["Config"]["Args"]
    )
    marker = json.loads(pipeline.storage.read_bytes(LAKE.success_marker(D)))
    assert marker == {
        "partition": D.isoformat(),
        "images_found": 6,
        "featurized": 5,
        "errors": 1,
        "reduced": 5,
        "basis": record["basis"],
        "k": K,
        "explained_variance": 0.9,
        "error_ratio": pytest.approx(1 / 6),
    }
    assert pipeline.sensor_errors == {}
    assert pipeline.asset_events(run) == [
        (
            "fruits_reduced_features",
            f"s3://{BUCKET}/lake/reduced",
            {"partition": D.isoformat(), "uri": LAKE.reduced(D), "rows": 5,
             "basis": record["basis"], "k": K},
        )
    ]  # fmt: skip


EARLIER_BASIS = "basis-20260101T020000Z-00000001"


def lake_with_a_basis(pipeline: Pipeline, weights: dict | None = None) -> None:
    """A basis fit on an earlier day, current, as a first run would have left it."""
    from tests.dag_harness import write_basis

    write_basis(pipeline.storage, LAKE, EARLIER_BASIS, K, days=["2026-01-01"], rows=40,
                weights=weights)  # fmt: skip
    record = {"basis": EARLIER_BASIS, "made_at": "2026-01-02T02:00:00+00:00", "fit_by": None}
    assert pipeline.storage.create_exclusive(
        f"{LAKE.current_basis()}/0000000001.json", json.dumps(record).encode()
    )


def test_a_later_day_applies_the_current_basis(pipeline):
    lake_with_a_basis(pipeline)
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}

    run = pipeline.run()

    assert run.state == "success"
    (cluster_id,) = pipeline.cluster_ids()
    pca_args = pipeline.steps(cluster_id)[1]["Config"]["Args"]
    assert pca_args[-4:] == ["--apply-basis", LAKE.basis(EARLIER_BASIS), "--wait-s", "3600"]
    assert "--k" not in pca_args and "--variance" not in pca_args
    assert basis.current(pipeline.storage, LAKE)[0] == 1  # no new basis
    marker = json.loads(pipeline.storage.read_bytes(LAKE.success_marker(D)))
    assert (marker["basis"], marker["k"]) == (EARLIER_BASIS, K)


def test_a_run_with_other_weights_than_the_basis_is_refused_before_any_cluster(
    pipeline, tmp_path, capfd
):
    lake_with_a_basis(pipeline, weights={"source": "/models/a.weights.h5", "sha256": "a" * 64})
    pipeline.put_uploads(UPLOADS)
    other = tmp_path / "b.weights.h5"
    other.write_bytes(b"other weights")

    run = pipeline.run({"weights": str(other)})

    assert run.state == "failed"
    states = task_states(run)
    assert (states["check_uploads"], states["prepare_run"]) == ("success", "failed")
    out, err = capfd.readouterr()
    assert (
        f"these features were made with {other} (sha256 " in out + err
        and f"but basis {EARLIER_BASIS} assumes /models/a.weights.h5 (sha256 aaaaaaaaaaaa…)"
        in out + err
    ), (out + err)[-3000:]
    assert pipeline.run_job_flow_calls == []
    # The day's lease was given back by prepare_run itself: a corrected run may go at once.
    assert lease.current(pipeline.storage, LAKE, D)[1] is True


def test_failed_featurize_step_fails_the_run_cancels_pca_and_terminates(pipeline, capfd):
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {"featurize": lambda name: ("FAILED", FAILURE), "pca": pca_job(pipeline)}

    run = pipeline.run()

    assert run.state == "failed"
    assert task_states(run) == {
        "check_uploads": "success",
        "prepare_run": "success",
        "create_cluster": "success",
        "add_steps": "success",
        "watch_featurize": "failed",
        "watch_pca": "upstream_failed",
        "validate": "upstream_failed",
        "publish": "upstream_failed",
        "terminate_cluster": "success",
        "release_partition": "success",
    }
    assert pipeline.emr.transitions == [
        (FEATURIZE, "RUNNING"),
        (FEATURIZE, "FAILED"),
        (PCA, "CANCELLED"),
    ]
    message = (
        f"EMR job failed: for reason {FAILURE['Reason']} with message {FAILURE['Message']} "
        f"and log file {FAILURE['LogFile']}"
    )
    assert pipeline.sensor_errors == {"watch_featurize": message}
    assert message in capfd.readouterr().out
    assert len(pipeline.run_job_flow_calls) == 1
    (cluster_id,) = pipeline.cluster_ids()
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert not pipeline.storage.exists(LAKE.success_marker(D))
    assert pipeline.keys(LAKE.reduced(D)) == []
    assert pipeline.asset_events(run) == []


@pytest.mark.parametrize(
    ("reduced_rows", "vector_length", "problem"),
    [
        (FEATURIZED[:-1], K, "reduced rows (4) != featurized rows (5)"),
        (FEATURIZED, K + 1, f"5 reduced vectors do not have k={K} dimensions"),
    ],
    ids=["fewer-reduced-rows", "wrong-vector-length"],
)
def test_invalid_outputs_fail_the_run_at_validate_and_terminate(
    pipeline, monkeypatch, reduced_rows, vector_length, problem
):
    from fruits_pipeline import validation

    failures: list[str] = []
    validate_partition = validation.validate_partition

    def recording_validate_partition(*args, **kwargs):
        try:
            return validate_partition(*args, **kwargs)
        except validation.ValidationFailed as err:
            failures.append(str(err))
            raise

    monkeypatch.setattr(validation, "validate_partition", recording_validate_partition)
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {
        "featurize": featurize_job(pipeline),
        "pca": pca_job(pipeline, rows=reduced_rows, vector_length=vector_length),
    }

    run = pipeline.run()

    assert run.state == "failed"
    states = task_states(run)
    assert states.pop("validate") == "failed"
    assert states.pop("publish") == "upstream_failed"
    assert set(states.values()) == {"success"}, states
    assert failures == [f"partition dt={D.isoformat()} is not valid: {problem}"]
    (cluster_id,) = pipeline.cluster_ids()
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert not pipeline.storage.exists(LAKE.success_marker(D))
    assert pipeline.asset_events(run) == []


def test_no_uploads_skips_every_later_task_and_creates_no_cluster(pipeline):
    pipeline.put_uploads([])  # only notes.txt, which is not an image

    run = pipeline.run()

    assert run.state == "success"
    states = task_states(run)
    assert states == SKIPPED_RUN
    assert pipeline.run_job_flow_calls == []
    assert pipeline.clusters_by_region() == {}
    assert pipeline.emr_client.list_clusters()["Clusters"] == []
    assert pipeline.keys(f"{LAKE.root}/artifacts") == []
    assert pipeline.keys(LAKE.report(D)) == []


def test_rerun_of_a_published_partition_keeps_it_published_until_it_replaces_it(pipeline):
    marker = LAKE.success_marker(D)
    marker_at_featurize_running: list[bool] = []

    def on_running(step_name: str) -> None:
        if step_name == FEATURIZE:
            marker_at_featurize_running.append(pipeline.storage.exists(marker))

    pipeline.put_uploads(UPLOADS)
    pipeline.emr.on_running = on_running
    pipeline.emr.jobs = {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}
    first = pipeline.run()
    assert first.state == "success"
    first_marker = json.loads(pipeline.storage.read_bytes(marker))
    assert first_marker["explained_variance"] == 0.9

    def rerun_pca(name: str) -> tuple[str, None]:
        # While the rerun's steps write, readers still see the first publication.
        assert json.loads(pipeline.storage.read_bytes(marker)) == first_marker
        run = lease_holder(pipeline.storage, LAKE, D)
        write_pca_outputs(
            pipeline.storage, LAKE, D, FEATURIZED, K, explained_variance=0.8, run=run
        )
        return "COMPLETED", None

    pipeline.emr.jobs["pca"] = rerun_pca
    second = pipeline.run()

    assert second.state == "success"
    assert second.run_id != first.run_id
    assert marker_at_featurize_running == [False, True]
    assert json.loads(pipeline.storage.read_bytes(marker)) == first_marker | {
        "explained_variance": 0.8
    }
    assert len(pipeline.run_job_flow_calls) == 2
    clusters = [
        pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
        for cluster_id in pipeline.cluster_ids()
    ]
    assert [cluster["Status"]["State"] for cluster in clusters] == ["TERMINATED", "TERMINATED"]
