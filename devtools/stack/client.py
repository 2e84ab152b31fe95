"""A started stack seen from outside: its public REST API and the health of its components."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from typing import Any

from devtools.stack.config import DAG_ID, Stack
from fruits_pipeline.procs import live_process

__all__ = ["api", "api_token", "dead_components", "health", "wait_ready"]

HEALTH_KEYS = ("metadatabase", "scheduler", "dag_processor", "triggerer")


def _request(
    url: str, *, data: Any = None, token: str | None = None, method: str | None = None
) -> Any:
    headers = {"Accept": "application/json"}
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (loopback http)
        return json.load(resp)


def api_token(stack: Stack) -> str:
    """A JWT for the REST API, as the UI's login gets one."""
    answer = _request(
        f"{stack.url}/auth/token", data={"username": stack.user, "password": stack.password}
    )
    return answer["access_token"]


def api(stack: Stack, path: str, *, token: str, data: Any = None, method: str | None = None):
    """Call the public REST API (`/api/v2` + path)."""
    return _request(f"{stack.url}/api/v2{path}", data=data, token=token, method=method)


def health(stack: Stack) -> dict[str, str] | None:
    """Status of each component as the API server reports it, or None while it does not answer."""
    try:
        answer = _request(f"{stack.url}/api/v2/monitor/health")
    except (OSError, ValueError):
        return None
    return {key: (answer.get(key) or {}).get("status") for key in HEALTH_KEYS}


def dead_components(stack: Stack) -> list[str]:
    """The components of the stack (its PostgreSQL included) that are no longer running."""
    dead = [name for name, record in stack.processes.items() if live_process(record) is None]
    if stack.postgres is not None and live_process(stack.postgres) is None:
        dead.append("postgres")
    return dead


def wait_ready(stack: Stack, *, timeout_s: float = 300) -> None:
    """Wait until every component is healthy and the DAG is parsed without import errors."""
    deadline = time.monotonic() + timeout_s
    status: Any = None
    while True:
        dead = dead_components(stack)
        if dead:
            raise RuntimeError(f"Airflow's {', '.join(dead)} exited")
        status = health(stack)
        if status and all(value == "healthy" for value in status.values()):
            token = api_token(stack)
            errors = api(stack, "/importErrors", token=token)
            if errors["total_entries"]:
                raise RuntimeError(f"the DAG folder has import errors: {errors['import_errors']}")
            with contextlib.suppress(urllib.error.HTTPError):
                dag = api(stack, f"/dags/{DAG_ID}", token=token)
                if dag["dag_id"] == DAG_ID:
                    return
            status = f"{status}; {DAG_ID} not parsed yet"
        if time.monotonic() > deadline:
            raise TimeoutError(f"Airflow was not ready in {timeout_s:.0f} s: {status}")
        time.sleep(1)
