"""EMR-like steps on a local cluster: an ordered queue of spark-submit commands.

``add_steps`` appends steps to ``steps.json`` in the cluster directory and makes sure a detached
step runner (``python -m fruits_pipeline.backends.local.runner``) works through the queue, one
step at a time; the runner exits when the queue is empty and the next ``add_steps`` starts
another. Each step runs in, and logs to, ``steps/<step_id>/`` (``step.log``: spark-submit's
stdout and stderr), as EMR steps do. Like EMR's ActionOnFailure=CANCEL_AND_WAIT, a failed
step cancels every later pending step and the cluster stays up.

Steps run with the environment of the ``add_steps`` call that started the runner, plus
SPARK_LOCAL_IP=127.0.0.1, PYSPARK_PYTHON (this interpreter unless set) and markers that let
cancel and terminate find every process of a step.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil

from fruits_pipeline.backends.local.cluster import (
    CLUSTER_ENV,
    CLUSTER_FILE,
    ENDED,
    PACKAGE_PARENT,
    RUNNING,
    WAITING,
    existing_cluster_dir,
    locked,
    spark_home,
    utc_now,
)
from fruits_pipeline.procs import (
    error_excerpt,
    live_process,
    marked_processes,
    process_record,
    read_json,
    spawn_detached,
    stop_processes,
    write_json,
)

__all__ = ["add_steps", "cancel_steps", "describe_step"]

log = logging.getLogger(__name__)

STEP_ENV = "FRUITS_LOCAL_STEP_ID"
PENDING, COMPLETED, FAILED, CANCELLED = "PENDING", "COMPLETED", "FAILED", "CANCELLED"
STEPS_FILE = "steps.json"


def _read_steps(cdir: Path) -> list[dict[str, Any]]:
    path = cdir / STEPS_FILE
    return read_json(path) if path.is_file() else []


def _names_master(args: list[str]) -> bool:
    """Whether a command line sets the master (--master or --conf spark.master=...)."""
    pairs = zip(["", *args], args, strict=False)
    return any(
        arg == "--master"
        or arg.startswith(("--master=", "--conf=spark.master="))
        or (before == "--conf" and arg.startswith("spark.master="))
        for before, arg in pairs
    )


def _spark_submit_command(args: list[str], master_url: str) -> list[str]:
    """Resolve `spark-submit` to pyspark's and point it at the cluster unless it names a master."""
    command = [str(spark_home() / "bin" / "spark-submit")]
    if not _names_master(args):
        command += ["--master", master_url]
    return command + args[1:]


def _name_and_args(step: dict[str, Any]) -> tuple[str, list[str]]:
    """A step's name and command, given as {"name", "args"} or as an EMR step whose
    HadoopJarStep runs command-runner.jar (so one step list serves both backends)."""
    if "HadoopJarStep" in step:
        jar_step, on_failure = step["HadoopJarStep"], step.get("ActionOnFailure")
        runner_jar = jar_step.get("Jar") == "command-runner.jar"
        if not runner_jar or on_failure not in (None, "CANCEL_AND_WAIT"):
            raise ValueError(
                f"only command-runner.jar steps with CANCEL_AND_WAIT run locally: {step!r}"
            )
        name, args = step.get("Name"), jar_step.get("Args")
    else:
        name, args = step.get("name"), step.get("args")
    if not (
        isinstance(name, str)
        and name
        and isinstance(args, list)
        and args[:1] == ["spark-submit"]
        and all(isinstance(arg, str) for arg in args)
    ):
        raise ValueError(f"a step is {{'name': str, 'args': ['spark-submit', ...]}}, got {step!r}")
    return name, args


def add_steps(
    state_dir: str | os.PathLike[str], cluster_id: str, steps: list[dict[str, Any]]
) -> list[str]:
    """Queue steps ({"name": str, "args": ["spark-submit", ...]}, or EMR-shaped) on a WAITING or
    RUNNING cluster, start the step runner if none is running, and return the new step ids."""
    commands = [_name_and_args(step) for step in steps]
    cdir = existing_cluster_dir(state_dir, cluster_id)
    with locked(cdir):
        cluster, queue = read_json(cdir / CLUSTER_FILE), _read_steps(cdir)
        orphans = _settle_abandoned_steps(cluster, queue)
        if cluster["state"] not in (WAITING, RUNNING):
            raise RuntimeError(
                f"cannot add steps to cluster {cluster_id}: it is {cluster['state']}"
            )
        now = utc_now()
        new_ids = []
        for name, args in commands:
            step_id = f"s-{uuid.uuid4().hex[:12].upper()}"
            step_dir = cdir / "steps" / step_id
            step_dir.mkdir(parents=True)
            queue.append(
                {
                    "step_id": step_id,
                    "name": name,
                    "args": args,
                    "command": _spark_submit_command(args, cluster["master_url"]),
                    "state": PENDING,
                    "reason": None,
                    "log_path": str(step_dir / "step.log"),
                    "created_at": now,
                    "started_at": None,
                    "ended_at": None,
                    "exit_code": None,
                    "process": None,
                }
            )
            new_ids.append(step_id)
        cluster.update(state=RUNNING, last_activity_at=now)
        if live_process(cluster["processes"].get("runner")) is None:
            cluster["processes"]["runner"] = _start_runner(cdir, cluster_id)
        write_json(cdir / STEPS_FILE, queue)
        write_json(cdir / CLUSTER_FILE, cluster)
    _stop_step_processes(orphans)
    log.info("Added steps %s to local cluster %s", new_ids, cluster_id)
    return new_ids


def _start_runner(cdir: Path, cluster_id: str) -> dict[str, Any]:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", CLUSTER_ENV: cluster_id}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return spawn_detached(
        [sys.executable, "-m", __spec__.name, str(cdir.parent), cluster_id],
        log_path=cdir / "logs" / "runner.log",
        env=env,
        cwd=PACKAGE_PARENT,
    )


def describe_step(
    state_dir: str | os.PathLike[str], cluster_id: str, step_id: str
) -> dict[str, Any]:
    """The step's state (PENDING, RUNNING, COMPLETED, FAILED or CANCELLED), reason, log_path,
    created_at, started_at, ended_at, exit_code and command.

    A step left RUNNING by a runner that died is reported FAILED ("step runner died") and its
    processes are stopped; unfinished steps of a terminated cluster are reported CANCELLED.
    """
    cdir = existing_cluster_dir(state_dir, cluster_id)
    with locked(cdir):
        cluster, queue = read_json(cdir / CLUSTER_FILE), _read_steps(cdir)
        orphans = _settle_abandoned_steps(cluster, queue)
        if orphans:
            write_json(cdir / STEPS_FILE, queue)
            write_json(cdir / CLUSTER_FILE, cluster)
    _stop_step_processes(orphans)
    return {**_find_step(queue, step_id), "cluster_id": cluster_id}


def cancel_steps(
    state_dir: str | os.PathLike[str],
    cluster_id: str,
    step_ids: list[str],
    *,
    grace_s: float = 10.0,
) -> list[str]:
    """Cancel pending steps and kill running ones (their whole process tree); returns the ids
    cancelled, leaving finished steps as they are. Later steps still run, as on EMR."""
    cdir = existing_cluster_dir(state_dir, cluster_id)
    with locked(cdir):
        queue = _read_steps(cdir)
        to_cancel = [_find_step(queue, step_id) for step_id in step_ids]
        to_cancel = [step for step in to_cancel if step["state"] in (PENDING, RUNNING)]
        running = [step for step in to_cancel if step["state"] == RUNNING]
        for step in to_cancel:
            step.update(state=CANCELLED, reason="cancelled by request", ended_at=utc_now())
        write_json(cdir / STEPS_FILE, queue)
    _stop_step_processes(running, grace_s)
    log.info(
        "Cancelled steps %s on local cluster %s", [s["step_id"] for s in to_cancel], cluster_id
    )
    return [step["step_id"] for step in to_cancel]


def _find_step(queue: list[dict[str, Any]], step_id: str) -> dict[str, Any]:
    for step in queue:
        if step["step_id"] == step_id:
            return step
    raise LookupError(f"no step {step_id}")


def _settle_abandoned_steps(
    cluster: dict[str, Any], queue: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Finish the steps nobody will run any more: all unfinished ones when the cluster ended or
    the runner died. Returns the steps that were RUNNING, whose processes must be stopped."""
    unfinished = [step for step in queue if step["state"] in (PENDING, RUNNING)]
    running = [step for step in unfinished if step["state"] == RUNNING]
    runner_died = live_process(cluster["processes"].get("runner")) is None
    if not unfinished or not (cluster["state"] in ENDED or runner_died):
        return []
    now = utc_now()
    if cluster["state"] in ENDED:
        for step in unfinished:
            step.update(state=CANCELLED, reason="cluster terminated", ended_at=now)
    else:
        for step in unfinished:
            if step["state"] == RUNNING:
                step.update(state=FAILED, reason="step runner died", ended_at=now)
            else:
                reason = "step runner died before the step started"
                step.update(state=CANCELLED, reason=reason, ended_at=now)
        cluster["processes"]["runner"] = None
        cluster.update(state=WAITING, last_activity_at=now)
    log.warning("Settled abandoned steps %s", [step["step_id"] for step in unfinished])
    return running


def _stop_step_processes(steps: list[dict[str, Any]], grace_s: float = 10.0) -> None:
    """Stop the spark-submit of each step and everything it started."""
    procs = []
    for step in steps:
        procs += [p for p in [live_process(step["process"])] if p is not None]
        procs += marked_processes(STEP_ENV, step["step_id"])
    if procs:
        stop_processes(procs, grace_s)


def _failure_reason(log_path: Path, exit_code: int) -> str:
    if exit_code < 0:
        how = f"killed by signal {-exit_code}, {signal.strsignal(-exit_code)}"
    else:
        how = f"exit code {exit_code}"
    excerpt = error_excerpt(log_path)
    return f"spark-submit failed ({how})" + (f":\n{excerpt}" if excerpt else "")


def _next_step(cdir: Path) -> dict[str, Any] | None:
    """Mark the first pending step RUNNING and return it; with none left, set the cluster
    WAITING and deregister this runner (under the lock, so add_steps starts a new one)."""
    with locked(cdir):
        cluster, queue = read_json(cdir / CLUSTER_FILE), _read_steps(cdir)
        if cluster["state"] in ENDED:
            return None
        step = next((s for s in queue if s["state"] == PENDING), None)
        now = utc_now()
        cluster["last_activity_at"] = now
        if step is None:
            cluster["state"] = WAITING
            cluster["processes"]["runner"] = None
        else:
            step.update(state=RUNNING, started_at=now)
            write_json(cdir / STEPS_FILE, queue)
        write_json(cdir / CLUSTER_FILE, cluster)
    return step


def _run_step(cdir: Path, step: dict[str, Any]) -> None:
    """Run one step's spark-submit in a session of its own (so cancel can kill its whole tree
    without the runner) and record how it ended."""
    log.info("Running step %s (%s): %s", step["step_id"], step["name"], step["command"])
    try:
        with open(step["log_path"], "ab") as step_log:
            proc = subprocess.Popen(
                step["command"],
                stdin=subprocess.DEVNULL,
                stdout=step_log,
                stderr=subprocess.STDOUT,
                env={**os.environ, STEP_ENV: step["step_id"]},
                cwd=Path(step["log_path"]).parent,
                start_new_session=True,
            )
    except OSError as exc:
        _finish_step(cdir, step["step_id"], None, f"could not start spark-submit: {exc}")
        return
    with locked(cdir):
        queue = _read_steps(cdir)
        current = _find_step(queue, step["step_id"])
        if current["state"] == RUNNING:
            current["process"] = process_record(proc.pid)
            write_json(cdir / STEPS_FILE, queue)
    if current["state"] != RUNNING:  # cancelled while it was being started
        with contextlib.suppress(psutil.NoSuchProcess):
            stop_processes([psutil.Process(proc.pid)], grace_s=10)
    exit_code = proc.wait()
    failure = _failure_reason(Path(step["log_path"]), exit_code) if exit_code else None
    _finish_step(cdir, step["step_id"], exit_code, failure)


def _finish_step(cdir: Path, step_id: str, exit_code: int | None, failure: str | None) -> None:
    """Record a step's end, unless it was cancelled or its cluster terminated meanwhile; a
    failure cancels the pending steps (ActionOnFailure=CANCEL_AND_WAIT)."""
    with locked(cdir):
        cluster, queue = read_json(cdir / CLUSTER_FILE), _read_steps(cdir)
        step = _find_step(queue, step_id)
        if step["state"] != RUNNING or cluster["state"] in ENDED:
            log.info("Step %s ended (exit code %s) after it was stopped", step_id, exit_code)
            return
        now = utc_now()
        step.update(exit_code=exit_code, ended_at=now, state=FAILED if failure else COMPLETED)
        step["reason"] = failure
        if failure:
            for later in queue:
                if later["state"] == PENDING:
                    reason = f"cancelled after step {step_id} failed"
                    later.update(state=CANCELLED, reason=reason, ended_at=now)
        cluster["last_activity_at"] = now
        write_json(cdir / STEPS_FILE, queue)
        write_json(cdir / CLUSTER_FILE, cluster)
    log.info("Step %s ended (exit code %s): %s", step_id, exit_code, step["state"])


def _run_queue(state_dir: str, cluster_id: str) -> None:
    """The step runner: run pending steps in order until none is left or the cluster ended."""
    cdir = existing_cluster_dir(state_dir, cluster_id)
    while (step := _next_step(cdir)) is not None:
        _run_step(cdir, step)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _run_queue(sys.argv[1], sys.argv[2])
