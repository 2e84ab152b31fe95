"""EmrStepSensor that cancels its step when the task is killed."""

from __future__ import annotations

from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor


class CancellingEmrStepSensor(EmrStepSensor):
    """On kill, cancel the step (EMR's CancelSteps): a killed wait must not leave work running.

    The cluster itself is ended by the DAG's teardown task, or by its idle auto-termination.
    """

    def on_kill(self) -> None:
        self.log.info("Cancelling step %s on cluster %s", self.step_id, self.job_flow_id)
        self.hook.conn.cancel_steps(ClusterId=self.job_flow_id, StepIds=[self.step_id])
