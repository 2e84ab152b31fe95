"""What a stack runs with: its configuration, the environment of its components and the files
it keeps in its home (the stack record, the admin password, the environment file)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.airflow_env import REPO_PYTHONPATH, base_env
from devtools.stack.postgres import database_url
from fruits_pipeline.procs import HOST, read_json, write_json
from fruits_pipeline.settings import REPO_ROOT

__all__ = [
    "Stack",
    "StackConfig",
    "airflow_env",
    "ensure_password",
    "read_stack",
    "stack_variables",
    "write_env_file",
    "write_stack",
]

DAG_ID = "fruits_features"
USER = "admin"
STACK_FILE = "airflow-stack.json"
LOGIN_FILE = "simple_auth_manager_passwords.json"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
# Every process the stack starts, and their descendants, carry STACK_ENV=<home>: stop finds
# them all by it, even those that left the process group (the Spark clusters do).
STACK_ENV = "FRUITS_AIRFLOW_STACK"
# `source <home>/env` sets the stack's environment in a shell, for the plain `airflow` CLI.
ENV_FILE = "env"
# Holds airflow_local_settings.py, which every component and CLI command of the stack imports:
# a backfill created without a run limit gets its DAG's (see that module).
LOCAL_SETTINGS_DIR = REPO_ROOT / "config"
# Set for every process the stack starts but not written to the environment file: it would
# mark the user's own commands as the stack's, for `stop` to end.
_NOT_IN_ENV_FILE = {STACK_ENV}


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """What a stack runs with. `env` adds to (and wins over) the computed environment."""

    home: Path
    lake: Path
    port: int = 8080
    state_dir: Path | None = None  # default: <home>/clusters
    weights: str | None = None  # default: the settings' default (FRUITS_WEIGHTS or ImageNet)
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    db_port: int | None = None  # PostgreSQL's port on 127.0.0.1: chosen free by `start`

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
    postgres: dict[str, Any] | None = None  # the server's record: pid, create_time, port, ...

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"


def airflow_env(config: StackConfig) -> dict[str, str]:
    """The environment of every component (and so of every task and Spark cluster).

    The caller's FRUITS_* settings pass through; its AIRFLOW_* variables do not (they would
    point at another Airflow): further Airflow options go in `<home>/airflow.cfg` or
    `config.env`. The metadata database is the stack's PostgreSQL on `config.db_port`, with
    the password kept in the home (`start` chooses the port and writes the password).
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return inherited | stack_variables(config)


def stack_variables(config: StackConfig) -> dict[str, str]:
    """What the stack sets in its components' environment, over the caller's."""
    home = Path(config.home).resolve()
    if config.db_port is None:
        raise ValueError("no database port: the stack's environment exists once it started")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        **base_env(home, database_url(home, config.db_port)),
        "PYTHONPATH": os.pathsep.join([REPO_PYTHONPATH, str(LOCAL_SETTINGS_DIR)]),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor forks this many workers up front; a few runs need far fewer.
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / LOGIN_FILE),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{config.port}/execution/",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(config.port),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{config.port}",
        STACK_ENV: str(home),
        **{k: v for k, v in os.environ.items() if k.startswith("FRUITS_")},
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


def read_stack(home: Path) -> Stack | None:
    """The stack recorded in the home, or None when none was started (or it was stopped)."""
    path = Path(home) / STACK_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    passwords = Path(data["home"]) / LOGIN_FILE
    return Stack(
        home=Path(data["home"]),
        url=data["url"],
        user=data["user"],
        password=read_json(passwords)[data["user"]] if passwords.is_file() else "",
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
            db_port=(data.get("postgres") or {}).get("port"),
        ),
        postgres=data.get("postgres"),
    )


def write_stack(stack: Stack) -> None:
    """Record the stack in its home (atomically: `stop` may read it at any time)."""
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
        "postgres": stack.postgres,
    }
    write_json(stack.home / STACK_FILE, data)


def env_file_text(config: StackConfig) -> str:
    """Shell lines setting the stack's environment: the caller's AIRFLOW* variables unset,
    `stack_variables` exported (but the mark of the stack's own processes), the stack's bin
    folder first on PATH."""
    variables = stack_variables(config)
    bin_dir = variables.pop("PATH").split(os.pathsep, 1)[0]
    lines = [
        "# The environment of a running Airflow stack (devtools.stack): `source` it, then run",
        "# `airflow ...` on that stack. Written at each start, removed at stop; mode 600: it",
        "# holds the database password.",
        "unset $(env | sed -n 's/^\\(AIRFLOW[A-Za-z0-9_]*\\)=.*/\\1/p')",
        *(
            f"export {key}={shlex.quote(value)}"
            for key, value in sorted(variables.items())
            if key not in _NOT_IN_ENV_FILE
        ),
        f'export PATH={shlex.quote(bin_dir)}:"$PATH"',
    ]
    return "\n".join(lines) + "\n"


def write_env_file(config: StackConfig) -> Path:
    """`<home>/env` (mode 600, replaced atomically): see `env_file_text`."""
    path = Path(config.home).resolve() / ENV_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(env_file_text(config))
    os.replace(tmp, path)
    return path
