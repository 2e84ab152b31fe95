"""The throwaway Airflow of `make demo` and `make refit`: one `airflow dags test` under a fresh
AIRFLOW_HOME (SQLite) with the local backend, and everything it started stopped afterwards.

Nothing outlives the run: its local Spark clusters are owned by the calling process
(FRUITS_LOCAL_CLUSTER_OWNER, their watchdog ends them once it is gone) and a detached watchdog
of its own (`python -m devtools.throwaway --watchdog ...`) stops `airflow dags test` and the
clusters and removes the throwaway AIRFLOW_HOME, whether the run ends normally, fails, is
interrupted or is killed (kill -9 of the caller or of its whole process group included).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.airflow_env import REPO_PYTHONPATH, base_env
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.lake import Lake
from fruits_pipeline.procs import (
    live_process,
    marked_processes,
    process_record,
    spawn_detached,
    stop_processes,
)
from fruits_pipeline.settings import REPO_ROOT

HOME_PREFIX = "fruits-demo-airflow-"
WATCHDOG_FLAG = "--watchdog"


def airflow_env(home: Path, lake: Path, weights: str) -> dict[str, str]:
    """The caller's environment with a throwaway home's, the local backend's and the lake's."""
    env = os.environ | base_env(home)
    return env | {
        "FRUITS_BACKEND": "local",
        "FRUITS_LAKE_ROOT": str(lake),
        "FRUITS_WEIGHTS": weights,
        "FRUITS_LOCAL_STATE_DIR": str(home / "clusters"),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def dags_test(env: dict[str, str], dag_id: str, conf: dict) -> int:
    """`airflow dags test` of `dag_id` with `conf`, after creating the throwaway database."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if migrate.returncode != 0:
        print(migrate.stdout[-3000:] + migrate.stderr[-3000:], file=sys.stderr)
        print(f"`airflow db migrate` failed (exit {migrate.returncode})", file=sys.stderr)
        return migrate.returncode
    return subprocess.run(
        [airflow, "dags", "test", dag_id, "--conf", json.dumps(conf)], env=env, check=False
    ).returncode


def cleanup(home: Path, state_dir: Path) -> None:
    """Stop whatever the run under `home` left (Airflow's processes, every process carrying
    AIRFLOW_HOME=home, the clusters of state_dir) and remove home. Idempotent."""
    marked = marked_processes("AIRFLOW_HOME", str(home))
    stop_processes(marked, grace_s=10)
    if state_dir.is_dir():
        for cdir in sorted(state_dir.glob("local-*")):
            if (cdir / local_cluster.CLUSTER_FILE).is_file():
                with contextlib.suppress(LookupError, OSError, ValueError):
                    local_cluster.terminate_cluster(
                        state_dir, cdir.name, reason="make demo ended", grace_s=5
                    )
    stop_processes(marked_processes("AIRFLOW_HOME", str(home)), grace_s=5)
    shutil.rmtree(home, ignore_errors=True)


def spawn_watchdog(home: Path, state_dir: Path) -> dict[str, Any]:
    """Start, in a session of its own (a kill of the caller's process group does not reach it),
    the process that runs `cleanup` once this one is gone; returns its process record."""
    owner = json.dumps(process_record(os.getpid()))
    env = os.environ | {"PYTHONPATH": REPO_PYTHONPATH}
    args = [sys.executable, "-m", __spec__.name, WATCHDOG_FLAG, owner]
    return spawn_detached(
        [*args, str(home), str(state_dir)],
        log_path=Path(tempfile.gettempdir()) / f"{home.name}.watchdog.log",
        env=env,
        cwd=REPO_ROOT,
    )


def watch(owner: dict[str, Any], home: Path, state_dir: Path) -> None:
    """The watchdog: wait for its caller (the demo, the refit) to exit, then clean up after it.
    When the caller ends normally it cleans up itself, then stops this process (SIGTERM) while
    it still waits."""
    while live_process(owner) is not None:
        time.sleep(0.2)
    cleanup(home, state_dir)
    Path(tempfile.gettempdir(), f"{home.name}.watchdog.log").unlink(missing_ok=True)


def stop_watchdog(record: dict[str, Any] | None, home: Path) -> None:
    """Once the caller's own cleanup is done (home gone): the watchdog has nothing left to do."""
    proc = live_process(record)
    if proc is None or home.exists():
        return  # home survived the cleanup: the watchdog retries once the caller is gone
    stop_processes([proc], grace_s=10)
    Path(tempfile.gettempdir(), f"{home.name}.watchdog.log").unlink(missing_ok=True)


def task_durations(home: Path, dag_id: str) -> dict[str, float]:
    """Seconds each task of the (only) run took, from the throwaway metadata database."""
    database = home / "airflow.db"
    if not database.is_file():
        return {}
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT task_id, (julianday(end_date) - julianday(start_date)) * 86400 "
            "FROM task_instance WHERE dag_id = ? AND start_date IS NOT NULL "
            "AND end_date IS NOT NULL",
            (dag_id,),
        ).fetchall()
    return {task_id: round(seconds, 1) for task_id, seconds in rows}


@dataclass(frozen=True)
class Outcome:
    code: int
    interrupted: str | None  # "interrupted" (Ctrl-C) or "terminated" (SIGTERM, SIGHUP)
    durations: dict[str, float]  # seconds per task
    seconds: float
    home: Path


def run_throwaway(lake: Lake, weights: str, dag_id: str, run: Callable[[dict], int]) -> Outcome:
    """`run(env)` (an `airflow dags test`) under a throwaway AIRFLOW_HOME, with the local
    backend and the lake; whatever ends it, its Airflow and clusters are stopped and the home
    removed (also by the detached watchdog, should this process be killed)."""
    # Out of the repository, a fresh name: created only once the watchdog that removes it runs.
    home = Path(tempfile.gettempdir()) / f"{HOME_PREFIX}{uuid.uuid4().hex[:12]}"
    env = airflow_env(home, Path(lake.root), weights)
    env[local_cluster.OWNER_ENV] = str(os.getpid())  # its clusters end when this process does
    state_dir = Path(env["FRUITS_LOCAL_STATE_DIR"])
    watchdog = None
    started = time.time()
    interrupted = None
    durations: dict[str, float] = {}
    try:
        watchdog = spawn_watchdog(home, state_dir)
        home.mkdir(mode=0o700)
        print(f"airflow:  throwaway AIRFLOW_HOME {home} (removed when the run ends)", flush=True)
        code = run(env)
        durations = task_durations(home, dag_id)
    except KeyboardInterrupt:
        code, interrupted = 130, "interrupted"
    except SystemExit as exc:  # SIGTERM or SIGHUP, see exit_on_signal
        code = exc.code if isinstance(exc.code, int) else 1
        interrupted = "terminated"
    finally:
        cleanup(home, state_dir)
        stop_watchdog(watchdog, home)
    return Outcome(code, interrupted, durations, time.time() - started, home)


def exit_on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM and SIGHUP end the demo (or the refit) as Ctrl-C does: through its cleanup."""
    raise SystemExit(128 + signum)


if __name__ == "__main__" and sys.argv[1:2] == [WATCHDOG_FLAG]:
    _, _, owner_json, home_dir, clusters_dir = sys.argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the caller's to handle
    watch(json.loads(owner_json), Path(home_dir), Path(clusters_dir))
