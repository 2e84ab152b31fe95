"""The local backend: a transient Spark standalone cluster on 127.0.0.1 with EMR-like steps.

One cluster is shared by the step tests; the lifecycle tests (idle timeout, terminate, vanished
state directory) start their own. Every cluster is terminated at teardown, even on failure.
"""

import ipaddress
import json
import os
import shutil
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fruits_pipeline.backends.local.cluster import (
    cluster_processes_alive,
    describe_cluster,
    start_cluster,
    terminate_cluster,
)
from fruits_pipeline.backends.local.runner import add_steps, cancel_steps, describe_step
from fruits_pipeline.steps import emr_step
from tests.support.processes import SCRIPTS, is_gone, wait_for

pytestmark = pytest.mark.slow

# Small JVMs tuned for start-up: the test jobs are tiny.
SPARK_OPTS = [
    "--driver-memory", "512m",
    "--driver-java-options", "-XX:TieredStopAtLevel=1",
    "--conf", "spark.executor.memory=512m",
    "--conf", "spark.executor.extraJavaOptions=-XX:TieredStopAtLevel=1",
    "--conf", "spark.ui.enabled=false",
]  # fmt: skip
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}

def _stop(state_dir: Path, cluster_id: str) -> None:
    """Terminate a cluster; kill its processes directly when its state is gone."""
    try:
        terminate_cluster(state_dir, cluster_id)
    except LookupError:
        for pid in cluster_processes_alive(state_dir, cluster_id):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clusters")


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    for name, code in SCRIPTS.items():
        (folder / name).write_text(code)
    return folder


@pytest.fixture(scope="module")
def cluster(state_dir: Path) -> Iterator[dict[str, Any]]:
    info = start_cluster(state_dir, idle_timeout_s=300, worker_memory="1g")
    yield info
    _stop(state_dir, info["cluster_id"])


@pytest.fixture
def new_cluster(state_dir: Path) -> Iterator[Callable[..., dict[str, Any]]]:
    """Start clusters of the test's own, terminated at teardown (or, should the teardown never
    run, by their watchdog after two idle minutes)."""
    started = []

    def start(idle_timeout_s: float = 120) -> dict[str, Any]:
        info = start_cluster(state_dir, idle_timeout_s=idle_timeout_s, worker_memory="1g")
        started.append(info["cluster_id"])
        return info

    yield start
    for cluster_id in started:
        _stop(state_dir, cluster_id)


def wait_for_state(
    describe: Callable[[], dict], states: set[str], timeout_s: float, what: str
) -> dict:
    return wait_for(lambda: (found := describe())["state"] in states and found, timeout_s, what)


def step(name: str, script: Path, *args: Path | str) -> dict[str, Any]:
    return {"name": name, "args": ["spark-submit", *SPARK_OPTS, str(script), *map(str, args)]}


def wait_for_steps(state_dir: Path, cluster_id: str, step_ids: list[str]) -> list[dict]:
    def finished() -> list[dict] | None:
        steps = [describe_step(state_dir, cluster_id, step_id) for step_id in step_ids]
        return steps if all(s["state"] in FINAL for s in steps) else None

    return wait_for(finished, 180, f"end of steps {step_ids}")


def processes_mentioning(*needles: str) -> list[str]:
    """Live processes whose command line or working directory contains one of the needles,
    found without the backend's own bookkeeping."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if any(needle in text for needle in needles):
            found.append(f"{proc.pid}: {text[:300]}")
    return found


def cluster_leftovers(info: dict[str, Any]) -> list[str]:
    return processes_mentioning(info["cluster_dir"], info["master_url"].removeprefix("spark://"))


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "no command", "args": []},
        {"name": "not spark-submit", "args": ["python", "job.py"]},
        emr_step("continue on failure", ["spark-submit", "job.py"])
        | {"ActionOnFailure": "CONTINUE"},
    ],
)
def test_steps_must_be_spark_submit_commands(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        add_steps(tmp_path, "local-000000000000", [bad])


def test_cluster_registers_a_worker_on_loopback(cluster: dict, state_dir: Path) -> None:
    info = describe_cluster(state_dir, cluster["cluster_id"])
    assert info["state"] == "WAITING"
    assert info["cluster_id"].startswith("local-")
    assert info["master_url"].startswith("spark://127.0.0.1:")
    assert (state_dir / info["cluster_id"] / "cluster.json").is_file()
    with urllib.request.urlopen(f"{info['master_web_url']}/json/", timeout=5) as resp:  # noqa: S310
        status = json.load(resp)
    assert status["aliveworkers"] == 1
    assert status["workers"][0]["host"] == "127.0.0.1"
    pids = cluster_processes_alive(state_dir, info["cluster_id"])
    assert {info["processes"][role]["pid"] for role in ("master", "worker", "watchdog")} <= set(
        pids
    )
    listening = [
        conn.laddr.ip
        for pid in pids
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening
    assert all(is_loopback(ip) for ip in listening), listening


def test_steps_run_in_order_and_complete(
    cluster: dict, state_dir: Path, scripts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    step_ids = add_steps(
        state_dir,
        cluster["cluster_id"],
        [
            step("count", scripts / "count.py", out, "first"),
            step("append", scripts / "append.py", out, "second"),
        ],
    )
    first, second = wait_for_steps(state_dir, cluster["cluster_id"], step_ids)
    assert (first["state"], second["state"]) == ("COMPLETED", "COMPLETED"), first["reason"]
    assert out.read_text().splitlines() == ["first 9900", "second"]
    assert first["ended_at"] <= second["started_at"]
    assert "SparkContext" in Path(first["log_path"]).read_text()
    assert Path(second["log_path"]).is_file()
    assert describe_cluster(state_dir, cluster["cluster_id"])["state"] == "WAITING"


def test_failed_step_cancels_the_later_ones(
    cluster: dict, state_dir: Path, scripts: Path, tmp_path: Path
) -> None:
    never = tmp_path / "never.txt"
    failing = step("fail", scripts / "fail.py")
    # The EMR shape of a step is accepted too.
    steps = [emr_step("fail", failing["args"]), step("after", scripts / "append.py", never, "ran")]
    step_ids = add_steps(state_dir, cluster["cluster_id"], steps)
    failed, after = wait_for_steps(state_dir, cluster["cluster_id"], step_ids)
    assert failed["state"] == "FAILED"
    assert "exit code 1" in failed["reason"]
    assert "RuntimeError: step exploded on purpose" in failed["reason"]
    assert after["state"] == "CANCELLED"
    assert after["started_at"] is None
    assert not never.exists()


def sleeper_then_append(
    state_dir: Path, cluster: dict, scripts: Path, pid_file: Path, out: Path
) -> tuple[str, str, int]:
    """Add a step that sleeps, then one that appends "ran" to `out`; once the sleeper's driver
    wrote its pid to `pid_file`, return both step ids and that pid."""
    sleeper_id, next_id = add_steps(
        state_dir,
        cluster["cluster_id"],
        [
            step("sleep", scripts / "sleep.py", pid_file),
            step("next", scripts / "append.py", out, "ran"),
        ],
    )
    driver_pid = int(wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 60, "driver"))
    return sleeper_id, next_id, driver_pid


def test_cancel_kills_the_running_step(
    cluster: dict, state_dir: Path, scripts: Path, tmp_path: Path
) -> None:
    pid_file, out = tmp_path / "sleeper.pid", tmp_path / "out.txt"
    sleeper_id, next_id, driver_pid = sleeper_then_append(
        state_dir, cluster, scripts, pid_file, out
    )
    assert describe_step(state_dir, cluster["cluster_id"], sleeper_id)["state"] == "RUNNING"

    assert cancel_steps(state_dir, cluster["cluster_id"], [sleeper_id]) == [sleeper_id]

    assert describe_step(state_dir, cluster["cluster_id"], sleeper_id)["state"] == "CANCELLED"
    assert is_gone(driver_pid)
    assert processes_mentioning(str(pid_file)) == []
    # As on EMR, cancelling one step leaves the later ones to run.
    (_, following) = wait_for_steps(state_dir, cluster["cluster_id"], [sleeper_id, next_id])
    assert following["state"] == "COMPLETED"
    assert out.read_text() == "ran\n"


def test_killed_runner_fails_its_step_and_stops_it(
    cluster: dict, state_dir: Path, scripts: Path, tmp_path: Path
) -> None:
    pid_file, never = tmp_path / "sleeper.pid", tmp_path / "never.txt"
    sleeper_id, next_id, _ = sleeper_then_append(state_dir, cluster, scripts, pid_file, never)
    runner_pid = describe_cluster(state_dir, cluster["cluster_id"])["processes"]["runner"]["pid"]

    os.kill(runner_pid, signal.SIGKILL)

    sleeper = wait_for_state(
        lambda: describe_step(state_dir, cluster["cluster_id"], sleeper_id),
        FINAL,
        30,
        "end of the orphaned step",
    )
    assert (sleeper["state"], sleeper["reason"]) == ("FAILED", "step runner died")
    assert describe_step(state_dir, cluster["cluster_id"], next_id)["state"] == "CANCELLED"
    assert processes_mentioning(str(pid_file)) == []
    assert not never.exists()
    # The next add_steps starts a new runner.
    out = tmp_path / "out.txt"
    (again,) = add_steps(
        state_dir, cluster["cluster_id"], [step("again", scripts / "append.py", out, "ran")]
    )
    assert wait_for_steps(state_dir, cluster["cluster_id"], [again])[0]["state"] == "COMPLETED"


def test_idle_timeout_terminates_the_cluster(new_cluster, state_dir: Path) -> None:
    info = new_cluster(idle_timeout_s=3)

    ended = wait_for_state(
        lambda: describe_cluster(state_dir, info["cluster_id"]),
        {"TERMINATED"},
        60,
        "idle termination",
    )

    assert ended["reason"] == "idle timeout"
    wait_for(lambda: not cluster_processes_alive(state_dir, info["cluster_id"]), 20, "exit")
    assert cluster_leftovers(info) == []
    # The teardown task still terminates it, which is fine.
    assert terminate_cluster(state_dir, info["cluster_id"])["reason"] == "idle timeout"


def test_terminate_stops_everything_and_is_idempotent(
    new_cluster, state_dir: Path, scripts: Path, tmp_path: Path
) -> None:
    info = new_cluster()
    pid_file, never = tmp_path / "hold.pid", tmp_path / "never.txt"
    hold_id, next_id = add_steps(
        state_dir,
        info["cluster_id"],
        [
            step("hold", scripts / "hold.py", pid_file),
            step("next", scripts / "append.py", never, "x"),
        ],
    )
    wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 120, "running Spark job")
    executors = processes_mentioning(str(Path(info["cluster_dir"]) / "work"))
    assert executors, "the step should have an executor on the worker"

    ended = terminate_cluster(state_dir, info["cluster_id"])

    assert (ended["state"], ended["reason"]) == ("TERMINATED", "user request")
    assert cluster_processes_alive(state_dir, info["cluster_id"]) == []
    assert cluster_leftovers(info) == []
    assert processes_mentioning(str(pid_file)) == []
    for step_id in (hold_id, next_id):
        assert describe_step(state_dir, info["cluster_id"], step_id)["state"] == "CANCELLED"
    assert not never.exists()
    again = terminate_cluster(state_dir, info["cluster_id"], reason="twice")
    assert (again["state"], again["reason"]) == ("TERMINATED", "user request")
    assert cluster_processes_alive(state_dir, info["cluster_id"]) == []
    with pytest.raises(RuntimeError, match="TERMINATED"):
        add_steps(state_dir, info["cluster_id"], [step("late", scripts / "append.py", never, "x")])


def test_vanished_state_dir_stops_the_cluster(new_cluster, state_dir: Path) -> None:
    info = new_cluster()

    shutil.rmtree(info["cluster_dir"])

    wait_for(lambda: not cluster_processes_alive(state_dir, info["cluster_id"]), 30, "exit")
    assert cluster_leftovers(info) == []
