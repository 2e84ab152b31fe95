"""A running Airflow 3 on this machine, with the project's DAG, the local backend and a local lake.

`make airflow` / `make airflow-stop`, and the tests that operate Airflow as its users do, use it:

    python -m devtools.airflow_stack start [--home .airflow] [--lake .lake] [--port 8080]
    python -m devtools.airflow_stack stop [--home .airflow]
    python -m devtools.airflow_stack airflow [--home .airflow] backfill create ...

`start` migrates the SQLite metadata database of AIRFLOW_HOME, then starts the four components
that `airflow standalone` runs (api-server, scheduler, dag-processor, triggerer) as one process
group, each logging to `<home>/logs/<component>.log`, and waits until they are healthy and the
DAG is parsed. The LocalExecutor runs on SQLite here (Airflow 3 allows it; one writer at a
time, fine for a few runs). Everything binds 127.0.0.1: the API server listens there and the
log-serving side processes (which would bind 0.0.0.0) are not started; the API server reads the
task logs from `<home>/logs` directly.

Login: SimpleAuthManager, user `admin` (role admin) with a password generated on the first
start and kept in `<home>/simple_auth_manager_passwords.json` (mode 600, under the git-ignored
home): no secret lives in the repository. The Spark clusters of the local backend keep their
state under `<home>/clusters` (`StackConfig.state_dir` to change it). The DAG starts paused.

SQLite: run the `airflow` CLI on the stack through `airflow_stack airflow ...` (`airflow_cli`):
plain `airflow backfill create` fails now and then with "database is locked" while the
scheduler writes, and the partial backfill Airflow then deletes can crash the scheduler. A
backfill created that way without `--max-active-runs` gets FRUITS_MAX_ACTIVE_RUNS, not
Airflow's 10.

`stop` sends SIGTERM to the process group recorded in `<home>/airflow-stack.json`, terminates
the local clusters still alive under the state directory, then stops whatever process is still
marked with this home (FRUITS_AIRFLOW_STACK=<home> in its environment: everything the stack
started, Spark clusters included), and fails if one survives.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

from fruits_pipeline.settings import REPO_ROOT, PipelineSettings

__all__ = [
    "Stack",
    "StackConfig",
    "airflow_cli",
    "api_token",
    "dead_components",
    "leftover_processes",
    "read_stack",
    "start",
    "stop",
    "wait_ready",
]

DAG_ID = "fruits_features"
USER = "admin"
HOST = "127.0.0.1"
STACK_FILE = "airflow-stack.json"
LOGIN_FILE = "simple_auth_manager_passwords.json"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
# name -> arguments of `airflow`; the API server first, as it leads the process group.
COMPONENTS: dict[str, list[str]] = {
    "api-server": ["api-server", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
HEALTH_KEYS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
# Every process the stack starts, and their descendants, carry STACK_ENV=<home>: stop finds
# them all by it, even those that left the process group (the Spark clusters do).
STACK_ENV = "FRUITS_AIRFLOW_STACK"


# `airflow` with SQLite write transactions taken when they begin (BEGIN IMMEDIATE, waiting for
# the lock) instead of at their first write. Airflow creates backfill runs inside a SAVEPOINT,
# which pysqlite opens as a read transaction: when another component writes between its read
# and its write, SQLite refuses the upgrade at once ("database is locked"), Airflow deletes the
# runs it already committed, and a scheduler that had loaded one of them crashes.
_AIRFLOW_CLI = """
import sqlite3, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "connect")
def _no_implicit_begin(dbapi_connection, record):
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.isolation_level = None
        record.info["begin_immediate"] = True

@event.listens_for(Engine, "begin")
def _begin_immediate(conn):
    if conn.connection.info.get("begin_immediate"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

from airflow.__main__ import main
sys.argv[0] = "airflow"
sys.exit(main())
"""


def airflow_cli(*args: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The command running `airflow *args` safely against a stack's SQLite database; run it
    with the stack's environment `env` (`airflow_env`), whose run limit backfills get."""
    return [sys.executable, "-c", _AIRFLOW_CLI, *with_backfill_limit(list(args), env)]


def with_backfill_limit(args: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """`backfill create` without `--max-active-runs` gets FRUITS_MAX_ACTIVE_RUNS.

    Airflow gives a backfill its own limit, 10 runs at once unless told, whatever the DAG's
    `max_active_runs`: ten transient clusters. The UI's backfill form asks for the limit.
    """
    if args[:2] != ["backfill", "create"] or any(
        arg == "--max-active-runs" or arg.startswith("--max-active-runs=") for arg in args
    ):
        return args
    limit = PipelineSettings.from_env(env).max_active_runs
    return [*args, "--max-active-runs", str(limit)]


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """What a stack runs with. `env` adds to (and wins over) the computed environment."""

    home: Path
    lake: Path
    port: int = 8080
    state_dir: Path | None = None  # default: <home>/clusters
    weights: str | None = None  # default: the settings' default (FRUITS_WEIGHTS or ImageNet)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def cluster_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir else Path(self.home) / "clusters"


@dataclasses.dataclass(frozen=True)
class Stack:
    """A started stack, as recorded in `<home>/airflow-stack.json`."""

    home: Path
    url: str
    user: str
    password: str
    lake: Path
    state_dir: Path
    pgid: int
    processes: dict[str, dict[str, Any]]
    config: StackConfig

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"


def airflow_env(config: StackConfig) -> dict[str, str]:
    """The environment of every component (and so of every task and Spark cluster).

    The caller's FRUITS_* settings pass through; its AIRFLOW_* variables do not (they would
    point at another Airflow): further Airflow options go in `<home>/airflow.cfg` or
    `config.env`.
    """
    home = Path(config.home).resolve()
    bin_dir = str(Path(sys.executable).parent)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env = {
        **inherited,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor forks this many workers up front; a few runs need far fewer.
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / LOGIN_FILE),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{config.port}/execution/",
        # SQLite's lock timeout stays at its 5 s default: with 60 s, a trigger from the UI
        # took 60 s (its audit-log row, written by a second session of the request, waited
        # for the run's transaction until the timeout).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(config.port),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{config.port}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        STACK_ENV: str(home),
        "FRUITS_BACKEND": "local",
        "FRUITS_LAKE_ROOT": str(Path(config.lake).resolve()),
        "FRUITS_LOCAL_STATE_DIR": str(config.cluster_state_dir.resolve()),
        "SPARK_LOCAL_IP": HOST,
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }
    if config.weights:
        env["FRUITS_WEIGHTS"] = config.weights
    return env | dict(config.env)


def ensure_password(home: Path) -> str:
    """The admin password: generated once, kept in the home's passwords file (mode 600)."""
    path = home / LOGIN_FILE
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError):
            return json.loads(path.read_text())[USER]
    password = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({USER: password}) + "\n")
    return password


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


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


def _record(pid: int) -> dict[str, Any]:
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def _alive(record: Mapping[str, Any]) -> psutil.Process | None:
    """The recorded process if it still runs (not a zombie, not a later one with its pid)."""
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) > 1.0:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def read_stack(home: Path) -> Stack | None:
    """The stack recorded in the home, or None when none was started (or it was stopped)."""
    path = Path(home) / STACK_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    passwords = Path(data["home"]) / LOGIN_FILE
    return Stack(
        home=Path(data["home"]),
        url=data["url"],
        user=data["user"],
        password=json.loads(passwords.read_text())[data["user"]] if passwords.is_file() else "",
        lake=Path(data["lake"]),
        state_dir=Path(data["state_dir"]),
        pgid=data["pgid"],
        processes=data["processes"],
        config=StackConfig(
            home=Path(data["home"]),
            lake=Path(data["lake"]),
            port=data["port"],
            state_dir=Path(data["state_dir"]),
            weights=data["weights"],
            env=data["env"],
        ),
    )


def _log_tails(log_dir: Path, lines: int = 30) -> str:
    tails = []
    for path in sorted(log_dir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {path} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "\n".join(tails)


def start(config: StackConfig, *, timeout_s: float = 300) -> Stack:
    """Migrate the database, start the components and wait until they serve the DAG.

    Refuses to start a second stack on a home whose stack still runs. On any failure, stops
    what it started and raises with the end of every component's log.
    """
    home = Path(config.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    running = read_stack(home)
    if running and any(_alive(r) for r in running.processes.values()):
        raise RuntimeError(f"Airflow already runs from {home} at {running.url}; stop it first")
    if _port_taken(config.port):
        raise RuntimeError(f"port {config.port} of {HOST} is taken: choose another one")
    log_dir = home / "logs"
    log_dir.mkdir(exist_ok=True)
    password = ensure_password(home)
    env = airflow_env(config)
    airflow = str(Path(sys.executable).with_name("airflow"))
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
        raise RuntimeError(f"`airflow db migrate` failed:\n{_log_tails(log_dir)}")
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
            processes[name] = _record(proc.pid)
            stack = dataclasses.replace(stack, pgid=pgid, processes=processes)
            _write_stack(stack)
        wait_ready(stack, timeout_s=timeout_s)
    except BaseException as exc:
        tails = _log_tails(log_dir)
        with contextlib.suppress(Exception):
            stop(home)
        if not isinstance(exc, Exception):
            raise
        raise RuntimeError(f"Airflow did not start from {home}: {exc}\n{tails}") from exc
    return stack


def _write_stack(stack: Stack) -> None:
    data = {
        "home": str(stack.home),
        "url": stack.url,
        "user": stack.user,
        "lake": str(stack.lake),
        "state_dir": str(stack.state_dir),
        "pgid": stack.pgid,
        "processes": stack.processes,
        "port": stack.config.port,
        "weights": stack.config.weights,
        "env": dict(stack.config.env),
    }
    path = stack.home / STACK_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
    """The components of the stack that are no longer running."""
    return [name for name, record in stack.processes.items() if _alive(record) is None]


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
    marker = str(Path(home).resolve())
    mine = _ancestors()
    found = []
    for proc in psutil.process_iter(["pid", "environ", "status"]):
        if proc.pid in mine or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (proc.info["environ"] or {}).get(STACK_ENV) == marker:
            found.append(proc)
    return found


def _terminate(procs: Iterable[psutil.Process], grace_s: float) -> list[str]:
    """SIGTERM, then SIGKILL after grace_s; returns the processes that needed SIGKILL."""
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    killed = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            killed.append(f"killed {proc.pid} ({' '.join(proc.cmdline())[:80]})")
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    return killed


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
        state = local_cluster.read_json(path)
        alive = local_cluster.cluster_processes_alive(state_dir, cdir.name)
        if state["state"] != local_cluster.TERMINATED or alive:
            local_cluster.terminate_cluster(state_dir, cdir.name, reason="Airflow stopped")
            stopped.append(cdir.name)
    return stopped


def stop(home: Path, *, grace_s: float = 30) -> list[str]:
    """Stop the stack of this home and everything it started; returns what was stopped.

    SIGTERM to the recorded process group (only while a recorded component still leads or
    belongs to it: a stale file never signals a reused group id), then SIGKILL after grace_s;
    then the local clusters not terminated; then any process still marked with the home.
    Raises when one survives.
    """
    home = Path(home).resolve()
    stack = read_stack(home)
    report = []
    state_dir = stack.state_dir if stack else home / "clusters"
    if stack:
        recorded = [p for p in (_alive(r) for r in stack.processes.values()) if p is not None]
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
    survivors = leftover_processes(home)
    if survivors:
        raise RuntimeError(f"processes of {home} survive: {[p.pid for p in survivors]}")
    (home / STACK_FILE).unlink(missing_ok=True)
    return report


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def banner(stack: Stack) -> str:
    return "\n".join(
        [
            f"Airflow 3 is up: {stack.url}",
            f"  log in as {stack.user} / {stack.password}",
            f"  (password kept in {stack.home / LOGIN_FILE}; logs in {stack.log_dir})",
            f"  DAG {DAG_ID}: local Spark backend, lake {stack.lake}",
            f"  put photos under {stack.lake}/raw/dt=YYYY-MM-DD/<Label>/ and trigger the DAG with",
            "  that partition_date (the DAG starts paused: unpausing it schedules the daily run",
            "  for the previous day)",
            "  backfill days D1..D3: the trigger form's Backfill, or",
            f"    PYTHONPATH={REPO_ROOT / 'plugins'} {sys.executable} \\",
            f"    -m devtools.airflow_stack airflow --home {stack.home} backfill create \\",
            f"    --dag-id {DAG_ID} --from-date D1T00:00 --to-date D3T23:59",
            "    (`make airflow-cli ARGS=\"backfill create ...\"` for the default home; a backfill",
            "    without --max-active-runs gets FRUITS_MAX_ACTIVE_RUNS)",
            "  stop everything with: make airflow-stop",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", default=str(REPO_ROOT / ".airflow"), help="AIRFLOW_HOME")
    parser = argparse.ArgumentParser(prog="python -m devtools.airflow_stack")
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", parents=[home], help="start Airflow on 127.0.0.1")
    start_cmd.add_argument("--lake", default=str(REPO_ROOT / ".lake"), help="lake folder")
    start_cmd.add_argument("--port", type=int, default=8080, help="API server port")
    start_cmd.add_argument("--weights", help="default weights of the form: imagenet|random|path")
    commands.add_parser("stop", parents=[home], help="stop it and everything it started")
    cli = commands.add_parser(
        "airflow", parents=[home], help="run the airflow CLI on it, e.g. `backfill create ...`"
    )
    cli.add_argument("args", nargs=argparse.REMAINDER, help="arguments of `airflow`")
    args = parser.parse_args(argv)
    try:
        if args.command == "airflow":
            stack = read_stack(Path(args.home))
            if stack is None:
                raise RuntimeError(f"no Airflow runs from {args.home}: `make airflow` first")
            env = airflow_env(stack.config)
            cli = airflow_cli(*args.args, env=env)
            return subprocess.run(cli, env=env, check=False).returncode
        if args.command == "stop":
            stopped = stop(Path(args.home))
            print(f"Stopped: {', '.join(stopped)}" if stopped else f"Nothing ran from {args.home}")
            return 0
        weights = args.weights or os.environ.get("FRUITS_WEIGHTS")
        if not weights:
            from devtools.demo import choose_weights

            weights = choose_weights(None)
        config = StackConfig(
            home=Path(args.home), lake=Path(args.lake), port=args.port, weights=weights
        )
        Path(args.lake).mkdir(parents=True, exist_ok=True)
        print(f"Starting Airflow from {config.home.resolve()} (logs in its logs/) ...", flush=True)
        stack = start(config)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(banner(stack) + f"\n  default weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
