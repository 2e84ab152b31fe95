"""The EMR world of the `fruits_features` and `fruits_pca_basis` DAG tests: a mocked lake,
moto's EMR moved step by step by `FakeEmr`, every RunJobFlow request recorded.

`tests/conftest.py` makes it the `pipeline` fixture (with `emr_pipeline`); the fake jobs
(`featurize_job`, `pca_job`) write what the Spark jobs would write for partition `D`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID

from fruits_pipeline import artifacts
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import S3LakeStorage
from fruits_pipeline.settings import REPO_ROOT
from tests.support.aio_moto import before_each_deferred_poll, moto_answers_aiobotocore
from tests.support.dag_harness import (
    FakeEmr,
    lease_holder,
    load_dag,
    settings_modules_restored,
    step_status_with_failure_details,
    write_featurize_outputs,
    write_pca_outputs,
)

# Airflow's in-process execution API client (`dag.test()`), not this code.
IN_PROCESS_API_WARNING = pytest.mark.filterwarnings(
    "ignore:Using `httpx` with `starlette.testclient`"
)

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
    # The step id of each poll a deferred sensor's trigger made (the sensors wait deferred).
    trigger_polls: list[str] = field(default_factory=list)
    # (waiter, cluster id) of each poll of another deferred wait (the teardown's).
    other_polls: list[tuple[str, str]] = field(default_factory=list)

    def put_uploads(self, uploads: list[tuple[str, str]]) -> None:
        for label, name in uploads:
            self.s3.put_object(
                Bucket=BUCKET, Key=LAKE.s3_key(f"{LAKE.raw(D)}/{label}/{name}"), Body=b"\xff\xd8"
            )
        self.s3.put_object(Bucket=BUCKET, Key=LAKE.s3_key(f"{LAKE.raw(D)}/notes.txt"), Body=b"x")

    def run(self, conf: dict[str, Any] | None = None):
        """One manual run for partition D (RUN_CONF with `conf`); a new logical date each time,
        so a new run."""
        return self.run_form(RUN_CONF | (conf or {}))

    def run_form(self, form: dict[str, Any], *, month: int = 2):
        """One manual run with the trigger form `form`, on a new logical date in `month`."""
        dag = load_dag()
        for task_id in ("watch_featurize", "watch_pca"):
            dag.get_task(task_id).poke_interval = POKE_INTERVAL_S
        logical_date = datetime(2026, month, 1, next(self.runs), tzinfo=UTC)
        return dag.test(logical_date=logical_date, run_conf=form)

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


@contextmanager
def emr_pipeline(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    """The world of one test (run it with the `airflow_db` fixture set up): fake credentials,
    the EMR backend's settings, moto serving S3 and EMR, each sensor poke and each poll of a
    deferred sensor's trigger advancing the cluster."""
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
        pipeline = Pipeline(s3, storage, emr, run_job_flow_calls, sensor_errors)
        moto_answers_aiobotocore(monkeypatch)

        def polled(waiter_name: str, args: dict[str, Any]) -> None:
            if waiter_name == "step_wait_for_terminal":
                pipeline.trigger_polls.append(args["StepId"])
                emr.advance(args["ClusterId"])
            else:
                pipeline.other_polls.append((waiter_name, args["ClusterId"]))

        before_each_deferred_poll(monkeypatch, polled)
        yield pipeline


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


def succeeding_jobs(pipeline: Pipeline) -> dict[str, Callable[[str], tuple[str, None]]]:
    """Both steps' fake jobs, succeeding: `pipeline.emr.jobs` for a run that publishes."""
    return {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}


def staged_prefix() -> str:
    return LAKE.artifacts(artifacts.artifact_digest(artifacts.artifact_files(REPO_ROOT, None)))
