"""The command line of the stack (`python -m devtools.stack start|stop|airflow`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from devtools.airflow_env import choose_weights
from devtools.stack.components import start, stop
from devtools.stack.config import (
    DAG_ID,
    ENV_FILE,
    LOGIN_FILE,
    Stack,
    StackConfig,
    airflow_env,
    read_stack,
)
from devtools.stack.postgres import DB_LOGIN_FILE
from fruits_pipeline.settings import REPO_ROOT

__all__ = ["main"]


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
            f"  metadata database: PostgreSQL 15 on 127.0.0.1:{stack.config.db_port}",
            f"  (its password in {stack.home / DB_LOGIN_FILE})",
            "  the airflow CLI on this stack, e.g. a backfill of days D1..D3 (or the trigger",
            "  form's Backfill):",
            f"    source {stack.home / ENV_FILE}",
            f"    airflow backfill create --dag-id {DAG_ID} \\",
            "      --from-date D1T00:00 --to-date D3T23:59",
            "    (without --max-active-runs, a backfill runs FRUITS_MAX_ACTIVE_RUNS days at once)",
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
        "airflow", parents=[home], help="run the airflow CLI on it (as `source <home>/env`)"
    )
    cli.add_argument("args", nargs=argparse.REMAINDER, help="arguments of `airflow`")
    args = parser.parse_args(argv)
    try:
        if args.command == "airflow":
            stack = read_stack(Path(args.home))
            if stack is None:
                raise RuntimeError(f"no Airflow runs from {args.home}: `make airflow` first")
            airflow = str(Path(sys.executable).with_name("airflow"))
            env = airflow_env(stack.config)
            return subprocess.run([airflow, *args.args], env=env, check=False).returncode
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
