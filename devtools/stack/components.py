"""Starting a stack's components and stopping them, with everything they started."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from devtools.stack import postgres
from devtools.stack.client import wait_ready
from devtools.stack.config import (
    ENV_FILE,
    STACK_ENV,
    STACK_FILE,
    USER,
    Stack,
    StackConfig,
    airflow_env,
    ensure_password,
    read_stack,
    write_env_file,
    write_stack,
)
from fruits_pipeline.procs import (
    HOST,
    live_process,
    log_tails,
    marked_processes,
    process_record,
    read_json,
    stop_processes,
)

__all__ = ["leftover_processes", "start", "stop"]

# name -> arguments of `airflow`; the API server first, as it leads the process group.
COMPONENTS: dict[str, list[str]] = {
    "api-server": ["api-server", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
_LOG_LINES = 30  # of each component's log, when the stack fails to start


def _port_taken(port: int) -> bool:
    """Whether something listens on the port (connections of a stopped stack in TIME_WAIT do
    not count: the API server binds with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def start(config: StackConfig, *, timeout_s: float = 300) -> Stack:
    """Start the home's PostgreSQL, migrate its database, start the components, write the
    environment file `<home>/env` and wait until they serve the DAG.

    Refuses to start a second stack on a home whose stack (or its database) still runs. On any
    failure, stops what it started and raises with the end of every component's log.
    """
    home = Path(config.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    running = read_stack(home)
    if running and (
        any(live_process(r) for r in running.processes.values())
        or live_process(running.postgres)
    ):
        raise RuntimeError(f"Airflow already runs from {home} at {running.url}; stop it first")
    if postgres.postmaster(home) is not None:
        raise RuntimeError(f"the PostgreSQL of {home} still runs: stop the stack first")
    if _port_taken(config.port):
        raise RuntimeError(f"port {config.port} of {HOST} is taken: choose another one")
    log_dir = home / "logs"
    log_dir.mkdir(exist_ok=True)
    password = ensure_password(home)
    airflow = str(Path(sys.executable).with_name("airflow"))
    processes: dict[str, dict[str, Any]] = {}
    pgid = 0
    stack = Stack(
        home=home,
        url=f"http://{HOST}:{config.port}",
        user=USER,
        password=password,
        lake=Path(config.lake).resolve(),
        state_dir=config.cluster_state_dir.resolve(),
        pgid=pgid,
        processes=processes,
        config=config,
    )
    try:
        # The database first, recorded at once: whatever fails next, `stop` finds it.
        server = postgres.start_server(home)
        config = dataclasses.replace(config, db_port=server["port"])
        stack = dataclasses.replace(stack, config=config, postgres=server)
        write_stack(stack)
        env = airflow_env(config)
        with open(log_dir / "db-migrate.log", "ab") as log:
            migrated = subprocess.run(
                [airflow, "db", "migrate"],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                timeout=600,
            )
        if migrated.returncode != 0:
            raise RuntimeError("`airflow db migrate` failed")
        for name, args in COMPONENTS.items():
            with open(log_dir / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [airflow, *args],
                    env=env,
                    cwd=home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    process_group=pgid,  # 0: a new group, led by the first component
                )
            pgid = pgid or proc.pid
            processes[name] = process_record(proc.pid)
            stack = dataclasses.replace(stack, pgid=pgid, processes=processes)
            write_stack(stack)
        write_env_file(config)
        wait_ready(stack, timeout_s=timeout_s)
    except BaseException as exc:
        tails = log_tails(log_dir, _LOG_LINES)
        with contextlib.suppress(Exception):
            stop(home)
        if not isinstance(exc, Exception):
            raise
        raise RuntimeError(f"Airflow did not start from {home}: {exc}\n{tails}") from exc
    return stack


def _ancestors() -> set[int]:
    pids, proc = set(), psutil.Process()
    while proc is not None:
        pids.add(proc.pid)
        proc = proc.parent()
    return pids


def leftover_processes(home: Path) -> list[psutil.Process]:
    """Running processes (not zombies, not this one nor its ancestors) that the stack of this
    home started, directly or not: they carry FRUITS_AIRFLOW_STACK=<home> in their environment
    (Spark passes it down to executors and Python workers)."""
    mine = _ancestors()
    marked = marked_processes(STACK_ENV, str(Path(home).resolve()))
    return [proc for proc in marked if proc.pid not in mine]


def _terminate(procs: list[psutil.Process], grace_s: float) -> list[str]:
    """SIGTERM, then SIGKILL after grace_s; returns the processes that needed SIGKILL."""
    return stop_processes(procs, grace_s, descendants=False, kill_wait_s=10)


def _terminate_clusters(state_dir: Path) -> list[str]:
    """Terminate the local Spark clusters of the state dir that are not ended; their ids."""
    from fruits_pipeline.backends.local import cluster as local_cluster

    stopped = []
    if not state_dir.is_dir():
        return stopped
    for cdir in sorted(state_dir.glob("local-*")):
        path = cdir / local_cluster.CLUSTER_FILE
        if not path.is_file():
            continue
        state = read_json(path)
        alive = local_cluster.cluster_processes_alive(state_dir, cdir.name)
        if state["state"] != local_cluster.TERMINATED or alive:
            local_cluster.terminate_cluster(state_dir, cdir.name, reason="Airflow stopped")
            stopped.append(cdir.name)
    return stopped


def stop(home: Path, *, grace_s: float = 30) -> list[str]:
    """Stop the stack of this home and everything it started; returns what was stopped.

    SIGTERM to the recorded process group (only while a recorded component still leads or
    belongs to it: a stale file never signals a reused group id), then SIGKILL after grace_s;
    then the local clusters not terminated; then any process still marked with the home; last
    the home's PostgreSQL (recorded or found on its cluster). Raises when one survives.
    """
    home = Path(home).resolve()
    stack = read_stack(home)
    report = []
    state_dir = stack.state_dir if stack else home / "clusters"
    if stack:
        recorded = [p for p in map(live_process, stack.processes.values()) if p is not None]
        group = []
        if any(_pgid(p.pid) == stack.pgid for p in recorded):
            group = [p for p in psutil.process_iter() if _pgid(p.pid) == stack.pgid]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stack.pgid, signal.SIGTERM)
            report.append(f"process group {stack.pgid}")
        report += _terminate([*recorded, *group], grace_s)
    report += [f"cluster {cluster_id}" for cluster_id in _terminate_clusters(state_dir)]
    # Task processes that left the group, and anything else the stack started.
    leftovers = leftover_processes(home)
    if leftovers:
        report += [f"pid {p.pid}" for p in leftovers]
        report += _terminate(leftovers, 10)
    # The database last: nothing of the stack uses it any more.
    if postgres.stop_server(home, stack.postgres if stack else None):
        report.append("postgres")
    survivors = leftover_processes(home)
    if survivors:
        raise RuntimeError(f"processes of {home} survive: {[p.pid for p in survivors]}")
    (home / ENV_FILE).unlink(missing_ok=True)
    (home / STACK_FILE).unlink(missing_ok=True)
    return report


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
