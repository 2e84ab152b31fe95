"""The trigger a deferred EMR step sensor waits with, in the triggerer.

The provider's `EmrStepSensorTrigger` polls through aiobotocore, which this project cannot
install: every aiobotocore release pins botocore to a narrow range, and none admits the botocore
of constraints.txt (1.44.5). `CancellingEmrStepTrigger` is that trigger (same waiter, arguments,
log lines and events, through the provider's `async_wait`) with each poll made by boto3 in a
worker thread, so the triggerer's event loop never blocks; and it cancels its step when the
task is killed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.triggers.emr import EmrStepSensorTrigger
from airflow.providers.amazon.aws.utils.waiter_with_logging import async_wait
from airflow.providers.common.compat.sdk import AirflowException
from airflow.triggers.base import TriggerEvent


class WaiterInThread:
    """A boto3 waiter whose `wait` is awaited: each call runs in a worker thread."""

    def __init__(self, waiter: Any):
        self.waiter = waiter

    async def wait(self, **kwargs: Any) -> None:
        await asyncio.to_thread(self.waiter.wait, **kwargs)


class CancellingEmrStepTrigger(EmrStepSensorTrigger):
    """Wait for an EMR step to end (COMPLETED, or FAILED, CANCELLED, INTERRUPTED), for at most
    `waiter_max_attempts` polls `waiter_delay` seconds apart; on a user's kill, cancel the step.

    Events, as the provider's: ``{"status": "success", "value": None}`` when the step completed,
    ``{"status": "error", "message": ..., "value": None}`` when it failed or the attempts ran out.
    """

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook()
        # The client (and the Airflow connection behind it) is made in a thread too.
        waiter = await asyncio.to_thread(
            hook.get_waiter, self.waiter_name, config_overrides=self.waiter_config_overrides
        )
        try:
            await async_wait(
                WaiterInThread(waiter),
                self.waiter_delay,
                self.attempts,
                self.waiter_args,
                self.failure_message,
                self.status_message,
                self.status_queries,
            )
        except AirflowException as error:
            yield self._event_from_exception(error)
        else:
            yield TriggerEvent({"status": "success", self.return_key: self.return_value})

    async def on_kill(self) -> None:
        """The deferred task was marked failed or success, or cleared, by a user: cancel the
        step (EMR's CancelSteps), as the sensor's `on_kill` does when it waits in a worker.

        Airflow 3.3 calls this only on a user's action, not when the triggerer stops or hands
        the trigger to another triggerer, nor at the deferral's timeout; `cleanup()`, called on
        every exit, is not where a step may be cancelled."""
        job_flow_id, step_id = self.waiter_args["ClusterId"], self.waiter_args["StepId"]
        self.log.info("Cancelling step %s on cluster %s", step_id, job_flow_id)
        await asyncio.to_thread(
            lambda: self.hook().conn.cancel_steps(ClusterId=job_flow_id, StepIds=[step_id])
        )
