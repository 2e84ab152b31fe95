"""A transient Spark standalone cluster on this machine, shaped like an EMR cluster.

The DAG's local backend creates a cluster, runs steps on it and terminates it from separate
Airflow task processes, as it does on EMR. So every process here is started detached (its own
session, output in log files) and all state lives in JSON files under
``<state_dir>/<cluster_id>/``, where any later process finds it by cluster id:

- ``cluster.json``: state, reason, master URL, ports and the pids of the cluster's processes;
- ``logs/``: master, worker, watchdog and step-runner logs;
- ``work/``: the worker's work directory (executor stdout/stderr);
- ``steps.json`` and ``steps/<step_id>/``: the step queue, see ``local_runner``.

When ``FRUITS_LOCAL_CLUSTER_OWNER=<pid>`` is set for the process starting a cluster (``make
demo`` sets it to its own pid), the cluster records that process as its owner and its watchdog
terminates it (reason ``owner exited``) as soon as the owner is gone, killed or not.

Every process of a cluster carries ``FRUITS_LOCAL_CLUSTER_ID=<cluster_id>`` in its environment,
which Spark passes down to executors and Python workers: terminate finds them all by it, even
those that left their parent's process group (PySpark's worker daemon does).
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from fruits_pipeline.procs import (
    free_port,
    live_process,
    log_tails,
    marked_processes,
    process_record,
    read_json,
    spawn_detached,
    stop_processes,
    with_descendants,
    write_json,
)

__all__ = [
    "cluster_processes_alive",
    "describe_cluster",
    "start_cluster",
    "terminate_cluster",
]

log = logging.getLogger(__name__)

CLUSTER_ENV = "FRUITS_LOCAL_CLUSTER_ID"
OWNER_ENV = "FRUITS_LOCAL_CLUSTER_OWNER"
STARTING, WAITING, RUNNING = "STARTING", "WAITING", "RUNNING"
TERMINATING, TERMINATED = "TERMINATING", "TERMINATED"
ENDED = (TERMINATING, TERMINATED)

CLUSTER_FILE = "cluster.json"
# `python -m fruits_pipeline.<module>` run from here finds the package whatever PYTHONPATH is.
PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # plugins/: fruits_pipeline importable
_CLUSTER_ID = re.compile(r"local-[0-9a-f]{12}")
_MASTER = "org.apache.spark.deploy.master.Master"
_WORKER = "org.apache.spark.deploy.worker.Worker"
# The REST submission server would take port 6066 on every cluster; port retries would make the
# real ports differ from the recorded ones.
_SPARK_DEFAULTS = "spark.master.rest.enabled false\nspark.port.maxRetries 0\n"


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def spark_home() -> Path:
    """The Spark distribution that the pyspark package ships (or $SPARK_HOME)."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def cluster_dir(state_dir: str | os.PathLike[str], cluster_id: str) -> Path:
    if not _CLUSTER_ID.fullmatch(cluster_id):
        raise ValueError(f"not a local cluster id: {cluster_id!r}")
    return Path(state_dir).resolve() / cluster_id


def existing_cluster_dir(state_dir: str | os.PathLike[str], cluster_id: str) -> Path:
    cdir = cluster_dir(state_dir, cluster_id)
    if not (cdir / CLUSTER_FILE).is_file():
        raise LookupError(f"no local cluster {cluster_id} under {state_dir}")
    return cdir


@contextlib.contextmanager
def locked(cdir: Path) -> Iterator[None]:
    """Serialise the read-modify-write cycles of all processes working on one cluster."""
    with open(cdir / ".lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def cluster_state(cdir: Path) -> Iterator[dict[str, Any]]:
    """Lock the cluster and yield its state; changes made to it are saved on exit."""
    with locked(cdir):
        state = read_json(cdir / CLUSTER_FILE)
        yield state
        write_json(cdir / CLUSTER_FILE, state)


def _cluster_processes(cluster_id: str, state: dict[str, Any] | None) -> list[psutil.Process]:
    """The cluster's recorded processes and those carrying its marker, but this one (the
    watchdog terminates its own cluster)."""
    recorded = [live_process(r) for r in state["processes"].values()] if state else []
    found = {p.pid: p for p in recorded if p is not None and p.pid != os.getpid()}
    found.update((p.pid, p) for p in marked_processes(CLUSTER_ENV, cluster_id))
    return list(found.values())


def _master_status(web_url: str) -> dict[str, Any] | None:
    """The master's JSON status page, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"{web_url}/json/", timeout=2) as resp:  # noqa: S310 (loopback http)
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _spawn_role(
    cdir: Path, role: str, command: list[str], env: dict[str, str], cwd: Path
) -> dict[str, Any]:
    """Start one of the cluster's processes and record its pid; returns the updated state."""
    log_path = cdir / "logs" / f"{role}.log"
    record = spawn_detached(command, log_path=log_path, env=env, cwd=cwd)
    with cluster_state(cdir) as state:
        state["processes"][role] = record
    return state


def _wait_until_ready(state: dict[str, Any], roles: list[str], deadline: float) -> None:
    """Poll the master until it is ALIVE and, once the worker is started, has it registered."""
    while True:
        status = _master_status(state["master_web_url"])
        if status and status.get("status") == "ALIVE":
            workers = [w for w in status["workers"] if w["state"] == "ALIVE"]
            if "worker" not in roles or workers:
                return
        for role in roles:
            if live_process(state["processes"][role]) is None:
                raise RuntimeError(f"the Spark {role} exited during startup")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Spark {roles[-1]} was not ready in time")
        time.sleep(0.25)


def start_cluster(
    state_dir: str | os.PathLike[str],
    *,
    idle_timeout_s: float = 1800,
    worker_cores: int | None = None,
    worker_memory: str = "4g",
    env: dict[str, str] | None = None,
    startup_timeout_s: float = 120,
) -> dict[str, Any]:
    """Start a Spark master, one worker and a watchdog, all detached and bound to 127.0.0.1.

    Returns once the worker has registered with the master (the state is then WAITING), with the
    cluster description (see describe_cluster). ``env`` adds to the caller's environment for the
    cluster's processes, and so for the executors. The watchdog terminates the cluster once no
    step has been pending or running for ``idle_timeout_s`` (EMR's auto-termination policy), and
    as soon as the owner process named by ``FRUITS_LOCAL_CLUSTER_OWNER`` (if set) is gone.
    """
    owner = _owner_record({**os.environ, **(env or {})}.get(OWNER_ENV))
    cluster_id = f"local-{uuid.uuid4().hex[:12]}"
    cdir = cluster_dir(state_dir, cluster_id)
    (cdir / "logs").mkdir(parents=True)
    (cdir / "spark-defaults.conf").write_text(_SPARK_DEFAULTS)
    master_port, web_port = free_port(), free_port()
    now = utc_now()
    state: dict[str, Any] = {
        "cluster_id": cluster_id,
        "state": STARTING,
        "reason": None,
        "master_url": f"spark://127.0.0.1:{master_port}",
        "master_web_url": f"http://127.0.0.1:{web_port}",
        "master_port": master_port,
        "master_web_port": web_port,
        "cluster_dir": str(cdir),
        "idle_timeout_s": idle_timeout_s,
        "worker_cores": worker_cores,
        "worker_memory": worker_memory,
        "created_at": now,
        "ready_at": None,
        "ended_at": None,
        "last_activity_at": now,
        "starter": process_record(os.getpid()),
        "owner": owner,
        "processes": {},
    }
    write_json(cdir / CLUSTER_FILE, state)
    log.info("Starting local Spark cluster %s in %s", cluster_id, cdir)
    proc_env = {**os.environ, **(env or {}), "SPARK_LOCAL_IP": "127.0.0.1", CLUSTER_ENV: cluster_id}
    # The master and worker do little work: JVMs tuned for start-up bring each cluster up sooner.
    proc_env.setdefault("SPARK_DAEMON_JAVA_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    spark_class = str(spark_home() / "bin" / "spark-class")
    common = ["--host", "127.0.0.1", "--properties-file", str(cdir / "spark-defaults.conf")]
    worker_opts = ["--port", "0", "--webui-port", "0", "--work-dir", str(cdir / "work")]
    worker_opts += ["--memory", worker_memory]
    if worker_cores:
        worker_opts += ["--cores", str(worker_cores)]
    deadline = time.monotonic() + startup_timeout_s
    try:
        watchdog = [sys.executable, "-m", __spec__.name, str(cdir.parent)]
        _spawn_role(cdir, "watchdog", [*watchdog, cluster_id], proc_env, PACKAGE_PARENT)
        master = [spark_class, _MASTER, *common, "--port", str(master_port)]
        master += ["--webui-port", str(web_port)]
        state = _spawn_role(cdir, "master", master, proc_env, cdir)
        _wait_until_ready(state, ["master"], deadline)
        worker = [spark_class, _WORKER, *common, *worker_opts, state["master_url"]]
        state = _spawn_role(cdir, "worker", worker, proc_env, cdir)
        _wait_until_ready(state, ["master", "worker"], deadline)
    except BaseException as exc:
        terminate_cluster(state_dir, cluster_id, reason=f"startup failed: {exc}")
        if not isinstance(exc, Exception):
            raise
        tails = log_tails(cdir / "logs", 25)
        raise RuntimeError(
            f"local Spark cluster {cluster_id} failed to start: {exc}\n{tails}"
        ) from exc
    with cluster_state(cdir) as state:
        now = utc_now()
        state.update(state=WAITING, ready_at=now, last_activity_at=now)
    log.info("Local Spark cluster %s is up at %s", cluster_id, state["master_url"])
    return state


def _owner_record(value: str | None) -> dict[str, Any] | None:
    """The owner's process record (a pid already gone gets no start time: the watchdog then
    terminates the cluster at once), or None when no owner is named."""
    if not value:
        return None
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"{OWNER_ENV} must be a process id, got {value!r}")
    return process_record(int(value))


def describe_cluster(state_dir: str | os.PathLike[str], cluster_id: str) -> dict[str, Any]:
    """The cluster's persisted state: state (STARTING, WAITING, RUNNING, TERMINATING or
    TERMINATED), reason, master_url, master_web_url, cluster_dir, timestamps and pids."""
    return read_json(existing_cluster_dir(state_dir, cluster_id) / CLUSTER_FILE)


def terminate_cluster(
    state_dir: str | os.PathLike[str],
    cluster_id: str,
    *,
    reason: str = "user request",
    grace_s: float = 10.0,
) -> dict[str, Any]:
    """Stop every process of the cluster and mark it TERMINATED; a no-op when already done.

    Steps still pending or running are then reported CANCELLED by local_runner.describe_step.
    """
    cdir = existing_cluster_dir(state_dir, cluster_id)
    with cluster_state(cdir) as state:
        if state["state"] not in ENDED:
            log.info("Terminating local Spark cluster %s: %s", cluster_id, reason)
            state.update(state=TERMINATING, reason=reason)
    # A second pass catches processes started while the first one was stopping their parents.
    for _ in range(3):
        procs = _cluster_processes(cluster_id, state)
        if not procs:
            break
        stop_processes(procs, grace_s)
    with cluster_state(cdir) as state:
        if state["state"] != TERMINATED:
            state.update(state=TERMINATED, ended_at=utc_now())
    return state


def cluster_processes_alive(state_dir: str | os.PathLike[str], cluster_id: str) -> list[int]:
    """Pids of the cluster's processes still running, descendants included (works even after
    the cluster directory was deleted)."""
    path = cluster_dir(state_dir, cluster_id) / CLUSTER_FILE
    state = read_json(path) if path.is_file() else None
    return sorted(with_descendants(_cluster_processes(cluster_id, state)))


def _watch(state_dir: str, cluster_id: str) -> None:
    """The watchdog's loop: terminate the cluster when it has been idle for its idle timeout,
    when its master or worker died, when the process starting it died before it was ready, or
    when its owner (if it has one) is gone; stop its processes when its directory vanished."""
    cdir = cluster_dir(state_dir, cluster_id)
    state = read_json(cdir / CLUSTER_FILE)
    idle_timeout_s = state["idle_timeout_s"]
    last_busy = time.monotonic()
    while True:
        time.sleep(min(1.0, max(0.1, idle_timeout_s / 5)))
        try:
            state = read_json(cdir / CLUSTER_FILE)
        except FileNotFoundError:
            log.warning("%s vanished: stopping the cluster's processes", cdir)
            stop_processes(_cluster_processes(cluster_id, state), grace_s=10)
            return
        if state["state"] in ENDED:
            return
        if state.get("owner") and live_process(state["owner"]) is None:
            try:
                terminate_cluster(state_dir, cluster_id, reason="owner exited")
            except (LookupError, OSError):  # the owner's cleanup removed the state meanwhile
                stop_processes(_cluster_processes(cluster_id, state), grace_s=10)
            return
        if state["state"] == STARTING:
            if live_process(state["starter"]) is None:
                terminate_cluster(state_dir, cluster_id, reason="starter exited during startup")
                return
            last_busy = time.monotonic()
            continue
        dead = [r for r in ("master", "worker") if live_process(state["processes"][r]) is None]
        if dead:
            terminate_cluster(state_dir, cluster_id, reason=f"the Spark {dead[0]} exited")
            return
        if state["state"] == RUNNING and live_process(state["processes"].get("runner")):
            last_busy = time.monotonic()
        last_activity = datetime.datetime.fromisoformat(state["last_activity_at"]).timestamp()
        idle_s = min(time.monotonic() - last_busy, time.time() - last_activity)
        if idle_s >= idle_timeout_s:
            terminate_cluster(state_dir, cluster_id, reason="idle timeout")
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _watch(sys.argv[1], sys.argv[2])
