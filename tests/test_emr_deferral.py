"""The EMR step sensors defer to the triggerer: against moto's EMR, no Airflow running.

The sensor defers with `CancellingEmrStepTrigger` and the run's wait budget; the trigger's run()
polls moto's EMR through aiobotocore, as the provider's trigger does, the steps moved through
moto's backend (`FakeEmr`); its events lead, through
`execute_complete`, to the outcomes of poke mode; a user's kill of the deferred task cancels
the step (the trigger's `on_kill`).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from unittest import mock

import boto3
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout, TaskDeferred
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID

from fruits_pipeline import waits
from fruits_pipeline.backends.emr.sensor import DEFERRAL_GRACE_S, CancellingEmrStepSensor
from fruits_pipeline.backends.emr.triggers import CancellingEmrStepTrigger
from tests.support.aio_moto import before_each_step_poll, moto_answers_aiobotocore
from tests.support.dag_harness import (
    FakeEmr,
    answer_cancel_steps,
    step_status_with_failure_details,
)

REGION = "eu-west-3"
STEP = "featurize dt=2026-01-02"
FAILURE = {"Reason": "Unknown Error.", "Message": "RuntimeError: featurize exploded",
           "LogFile": "s3://lake/logs/emr/j-1/steps/s-1/stderr.gz"}  # fmt: skip


@pytest.fixture
def emr(monkeypatch):
    """moto's EMR with one cluster and one PENDING step: (client, cluster id, step id, FakeEmr)."""
    from moto.emr.models import Step, emr_backends

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setattr(Step, "status", step_status_with_failure_details(Step.status))
    moto_answers_aiobotocore(monkeypatch)
    with mock_aws():
        client = boto3.client("emr", region_name=REGION)
        cluster_id = client.run_job_flow(
            Name="deferred", ReleaseLabel="emr-7.13.0",
            Instances={"InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
            JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole",
        )["JobFlowId"]  # fmt: skip
        (step_id,) = client.add_job_flow_steps(
            JobFlowId=cluster_id,
            Steps=[{"Name": STEP, "ActionOnFailure": "CANCEL_AND_WAIT",
                    "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["x"]}}],
        )["StepIds"]  # fmt: skip
        fake = FakeEmr(emr_backends[DEFAULT_ACCOUNT_ID][REGION], jobs={})
        yield client, cluster_id, step_id, fake


def sensor(cluster_id: str, step_id: str, **kwargs) -> CancellingEmrStepSensor:
    kwargs = {"wait_s": "1980", "poke_interval": 30, "deferrable": True} | kwargs
    return CancellingEmrStepSensor(
        task_id="watch_featurize", job_flow_id=cluster_id, step_id=step_id,
        aws_conn_id=None, region_name=REGION, **kwargs,
    )  # fmt: skip


def trigger(cluster_id: str, step_id: str, attempts: int = 10) -> CancellingEmrStepTrigger:
    return CancellingEmrStepTrigger(
        job_flow_id=cluster_id, step_id=step_id, waiter_delay=0, waiter_max_attempts=attempts,
        aws_conn_id=None, region_name=REGION,
    )  # fmt: skip


def first_event(trigger: CancellingEmrStepTrigger):
    async def run():
        return await anext(trigger.run())

    return asyncio.run(run()).payload


def moving(fake: FakeEmr, monkeypatch, polls: list[str]) -> None:
    """Each poll of the trigger first moves the cluster's steps one transition."""

    def advance(cluster_id: str, step_id: str) -> None:
        polls.append(step_id)
        fake.advance(cluster_id)

    before_each_step_poll(monkeypatch, advance)


def test_a_running_step_defers_to_the_trigger_with_the_runs_budget(emr):
    _, cluster_id, step_id, _ = emr
    watch = sensor(cluster_id, step_id)

    with pytest.raises(TaskDeferred) as deferred:
        watch.execute({"ti": mock.MagicMock()})

    trigger = deferred.value.trigger
    assert isinstance(trigger, CancellingEmrStepTrigger)
    assert deferred.value.method_name == "execute_complete"
    # 1980 s in 66 polls of 30 s; the deferral outlives the last poll.
    assert (trigger.waiter_delay, trigger.attempts) == (30, waits.attempts(1980, 30)) == (30, 66)
    assert deferred.value.timeout == timedelta(seconds=1980 + DEFERRAL_GRACE_S)
    classpath, kwargs = trigger.serialize()
    assert classpath == "fruits_pipeline.backends.emr.triggers.CancellingEmrStepTrigger"
    assert (kwargs["job_flow_id"], kwargs["step_id"]) == (cluster_id, step_id)
    assert (kwargs["waiter_max_attempts"], kwargs["region_name"]) == (66, REGION)
    # Poke mode gets the same budget, as the sensor's timeout.
    assert watch.timeout == 1980


def test_a_step_already_done_does_not_defer(emr):
    _, cluster_id, step_id, fake = emr
    fake.jobs = {"featurize": lambda name: ("COMPLETED", None)}
    fake.advance(cluster_id)
    fake.advance(cluster_id)

    assert sensor(cluster_id, step_id).execute({"ti": mock.MagicMock()}) is None


def test_the_trigger_polls_moto_until_the_step_completes_then_the_task_succeeds(emr, monkeypatch):
    _, cluster_id, step_id, fake = emr
    fake.jobs = {"featurize": lambda name: ("COMPLETED", None)}
    polls: list[str] = []
    moving(fake, monkeypatch, polls)

    event = first_event(trigger(cluster_id, step_id))

    assert event == {"status": "success", "value": None}
    assert fake.transitions == [(STEP, "RUNNING"), (STEP, "COMPLETED")]
    assert polls == [step_id, step_id]
    assert sensor(cluster_id, step_id).execute_complete({"ti": mock.MagicMock()}, event) is None


def test_a_failed_step_fails_the_task_with_emrs_reason_as_in_poke_mode(emr, monkeypatch):
    _, cluster_id, step_id, fake = emr
    fake.jobs = {"featurize": lambda name: ("FAILED", FAILURE)}
    moving(fake, monkeypatch, [])

    event = first_event(trigger(cluster_id, step_id))

    assert event["status"] == "error"
    assert f"Error while waiting for step {step_id} to complete" in event["message"]
    message = (
        f"EMR job failed: for reason {FAILURE['Reason']} with message {FAILURE['Message']} "
        f"and log file {FAILURE['LogFile']}"
    )
    with pytest.raises(AirflowException) as failed:
        sensor(cluster_id, step_id).execute_complete({"ti": mock.MagicMock()}, event)
    assert str(failed.value) == message


def test_a_cancelled_step_fails_the_task(emr, monkeypatch):
    client, cluster_id, step_id, fake = emr
    fake.advance(cluster_id)  # RUNNING
    fake.backend.clusters[cluster_id].steps[0].state = "CANCELLED"

    event = first_event(trigger(cluster_id, step_id))

    assert event["status"] == "error"
    with pytest.raises(AirflowException, match="EMR job failed"):
        sensor(cluster_id, step_id).execute_complete({"ti": mock.MagicMock()}, event)


def test_a_hung_step_ends_the_wait_at_the_budget(emr, monkeypatch):
    _, cluster_id, step_id, fake = emr
    fake.advance(cluster_id)  # RUNNING, and never moves again
    polls: list[str] = []
    before_each_step_poll(monkeypatch, lambda cluster_id, step_id: polls.append(step_id))

    event = first_event(trigger(cluster_id, step_id, attempts=4))

    assert event["status"] == "error" and "max attempts" in event["message"].lower()
    assert len(polls) == 4
    with pytest.raises(AirflowSensorTimeout, match=f"step {step_id} .* has not ended after its"):
        sensor(cluster_id, step_id).execute_complete({"ti": mock.MagicMock()}, event)


def test_a_users_kill_of_the_deferred_task_cancels_the_step(emr, monkeypatch):
    """The triggerer calls the trigger's on_kill when a user marks the deferred task failed or
    success, or clears it (moto has no CancelSteps: answered at the botocore boundary)."""
    client, cluster_id, step_id, fake = emr
    fake.advance(cluster_id)  # RUNNING
    moto_step = fake.backend.clusters[cluster_id].steps[0]
    requests = answer_cancel_steps(monkeypatch, moto_step, "cancelled by the trigger's on_kill")

    asyncio.run(trigger(cluster_id, step_id).on_kill())

    assert requests == [("CancelSteps", REGION, {"ClusterId": cluster_id, "StepIds": [step_id]})]
    step = client.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    assert step["Status"]["State"] == "CANCELLED"


def test_poke_mode_stays_available_and_sized_the_same(emr):
    _, cluster_id, step_id, fake = emr
    fake.jobs = {"featurize": lambda name: ("COMPLETED", None)}
    fake.advance(cluster_id)
    fake.advance(cluster_id)
    watch = sensor(cluster_id, step_id, deferrable=False, wait_s=900)

    watch.execute({"ti": mock.MagicMock()})

    assert (watch.timeout, watch.max_attempts) == (900, 30)


def test_the_teardown_waits_in_the_triggerer_until_emr_says_terminated(emr, monkeypatch):
    """The provider's terminate operator, deferred: TerminateJobFlows, then its trigger polls
    (aiobotocore) until the cluster is TERMINATED; a cluster still up is not reported gone."""
    from airflow.providers.amazon.aws.operators.emr import EmrTerminateJobFlowOperator
    from airflow.providers.amazon.aws.triggers.emr import EmrTerminateJobFlowTrigger

    client, cluster_id, _, fake = emr
    still_up = EmrTerminateJobFlowTrigger(
        job_flow_id=cluster_id, waiter_delay=0, waiter_max_attempts=2,
        aws_conn_id=None, region_name=REGION,
    )  # fmt: skip
    assert first_event(still_up)["status"] == "error"
    teardown = EmrTerminateJobFlowOperator(
        task_id="terminate_cluster", job_flow_id=cluster_id, deferrable=True,
        aws_conn_id=None, region_name=REGION,
    )  # fmt: skip

    with pytest.raises(TaskDeferred) as deferred:
        teardown.execute({"ti": mock.MagicMock()})

    trigger = deferred.value.trigger
    assert isinstance(trigger, EmrTerminateJobFlowTrigger)
    assert first_event(trigger)["status"] == "success"
    assert client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] == (
        "TERMINATED"
    )
