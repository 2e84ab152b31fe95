"""Processes a test started, or that should be gone: waiting for them, finding them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

# Spark jobs for the steps of the local backend's tests, by file name.
SCRIPTS = {
    # Runs Python on the executors too, as the real jobs do.
    "count.py": """
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("count").getOrCreate()
total = spark.sparkContext.parallelize(range(100), 2).map(lambda x: x * 2).sum()
with open(sys.argv[1], "a") as out:
    out.write(f"{sys.argv[2]} {total}\\n")
spark.stop()
""",
    "append.py": """
import sys
with open(sys.argv[1], "a") as out:
    out.write(f"{sys.argv[2]}\\n")
""",
    "fail.py": """
raise RuntimeError("step exploded on purpose")
""",
    "sleep.py": """
import os, sys, time
with open(sys.argv[1], "w") as out:
    out.write(str(os.getpid()))
time.sleep(600)
""",
    # Keeps a driver, an executor and its Python worker daemon busy.
    "hold.py": """
import os, sys, time
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("hold").getOrCreate()
spark.sparkContext.parallelize(range(4), 2).map(lambda x: x + 1).collect()
with open(sys.argv[1], "w") as out:
    out.write(str(os.getpid()))
time.sleep(600)
""",
}


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """The first true value of `predicate`, polled every half second; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s")
        time.sleep(0.5)
    return result


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_processes(
    matches: Callable[[str, dict[str, str]], bool], *, width: int = 300
) -> list[str]:
    """"pid: command line" of the processes (not zombies, not this one) for which
    `matches(command line, environment)` holds."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if matches(cmdline, proc.info["environ"] or {}):
            found.append(f"{proc.pid}: {cmdline[:width]}")
    return found
