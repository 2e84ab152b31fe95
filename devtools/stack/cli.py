"""The command line of the stack (`python -m devtools.stack start|stop|airflow`), and the
`airflow` CLI run safely against a stack's SQLite database."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from devtools.airflow_env import choose_weights
from devtools.stack.components import start, stop
from devtools.stack.config import (
    DAG_ID,
    LOGIN_FILE,
    Stack,
    StackConfig,
    airflow_env,
    read_stack,
)
from fruits_pipeline.settings import REPO_ROOT, PipelineSettings

__all__ = ["airflow_cli", "main", "with_backfill_limit"]

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
    with the stack's environment `env` (`config.airflow_env`), whose run limit backfills get."""
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
            f"    -m devtools.stack airflow --home {stack.home} backfill create \\",
            f"    --dag-id {DAG_ID} --from-date D1T00:00 --to-date D3T23:59",
            "    (`make airflow-cli ARGS=\"backfill create ...\"` for the default home; a backfill",
            "    without --max-active-runs gets FRUITS_MAX_ACTIVE_RUNS)",
            "  stop everything with: make airflow-stop",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", default=str(REPO_ROOT / ".airflow"), help="AIRFLOW_HOME")
    parser = argparse.ArgumentParser(prog="python -m devtools.stack")
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
        weights = choose_weights(args.weights or os.environ.get("FRUITS_WEIGHTS"))
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
