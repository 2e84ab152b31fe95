"""The trigger a deferred EMR step sensor waits with, in the triggerer: the provider's."""

from __future__ import annotations

from airflow.providers.amazon.aws.triggers.emr import EmrStepSensorTrigger


class CancellingEmrStepTrigger(EmrStepSensorTrigger):
    """The provider's `EmrStepSensorTrigger` (its waiter, polls through aiobotocore, log lines
    and events), which also cancels its step when a user kills the deferred task.

    Events, as the provider's: ``{"status": "success", "value": None}`` when the step completed,
    ``{"status": "error", "message": ..., "value": None}`` when it failed or the attempts ran out.
    """

    async def on_kill(self) -> None:
        """The deferred task was marked failed or success, or cleared, by a user: cancel the
        step (EMR's CancelSteps), as the sensor's `on_kill` does when it waits in a worker.

        Airflow 3.3 calls this only on a user's action, not when the triggerer stops or hands
        the trigger to another triggerer, nor at the deferral's timeout; `cleanup()`, called on
        every exit, is not where a step may be cancelled."""
        job_flow_id, step_id = self.waiter_args["ClusterId"], self.waiter_args["StepId"]
        self.log.info("Cancelling step %s on cluster %s", step_id, job_flow_id)
        async with await self.hook().get_async_conn() as client:
            await client.cancel_steps(ClusterId=job_flow_id, StepIds=[step_id])
