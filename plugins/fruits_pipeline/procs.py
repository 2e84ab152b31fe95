"""Processes that outlive their caller, found again later by record or by marker.

The local backend's clusters and step runners, `make demo`'s watchdog and the local Airflow stack
start processes in one Python process and check on or stop them from another. So a process is
kept as a record (its pid with its start time, which tells it apart from a later process reusing
the pid) in a JSON file written atomically, or found by a marker variable in its environment,
which its descendants inherit even when they leave its process group or session. Such a
process logs to files, where a failure is read back from.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "error_excerpt",
    "free_port",
    "live_process",
    "log_tails",
    "marked_processes",
    "process_record",
    "read_json",
    "spawn_detached",
    "stop_processes",
    "with_descendants",
    "write_json",
]

HOST = "127.0.0.1"
_TRACEBACK = "Traceback (most recent call last):"
# Runs a command in a new session and exits at once, so the command is re-parented to init: it
# outlives the caller and never lingers as the caller's zombie.
_LAUNCHER = """\
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    proc = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
print(proc.pid)
"""


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> None:
    """Write via a temporary file and a rename, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def process_record(pid: int) -> dict[str, Any]:
    """A pid with its start time, which tells the process apart from a later one reusing the pid."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        create_time = None
    return {"pid": pid, "create_time": create_time}


def live_process(record: Mapping[str, Any] | None) -> psutil.Process | None:
    """The recorded process if it still runs (a zombie does not count), else None."""
    if not record or record["create_time"] is None:
        return None
    try:
        proc = psutil.Process(record["pid"])
        # Start times derive from the boot time, which clock adjustments can shift slightly.
        if abs(proc.create_time() - record["create_time"]) > 1.0:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def spawn_detached(
    args: list[str], *, log_path: Path, env: dict[str, str], cwd: Path
) -> dict[str, Any]:
    """Start a command in its own session, outliving the caller; returns its process record."""
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log_path), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return process_record(int(launched.stdout))


def marked_processes(name: str, value: str) -> list[psutil.Process]:
    """Running processes (but this one) whose environment has name=value."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(name) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def with_descendants(procs: Iterable[psutil.Process]) -> dict[int, psutil.Process]:
    """The processes and all their descendants by pid, this process left out."""
    found = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            found.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
    found.pop(os.getpid(), None)
    return found


def stop_processes(
    procs: Iterable[psutil.Process],
    grace_s: float,
    *,
    descendants: bool = True,
    kill_wait_s: float = 5,
) -> list[str]:
    """SIGTERM the processes (and their descendants unless told not to); SIGKILL whatever
    outlives grace_s, then wait up to kill_wait_s for it. Returns a line per process killed."""
    targets = list(with_descendants(procs).values()) if descendants else list(procs)
    for proc in targets:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(targets, timeout=grace_s)
    killed = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            killed.append(f"killed {proc.pid} ({' '.join(proc.cmdline())[:80]})")
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=kill_wait_s)
    return killed


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def log_tails(log_dir: Path, lines: int) -> str:
    """The last lines of every `*.log` of the folder, each under a header naming its file."""
    tails = []
    for path in sorted(log_dir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {path} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "\n".join(tails)


def error_excerpt(log_path: Path, max_lines: int = 15) -> str:
    """The last Python traceback of the log, else its last lines mentioning an error."""
    with open(log_path, "rb") as log_file:
        log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - 65536))
        lines = log_file.read().decode(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if starts:
        block = lines[starts[-1] :]
        # The exception line is the first one after the header that is not indented.
        end = next((i for i, line in enumerate(block) if i and line[:1].strip()), len(block) - 1)
        return "\n".join([block[0], *block[1 : end + 1][-(max_lines - 1) :]])
    errors = [line for line in lines if "error" in line.lower() or "exception" in line.lower()]
    return "\n".join((errors or lines)[-5:])
