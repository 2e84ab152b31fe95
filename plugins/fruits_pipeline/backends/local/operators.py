"""Operators of the local backend, shaped like the amazon provider's EMR operators.

Same arguments (`job_flow_overrides`, `job_flow_id`, `steps`, `step_id`) and the same XComs, so
the DAG declares one shape for both backends. The work is done by `local_cluster` and
`local_runner`; these classes only adapt them to Airflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.sdk.exceptions import AirflowException

from fruits_pipeline import waits
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.backends.local import runner as local_runner


class LocalCreateClusterOperator(BaseOperator):
    """Start a Spark standalone master and worker on 127.0.0.1; returns the cluster id."""

    template_fields: Sequence[str] = ("job_flow_overrides",)

    def __init__(self, *, state_dir: str, job_flow_overrides: Any = None, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = state_dir
        self.job_flow_overrides = job_flow_overrides

    def execute(self, context) -> str:
        cluster = local_cluster.start_cluster(self.state_dir, **(self.job_flow_overrides or {}))
        self.log.info(
            "Local Spark cluster %s is up at %s", cluster["cluster_id"], cluster["master_url"]
        )
        return cluster["cluster_id"]


class LocalAddStepsOperator(BaseOperator):
    """Queue spark-submit steps on the cluster; returns their ids, in order."""

    template_fields: Sequence[str] = ("job_flow_id", "steps")

    def __init__(self, *, state_dir: str, job_flow_id: Any, steps: Any, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = state_dir
        self.job_flow_id = job_flow_id
        self.steps = steps

    def execute(self, context) -> list[str]:
        step_ids = local_runner.add_steps(self.state_dir, self.job_flow_id, list(self.steps))
        self.log.info("Added steps %s to %s", step_ids, self.job_flow_id)
        return step_ids


class LocalStepSensor(BaseSensorOperator):
    """Wait for a step, for at most `wait_s` seconds (templated: the run's plan says how long,
    waits.py); a failed or cancelled step fails the task with its reason and log.

    It pokes in its worker and does not defer: the step's state includes whether the cluster's
    step runner is alive, which only the host running the cluster can see (README, Waits)."""

    template_fields: Sequence[str] = ("job_flow_id", "step_id", "wait_s")

    def __init__(
        self,
        *,
        state_dir: str,
        job_flow_id: Any,
        step_id: Any,
        wait_s: Any = waits.MIN_WAIT_S,
        **kwargs,
    ):
        kwargs.setdefault("poke_interval", 5)
        super().__init__(**kwargs)
        self.state_dir = state_dir
        self.job_flow_id = job_flow_id
        self.step_id = step_id
        self.wait_s = wait_s

    def execute(self, context) -> Any:
        self.timeout = float(self.wait_s)
        self.log.info("Waiting at most %.0f s for step %s", self.timeout, self.step_id)
        return super().execute(context)

    def poke(self, context) -> bool:
        step = local_runner.describe_step(self.state_dir, self.job_flow_id, self.step_id)
        self.log.info("Step %s (%s) is %s", self.step_id, step.get("name"), step["state"])
        if step["state"] == "COMPLETED":
            self.log.info("Step log: %s", step.get("log_path"))
            return True
        if step["state"] in ("FAILED", "CANCELLED"):
            raise AirflowException(
                f"step {step.get('name')} ({self.step_id}) {step['state']}: "
                f"{step.get('reason') or 'no reason recorded'}; log: {step.get('log_path')}"
            )
        return False

    def on_kill(self) -> None:
        """A killed sensor cancels its step: nothing keeps running for a task nobody awaits."""
        local_runner.cancel_steps(self.state_dir, self.job_flow_id, [self.step_id])


class LocalTerminateClusterOperator(BaseOperator):
    """Stop every process of the cluster (idempotent)."""

    template_fields: Sequence[str] = ("job_flow_id",)

    def __init__(self, *, state_dir: str, job_flow_id: Any, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = state_dir
        self.job_flow_id = job_flow_id

    def execute(self, context) -> None:
        local_cluster.terminate_cluster(self.state_dir, self.job_flow_id)
        left = local_cluster.cluster_processes_alive(self.state_dir, self.job_flow_id)
        if left:
            raise AirflowException(f"cluster {self.job_flow_id}: processes still alive: {left}")
        self.log.info("Local Spark cluster %s terminated", self.job_flow_id)
