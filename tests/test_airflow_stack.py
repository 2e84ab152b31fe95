"""`devtools.stack` without starting Airflow: its environment and environment file, the
passwords, its PostgreSQL on its own, the backfill limit of its local settings, and what `stop`
may and may not signal. The running stack is tested in test_airflow_running.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devtools.stack import components, postgres
from devtools.stack import config as stack_config
from fruits_pipeline.settings import REPO_ROOT
from tests.support.commands import run_command
from tests.support.processes import is_gone, live_processes


def config(tmp_path: Path, **kwargs) -> stack_config.StackConfig:
    return stack_config.StackConfig(home=tmp_path / "home", lake=tmp_path / "lake", **kwargs)


def started_config(tmp_path: Path, **kwargs) -> stack_config.StackConfig:
    """A config as `start` completes it: a database port, the password in the home."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    postgres.ensure_db_password(home)
    return config(tmp_path, db_port=15432, **kwargs)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A temporary folder the `postgres` user can reach when root starts the server (pytest's
    own tmp_path sits under a folder only root may enter)."""
    path = Path(tempfile.mkdtemp(prefix="fruits-stack-test-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
    cfg = started_config(
        tmp_path, port=18123, weights="random", env={"FRUITS_MAX_ACTIVE_RUNS": "3"}
    )
    env = stack_config.airflow_env(cfg)
    home = str((tmp_path / "home").resolve())
    db_password = (tmp_path / "home" / postgres.DB_LOGIN_FILE).read_text().strip()
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
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://airflow:{db_password}@127.0.0.1:15432/airflow"
        ),
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
    # The stack's local settings (the backfill limit) importable by every component and CLI.
    assert env["PYTHONPATH"].split(os.pathsep) == [
        str(REPO_ROOT),
        str(REPO_ROOT / "plugins"),
        str(REPO_ROOT / "config"),
    ]
    assert (REPO_ROOT / "config" / "airflow_local_settings.py").is_file()


def test_the_environment_needs_the_database_port(tmp_path):
    with pytest.raises(ValueError, match="no database port"):
        stack_config.airflow_env(config(tmp_path))


def test_the_environment_file_sets_the_stack_environment_for_the_plain_cli(tmp_path, monkeypatch):
    """`source <home>/env` in a shell that points at another Airflow: the shell then has the
    stack's variables (the caller's AIRFLOW* gone), the stack's `airflow` first on PATH, and
    not the mark of the stack's own processes, which `stop` would end."""
    cfg = started_config(tmp_path, port=18124, env={"FRUITS_MAX_ACTIVE_RUNS": "3"})
    path = stack_config.write_env_file(cfg)
    assert path == (tmp_path / "home" / "env").resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    expected = stack_config.airflow_env(cfg)
    shell_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": "/elsewhere",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////elsewhere/airflow.db",
    }
    done = run_command(
        ["bash", "-c", 'source "$0" && env -0 && command -v airflow', str(path)],
        env=shell_env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    *pairs, which = done.stdout.split("\0")
    sourced = dict(pair.split("=", 1) for pair in pairs)
    airflow_vars = {k: v for k, v in expected.items() if k.startswith("AIRFLOW")}
    assert {k: v for k, v in sourced.items() if k.startswith("AIRFLOW")} == airflow_vars
    for key in ("PYTHONPATH", "FRUITS_LAKE_ROOT", "FRUITS_MAX_ACTIVE_RUNS", "SPARK_LOCAL_IP"):
        assert sourced[key] == expected[key], key
    assert stack_config.STACK_ENV not in sourced
    assert sourced["PATH"] == f"{Path(sys.executable).parent}:/usr/bin:/bin"
    assert which.strip() == str(Path(sys.executable).with_name("airflow"))


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


def test_the_database_password_is_generated_once_and_kept_private(tmp_path):
    password = postgres.ensure_db_password(tmp_path)
    path = tmp_path / postgres.DB_LOGIN_FILE
    assert len(password) >= 32
    assert path.read_text() == password + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert postgres.ensure_db_password(tmp_path) == password
    assert postgres.database_url(tmp_path, 5999) == (
        f"postgresql+psycopg2://airflow:{password}@127.0.0.1:5999/airflow"
    )


# A backfill table and a dag table as Airflow's (the columns the settings read and write),
# in SQLite: the settings module's listener on every mapper, in a process of its own.
_BACKFILL_LIMIT_CHECK = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import airflow_local_settings  # noqa: F401  (what Airflow imports at start)

class Base(DeclarativeBase):
    pass

class Dag(Base):
    __tablename__ = "dag"
    dag_id: Mapped[str] = mapped_column(primary_key=True)
    max_active_runs: Mapped[int | None]

class Backfill(Base):
    __tablename__ = "backfill"
    id: Mapped[int] = mapped_column(primary_key=True)
    dag_id: Mapped[str]
    max_active_runs: Mapped[int] = mapped_column(default=10, nullable=False)

engine = sa.create_engine("sqlite://")
Base.metadata.create_all(engine)
with Session(engine) as session:
    session.add_all([Dag(dag_id="fruits_features", max_active_runs=3), Dag(dag_id="other")])
    session.commit()
    for dag_id, limit in [("fruits_features", None), ("fruits_features", 5), ("other", None),
                          ("missing", None)]:
        session.add(Backfill(dag_id=dag_id, max_active_runs=limit))
    session.commit()
    print([b.max_active_runs for b in session.scalars(sa.select(Backfill).order_by(Backfill.id))])
"""


def test_a_backfill_without_a_run_limit_gets_its_dags(tmp_path):
    """The stack's airflow_local_settings: `airflow backfill create` without --max-active-runs
    leaves the backfill's limit empty (Airflow's column default, 10, would apply); the DAG's
    `max_active_runs` fills it; a limit given is kept; a DAG without one gets Airflow's
    `[core] max_active_runs_per_dag` (16 by default)."""
    env = os.environ | {
        "PYTHONPATH": str(stack_config.LOCAL_SETTINGS_DIR),
        "AIRFLOW_HOME": str(tmp_path),
    }
    done = run_command(
        [sys.executable, "-c", textwrap.dedent(_BACKFILL_LIMIT_CHECK)], env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[3, 5, 16, 16]"


def test_postgres_runs_on_loopback_and_stops_with_nothing_left(reachable_dir):
    """The stack's database on its own: a cluster in the home (its folder private to the
    server's user), a password that is required, 127.0.0.1 only, no second server on the same
    cluster, and nothing left once stopped."""
    try:
        postgres.bindir()
    except RuntimeError as err:
        pytest.skip(str(err))
    import psycopg2

    home = reachable_dir / "home"
    home.mkdir()
    record = postgres.start_server(home)
    try:
        server = psutil.Process(record["pid"])
        backends = server.children(recursive=True)
        assert backends
        data_dir = home / "postgres" / "data"
        assert record["data_dir"] == str(data_dir)
        assert stat.S_IMODE((home / "postgres").stat().st_mode) == 0o700
        assert stat.S_IMODE((home / postgres.DB_LOGIN_FILE).stat().st_mode) == 0o600
        assert os.geteuid() != 0 or server.username() == "postgres"
        listening = {
            (conn.laddr.ip, conn.laddr.port)
            for conn in server.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        assert listening == {("127.0.0.1", record["port"])}
        password = postgres.ensure_db_password(home)
        connection = psycopg2.connect(
            host="127.0.0.1", port=record["port"], user="airflow", password=password,
            dbname="airflow",
        )  # fmt: skip
        with connection, connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            assert cursor.fetchone()[0].startswith("15.")
        connection.close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(
                host="127.0.0.1", port=record["port"], user="airflow", password="wrong",
                dbname="airflow",
            )  # fmt: skip
        with pytest.raises(RuntimeError, match="PostgreSQL already runs"):
            postgres.start_server(home)
    finally:
        stopped = postgres.stop_server(home, record)
    assert stopped
    assert all(is_gone(proc.pid) for proc in [server, *backends])
    assert postgres.postmaster(home) is None
    assert live_processes(lambda cmdline, _env: str(home) in cmdline) == []
    assert postgres.stop_server(home, record) is False
