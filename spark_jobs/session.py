"""The Spark session of a job: whatever spark-submit set up, else local Spark on loopback."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pyspark.sql import SparkSession

LOCAL_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def launched_by_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands its gateway to Python through this variable.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(app_name: str, master: str | None = None) -> SparkSession:
    """A session for `app_name`: spark-submit's master, else `master`, else `local[*]`.

    A local session binds to 127.0.0.1 (Spark otherwise picks a non-loopback address) and has no
    web UI: nothing of a job listens beyond this machine.
    """
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Workers run this interpreter (with its packages), not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # Python workers import this package too; spark-submit would ship it with --py-files.
        package_parent = str(Path(__file__).resolve().parent.parent)
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if package_parent not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [package_parent, *paths] if p)
        builder = (
            builder.master(master or os.environ.get("FRUITS_SPARK_MASTER", "local[*]"))
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", os.environ.get("FRUITS_DRIVER_MEMORY", "2g"))
            # The JVM only moves bytes here; the work is in Python. Its C2 JIT compiler would take
            # a sizeable share of a short job's CPU time for code that runs little; C1 is enough.
            .config("spark.driver.extraJavaOptions", LOCAL_JAVA_OPTIONS)
        )
    return builder.getOrCreate()


def run_job(
    app_name: str,
    parse_args: Callable,
    run: Callable,
    summary_keys: Sequence[str],
    argv: list[str] | None = None,
) -> int:
    """A job's command line: parse, run in a session that is always stopped, print a summary
    (the `summary_keys` the run's manifest has)."""
    args = parse_args(argv)
    spark = spark_session(app_name, args.master)
    try:
        manifest = run(spark, args)
    finally:
        spark.stop()
    print(json.dumps({key: manifest[key] for key in summary_keys if key in manifest}))
    return 0
