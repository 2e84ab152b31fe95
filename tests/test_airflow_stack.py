"""`devtools.stack` without starting Airflow: its environment, the password, and
what `stop` may and may not signal. The running stack is tested in test_airflow_running.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from devtools.stack import cli, components
from devtools.stack import config as stack_config
from fruits_pipeline.settings import REPO_ROOT


def config(tmp_path: Path, **kwargs) -> stack_config.StackConfig:
    return stack_config.StackConfig(home=tmp_path / "home", lake=tmp_path / "lake", **kwargs)


def sleeper(env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in a process group of its own, as a stale record's group id could name."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env=env,
        process_group=0,
        stdin=subprocess.DEVNULL,
    )


def test_environment_binds_loopback_and_ignores_the_callers_airflow(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", "/elsewhere")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "64")
    monkeypatch.setenv("FRUITS_DAILY_AT", "03:30")
    cfg = config(tmp_path, port=18123, weights="random", env={"FRUITS_MAX_ACTIVE_RUNS": "3"})
    env = stack_config.airflow_env(cfg)
    home = str((tmp_path / "home").resolve())
    assert {k: v for k, v in env.items() if k.startswith("AIRFLOW")} == {
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__AUTH_MANAGER": stack_config.SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": (
            f"{home}/simple_auth_manager_passwords.json"
        ),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:18123/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "18123",
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:18123",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": f"{home}/logs",
    }
    assert env["FRUITS_AIRFLOW_STACK"] == home
    assert env["FRUITS_BACKEND"] == "local"
    assert env["FRUITS_LAKE_ROOT"] == str((tmp_path / "lake").resolve())
    assert env["FRUITS_LOCAL_STATE_DIR"] == f"{home}/clusters"
    assert env["FRUITS_WEIGHTS"] == "random"
    assert env["FRUITS_DAILY_AT"] == "03:30"  # the caller's pipeline settings pass through
    assert env["FRUITS_MAX_ACTIVE_RUNS"] == "3"
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_the_password_is_generated_once_and_kept_private(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    password = stack_config.ensure_password(home)
    path = home / stack_config.LOGIN_FILE
    assert len(password) >= 16
    assert json.loads(path.read_text()) == {"admin": password}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stack_config.ensure_password(home) == password


def test_start_refuses_a_port_already_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} of 127.0.0.1 is taken"):
            components.start(config(tmp_path, port=port))
    assert not (tmp_path / "home" / stack_config.STACK_FILE).exists()


def test_stop_with_nothing_started_does_nothing(tmp_path):
    assert components.stop(tmp_path / "home") == []


def test_stop_never_signals_a_process_group_of_a_stale_record(tmp_path):
    """The record's processes are gone and their group id now belongs to someone else."""
    home = tmp_path / "home"
    home.mkdir()
    other = sleeper()
    try:
        record = {
            "home": str(home),
            "url": "http://127.0.0.1:1",
            "user": "admin",
            "lake": str(tmp_path / "lake"),
            "state_dir": str(home / "clusters"),
            "pgid": other.pid,
            # Same pid, another start time: not the process recorded.
            "processes": {"api-server": {"pid": other.pid, "create_time": 1.0}},
            "port": 1,
            "weights": None,
            "env": {},
        }
        (home / stack_config.STACK_FILE).write_text(json.dumps(record))
        assert components.stop(home) == []
        assert other.poll() is None
        assert not (home / stack_config.STACK_FILE).exists()
    finally:
        other.kill()
        other.wait()


def test_stop_stops_what_the_stack_left_behind(tmp_path):
    """A process marked with the home (a task, a Spark worker) outside the process group."""
    home = (tmp_path / "home").resolve()
    home.mkdir()
    left = sleeper(os.environ | {stack_config.STACK_ENV: str(home)})
    unrelated = sleeper(os.environ | {stack_config.STACK_ENV: str(tmp_path / "other")})
    try:
        deadline = time.monotonic() + 30
        while [p.pid for p in components.leftover_processes(home)] != [left.pid]:
            assert time.monotonic() < deadline, "the marked process never showed up"
            time.sleep(0.1)
        assert components.stop(home) == [f"pid {left.pid}"]
        assert left.wait(timeout=10) is not None
        assert components.leftover_processes(home) == []
        assert psutil.Process(unrelated.pid).status() != psutil.STATUS_ZOMBIE
    finally:
        for proc in (left, unrelated):
            proc.kill()
            proc.wait()


def test_a_backfill_gets_the_dags_run_limit_unless_it_names_one():
    env = {"FRUITS_MAX_ACTIVE_RUNS": "3"}
    create = ["backfill", "create", "--dag-id", "fruits_features"]
    assert cli.with_backfill_limit(create, env) == [*create, "--max-active-runs", "3"]
    named = [*create, "--max-active-runs", "5"]
    assert cli.with_backfill_limit(named, env) == named
    assert cli.with_backfill_limit([*create, "--max-active-runs=5"], env)[-1] == (
        "--max-active-runs=5"
    )
    # Other commands pass through untouched.
    assert cli.with_backfill_limit(["dags", "list"], env) == ["dags", "list"]
    command = cli.airflow_cli(*create, env=env)
    assert command[-2:] == ["--max-active-runs", "3"]


def test_an_invalid_run_limit_is_refused_by_name():
    with pytest.raises(ValueError, match="FRUITS_MAX_ACTIVE_RUNS"):
        cli.with_backfill_limit(["backfill", "create"], {"FRUITS_MAX_ACTIVE_RUNS": "0"})
