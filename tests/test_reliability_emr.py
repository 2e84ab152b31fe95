"""Failure modes of the EMR path, against moto (issue 5/5): each one fails the run with its reason,
ends the cluster and never leaves the partition looking published.

Runs in the world of `tests/test_dag_emr.py` (the `pipeline` fixture of
`tests/support/emr_world.py`: mocked lake, moto's EMR driven by `FakeEmr`, one `dag.test()` per
run). What that module already shows is not repeated here: a failed featurize step, invalid
outputs at validate, no uploads, a rerun while in flight.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fruits_pipeline import lease
from tests.support.dag_harness import answer_cancel_steps
from tests.support.emr_world import (
    FEATURIZE,
    IN_PROCESS_API_WARNING,
    LAKE,
    PCA,
    REGION,
    RUN_CONF,
    UPLOADS,
    D,
    Pipeline,
    featurize_job,
)
from tests.support.states import expected_states, task_states

pytestmark = [pytest.mark.slow, IN_PROCESS_API_WARNING]

PCA_FAILURE = {
    "Reason": "Unknown Error.",
    # What the PCA job says when k passes the form (1..1280) but exceeds what the rows allow.
    "Message": (
        "ValueError: k=5 is out of range: it must be between 1 and 4 "
        "(min(rows - 1, d) with 5 rows and d=1280)"
    ),
    "LogFile": f"{LAKE.emr_logs()}j-FAKE/steps/s-PCA/stderr.gz",
}
# What an earlier, successful run of D left behind.
EARLIER_MARKER = {"partition": D.isoformat(), "images_found": 6, "featurized": 5, "errors": 1}


def run_with_conf(pipeline: Pipeline, conf: dict[str, Any]):
    """`Pipeline.run` with another trigger form."""
    return pipeline.run_form(conf, month=3)


def active_clusters(pipeline: Pipeline) -> list[str]:
    states = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]
    listed = pipeline.emr_client.list_clusters(ClusterStates=states)["Clusters"]
    return [cluster["Id"] for cluster in listed]


def test_failed_pca_step_fails_the_run_terminates_and_keeps_the_earlier_publication(pipeline):
    """A rerun of a published date with k=5 for 5 featurized rows: the PCA step fails, the
    cluster ends, and the earlier publication stays exactly as it was."""
    pipeline.put_uploads(UPLOADS)
    pipeline.storage.write_bytes(LAKE.success_marker(D), json.dumps(EARLIER_MARKER).encode())
    pipeline.storage.write_bytes(f"{LAKE.reduced(D)}/part-earlier.parquet", b"earlier run")
    published_before = {
        name: pipeline.storage.read_bytes(f"{LAKE.root}/{name}")
        for name in pipeline.keys(LAKE.root)
        if name.startswith(("reports/", "reduced/"))
    }
    pipeline.emr.jobs = {
        "featurize": featurize_job(pipeline),
        "pca": lambda name: ("FAILED", PCA_FAILURE),
    }

    run = run_with_conf(pipeline, RUN_CONF | {"k": 5})

    assert run.state == "failed"
    assert task_states(run) == expected_states(
        watch_pca="failed", validate="upstream_failed", publish="upstream_failed"
    )
    assert pipeline.emr.transitions == [
        (FEATURIZE, "RUNNING"),
        (FEATURIZE, "COMPLETED"),
        (PCA, "RUNNING"),
        (PCA, "FAILED"),
    ]
    assert pipeline.sensor_errors == {
        "watch_pca": (
            f"EMR job failed: for reason {PCA_FAILURE['Reason']} with message "
            f"{PCA_FAILURE['Message']} and log file {PCA_FAILURE['LogFile']}"
        )
    }
    (cluster_id,) = pipeline.cluster_ids()
    assert pipeline.steps(cluster_id)[1]["Config"]["Args"][-4:-2] == ["--k", "5"]
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert active_clusters(pipeline) == []
    # The earlier publication is untouched; the failed run's outputs stay in its staging
    # folder for inspection, and the lease is released.
    for name, data in published_before.items():
        assert pipeline.storage.read_bytes(f"{LAKE.root}/{name}") == data, name
    assert pipeline.keys(LAKE.report(D)) == ["_SUCCESS"]
    assert pipeline.keys(LAKE.reduced(D)) == ["part-earlier.parquet"]
    (token,) = {key.split("/")[0] for key in pipeline.keys(LAKE.staging(D))}
    assert pipeline.keys(LAKE.features(D, token)) == ["_SUCCESS", "part-0.parquet"]
    assert lease.current(pipeline.storage, LAKE, D)[1] is True
    assert pipeline.asset_events(run) == []


def test_malformed_partition_date_is_refused_before_any_task(pipeline, monkeypatch):
    """The trigger form's date format refuses it; check_uploads would too, naming the value."""
    from airflow.sdk.definitions.param import ParamValidationError

    from fruits_pipeline.params import validate_params

    pipeline.put_uploads(UPLOADS)
    conf = {"partition_date": "../2026-01-02"}

    with pytest.raises(ParamValidationError, match=r"\.\./2026-01-02"):
        run_with_conf(pipeline, conf)

    with pytest.raises(ValueError) as refused:
        validate_params(conf, LAKE)
    assert str(refused.value) == (
        "partition_date must be a date written YYYY-MM-DD, got '../2026-01-02'"
    )
    assert pipeline.run_job_flow_calls == []
    assert pipeline.clusters_by_region() == {}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (
            "s3://other-bucket/w.h5",
            f"weights URI 's3://other-bucket/w.h5' is outside the lake '{LAKE.root}'",
        ),
        (
            f"{LAKE.root}/../w.h5",
            f"weights must not contain a '..' segment, got '{LAKE.root}/../w.h5'",
        ),
    ],
    ids=["outside-the-lake", "dotdot"],
)
def test_bad_weights_fail_check_uploads_and_create_nothing(pipeline, monkeypatch, weights, message):
    """A string the trigger form lets through is refused by check_uploads, by name: every
    later task is upstream_failed, no cluster is created and nothing is staged."""
    from fruits_pipeline import params

    refusals: list[str] = []
    validate_params = params.validate_params

    def recording_validate_params(*args, **kwargs):
        try:
            return validate_params(*args, **kwargs)
        except ValueError as err:
            refusals.append(str(err))
            raise

    monkeypatch.setattr(params, "validate_params", recording_validate_params)
    pipeline.put_uploads(UPLOADS)

    run = run_with_conf(pipeline, {"partition_date": D.isoformat(), "weights": weights})

    assert run.state == "failed"
    states = task_states(run)
    assert states.pop("check_uploads") == "failed"
    assert set(states.values()) == {"upstream_failed"}, states
    assert refusals == [message]
    assert pipeline.run_job_flow_calls == []
    assert pipeline.clusters_by_region() == {}
    assert pipeline.keys(f"{LAKE.root}/artifacts") == []


def test_killed_step_sensor_cancels_its_step_with_cancel_steps(pipeline, monkeypatch):
    """CancellingEmrStepSensor.on_kill sends EMR CancelSteps for its step (moto has no
    CancelSteps: the request is recorded at the botocore boundary and answered as EMR does)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    from fruits_pipeline.backends.emr.sensor import CancellingEmrStepSensor

    emr = pipeline.emr_client
    cluster_id = emr.run_job_flow(
        Name="killed-sensor",
        ReleaseLabel="emr-7.13.0",
        Instances={"InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    (step_id,) = emr.add_job_flow_steps(
        JobFlowId=cluster_id,
        Steps=[
            {
                "Name": FEATURIZE,
                "ActionOnFailure": "CANCEL_AND_WAIT",
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "x.py"]},
            }
        ],
    )["StepIds"]
    moto_step = emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id].steps[0]
    moto_step.state = "RUNNING"
    requests = answer_cancel_steps(monkeypatch, moto_step, "cancelled by on_kill")
    sensor = CancellingEmrStepSensor(
        task_id="watch_featurize",
        job_flow_id=cluster_id,
        step_id=step_id,
        aws_conn_id="aws_default",
        region_name=REGION,
    )

    sensor.on_kill()

    assert requests == [("CancelSteps", REGION, {"ClusterId": cluster_id, "StepIds": [step_id]})]
    step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    assert step["Status"]["State"] == "CANCELLED"
    assert pipeline.keys(LAKE.root) == []
