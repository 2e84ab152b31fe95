"""The provider's deferred EMR waits against moto's in-process mock.

The triggers poll through aiobotocore, whose endpoint awaits the response's body; moto's mock
answers at botocore's `before-send` with a body already read (bytes). `moto_answers_aiobotocore`
hands aiobotocore that answer as its own response type, so the triggers run against the same
moto backend as the rest of a test (moto's server mode would be another process' state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


class _ReadBody:
    """An already-read body, read again as aiobotocore reads a response's."""

    def __init__(self, body: bytes):
        self.body = body

    async def read(self) -> bytes:
        return self.body


def moto_answers_aiobotocore(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiobotocore import endpoint
    from aiobotocore.awsrequest import AioAWSResponse

    convert = endpoint.convert_to_response_dict

    async def converted(http_response, operation_model):
        if not isinstance(http_response, AioAWSResponse):
            http_response = AioAWSResponse(
                http_response.url,
                http_response.status_code,
                http_response.headers,
                _ReadBody(http_response.content),
            )
        return await convert(http_response, operation_model)

    monkeypatch.setattr(endpoint, "convert_to_response_dict", converted)


class _WaiterCallingFirst:
    """An aiobotocore waiter whose every `wait` (one poll of `async_wait`) calls `before(args)`."""

    def __init__(self, waiter: Any, before: Callable[[dict[str, Any]], None]):
        self.waiter, self.before = waiter, before

    async def wait(self, **kwargs: Any) -> None:
        self.before(kwargs)
        await self.waiter.wait(**kwargs)


def before_each_deferred_poll(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[str, dict[str, Any]], None]
) -> None:
    """Call `before(waiter_name, waiter_args)` before each poll of a deferred EMR wait (steps:
    `step_wait_for_terminal`, termination: `job_flow_terminated`)."""
    from airflow.providers.amazon.aws.hooks.emr import EmrHook

    get_waiter = EmrHook.get_waiter

    def calling_first(hook, waiter_name, *args, deferrable=False, **kwargs):
        waiter = get_waiter(hook, waiter_name, *args, deferrable=deferrable, **kwargs)
        if not deferrable:
            return waiter
        return _WaiterCallingFirst(waiter, lambda waiter_args: before(waiter_name, waiter_args))

    monkeypatch.setattr(EmrHook, "get_waiter", calling_first)


def before_each_step_poll(monkeypatch: pytest.MonkeyPatch, before: Callable[[str, str], None]):
    """Call `before(cluster_id, step_id)` before each poll of a deferred step wait."""

    def on_step_poll(waiter_name: str, args: dict[str, Any]) -> None:
        if waiter_name == "step_wait_for_terminal":
            before(args["ClusterId"], args["StepId"])

    before_each_deferred_poll(monkeypatch, on_step_poll)
