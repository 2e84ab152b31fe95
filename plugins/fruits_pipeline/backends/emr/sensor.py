"""EmrStepSensor that waits as long as the run's data needs, deferred, and cancels its step when
the task is killed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.sensors.emr import EmrStepSensor
from airflow.sdk.exceptions import AirflowSensorTimeout

from fruits_pipeline import waits
from fruits_pipeline.backends.emr.triggers import CancellingEmrStepTrigger

# The deferral outlives the trigger's last poll by this much, so that the trigger ends the wait
# (with the step's last state) rather than the deferral's timeout (with no state at all).
DEFERRAL_GRACE_S = 120


class CancellingEmrStepSensor(EmrStepSensor):
    """Wait for a step for at most `wait_s` seconds (templated: the run's plan says how long,
    waits.py), then fail; a failed, cancelled or interrupted step fails it with EMR's reason.

    `deferrable=True`: one poke in the worker, then the wait is the triggerer's
    (`CancellingEmrStepTrigger`, `wait_s / poke_interval` polls); `execute_complete` reads the
    step once more, so the task ends with the same outcome and message as in poke mode.

    Killed, it cancels the step (EMR's CancelSteps): a killed wait must not leave work running.
    In poke mode that is `on_kill`, in the worker. Deferred, Airflow 3 calls no `on_kill` of the
    operator (no worker runs it): the trigger's `on_kill` cancels the step instead, when a user
    marks the deferred task failed or success, or clears it. Neither runs when the wait times
    out: the DAG's teardown terminates the cluster, or its idle auto-termination does.
    """

    template_fields: Sequence[str] = (*EmrStepSensor.template_fields, "wait_s")

    def __init__(self, *, wait_s: Any = waits.MIN_WAIT_S, **kwargs: Any):
        super().__init__(**kwargs)
        self.wait_s = wait_s

    def _budget(self) -> float:
        """The rendered `wait_s`, applied: the poke-mode timeout and the trigger's attempts."""
        wait_s = float(self.wait_s)
        self.timeout = wait_s
        self.max_attempts = waits.attempts(wait_s, self.poke_interval)
        return wait_s

    def execute(self, context: Any) -> None:
        wait_s = self._budget()
        self.log.info(
            "Waiting at most %.0f s for step %s (%s polls, %s s apart, %s)",
            wait_s, self.step_id, self.max_attempts, self.poke_interval,
            "in the triggerer" if self.deferrable else "in this worker",
        )  # fmt: skip
        super().execute(context=context)

    def defer(self, *, trigger: Any, method_name: str, kwargs: Any = None, timeout: Any = None):
        """The provider's deferral, with its trigger rebuilt as one that also cancels the step
        on kill (from what it serializes, as the triggerer rebuilds it), and a timeout that
        outlives the trigger's last poll."""
        _, trigger_kwargs = trigger.serialize()
        super().defer(
            trigger=CancellingEmrStepTrigger(**trigger_kwargs),
            method_name=method_name,
            kwargs=kwargs,
            timeout=timedelta(seconds=float(self.wait_s) + DEFERRAL_GRACE_S),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        """The trigger ended: the step completed, or it failed, or the attempts ran out."""
        if event and event.get("status") == "success":
            self.log.info("Step %s completed.", self.step_id)
            return
        self.log.info("The trigger ended with %s: reading the step again", event)
        # Raises, with EMR's reason, when the step failed, was cancelled or interrupted.
        if self.poke(context):
            return
        raise AirflowSensorTimeout(
            f"step {self.step_id} on cluster {self.job_flow_id} has not ended after its "
            f"{float(self.wait_s):.0f} s: given up (the cluster is terminated by the teardown)"
        )

    def on_kill(self) -> None:
        self.log.info("Cancelling step %s on cluster %s", self.step_id, self.job_flow_id)
        self.hook.conn.cancel_steps(ClusterId=self.job_flow_id, StepIds=[self.step_id])
