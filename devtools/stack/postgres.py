"""The stack's metadata database: a PostgreSQL server of its own, on 127.0.0.1.

Debian's PostgreSQL 15 (`postgresql-15`, `scripts/install-postgresql.sh`), run from its
binaries (no system service, no Debian cluster tooling): the cluster lives in
`<home>/postgres/data`, its log in `<home>/logs/postgres.log`. The server listens on a TCP port
of 127.0.0.1 chosen free at each start, and on no unix socket; every connection authenticates
with SCRAM as the superuser `airflow`, whose password is generated once and kept in
`<home>/postgres-login` (mode 600, owned by whoever starts the stack). Airflow uses the database
`airflow`.

PostgreSQL refuses to run as root. Started by root (this machine kind, CI containers), `initdb`,
`pg_ctl` and so the server run as the system user `postgres`, which Debian's package creates for
its own clusters, through `setpriv` (util-linux, always installed: unlike `su`/`runuser`, no
PAM session, no login shell, the environment passed as given). The cluster's folder belongs to
that user (PostgreSQL wants its data directory owned by the user it runs as, mode 700); root
keeps the password file, reads the log and stops the server. That user must be able to reach
the home: `start` checks it and says so (a home under a folder closed to others, such as
pytest's /tmp/pytest-of-root, is not). Started by anyone else, everything runs as that user.

The server is no descendant of the Airflow components nor marked with the stack's home (pg_ctl
detaches it into a session of its own): the stack records it and stops it itself, after
everything else, with `pg_ctl stop` (fast shutdown: clients disconnected, then a checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from fruits_pipeline.procs import HOST, free_port, live_process, process_record

__all__ = [
    "DB_LOGIN_FILE",
    "DB_NAME",
    "DB_USER",
    "Server",
    "bindir",
    "database_url",
    "ensure_db_password",
    "postmaster",
    "start_server",
    "stop_server",
]

MAJOR = "15"
DEBIAN_BINDIR = Path(f"/usr/lib/postgresql/{MAJOR}/bin")
SYSTEM_USER = "postgres"  # the server's user when root starts the stack
DB_USER = "airflow"
DB_NAME = "airflow"
DB_LOGIN_FILE = "postgres-login"  # the superuser's password, mode 600
PG_DIR = "postgres"
LOG_NAME = "postgres.log"
# Appended to the cluster's postgresql.conf at initdb: loopback only, no unix socket (its path
# would have to be short and reachable by both users); room for the connection pools of four
# components, the LocalExecutor's workers and a few CLI commands.
SERVER_CONF = """
# devtools.stack
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
"""


@dataclass(frozen=True)
class Server:
    """Where a home's PostgreSQL lives and as whom it runs."""

    home: Path
    user: str | None  # None: the current user

    @property
    def root(self) -> Path:
        return self.home / PG_DIR

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.home / "logs" / LOG_NAME

    @classmethod
    def of(cls, home: Path) -> Server:
        home = Path(home).resolve()
        if os.geteuid() != 0:
            return cls(home, None)
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise RuntimeError(
                f"PostgreSQL refuses to run as root and there is no system user {SYSTEM_USER} "
                "to run it as: install Debian's postgresql-15 (scripts/install-postgresql.sh)"
            ) from None
        return cls(home, SYSTEM_USER)

    def command(self, *args: str) -> list[str]:
        """`args` run as the server's user."""
        if self.user is None:
            return list(args)
        entry = pwd.getpwnam(self.user)
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
                "--", *args]  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        # A plain environment: the server is not one of the stack's marked processes, and it
        # needs none of the caller's variables.
        return subprocess.run(
            self.command(*args),
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"},
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def own(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def bindir() -> Path:
    """The binaries of PostgreSQL 15: Debian's folder, else the one `pg_config` names."""
    if (DEBIAN_BINDIR / "postgres").is_file():
        return DEBIAN_BINDIR
    if shutil.which("pg_config"):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        candidate = Path(found.stdout.strip())
        if found.returncode == 0 and (candidate / "postgres").is_file():
            return candidate
    raise RuntimeError(
        f"PostgreSQL {MAJOR} is not installed ({DEBIAN_BINDIR}/postgres is missing): "
        "run scripts/install-postgresql.sh (`make airflow` does)"
    )


def ensure_db_password(home: Path) -> str:
    """The database password: generated once, kept in `<home>/postgres-login` (mode 600)."""
    path = Path(home) / DB_LOGIN_FILE
    if path.is_file():
        password = path.read_text().strip()
        if password:
            return password
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def database_url(home: Path, port: int) -> str:
    """SQLAlchemy's URL of the home's database, on 127.0.0.1:port."""
    password = (Path(home) / DB_LOGIN_FILE).read_text().strip()
    return f"postgresql+psycopg2://{DB_USER}:{quote(password, safe='')}@{HOST}:{port}/{DB_NAME}"


def postmaster(home: Path) -> psutil.Process | None:
    """The server running on the home's cluster, whoever started it (its pid file names it;
    the process must still be a postgres working in that data directory)."""
    data_dir = Path(home).resolve() / PG_DIR / "data"
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        proc = psutil.Process(pid)
        if Path(proc.cwd()) == data_dir and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _check_reachable(server: Server) -> None:
    if server.user is None:
        return
    probe = server.run("test", "-w", str(server.root), "-a", "-x", str(server.root))
    if probe.returncode != 0:
        raise RuntimeError(
            f"PostgreSQL runs as the system user {server.user} (it refuses root), which cannot "
            f"reach {server.root}: open every folder above it to others (chmod o+x), or choose "
            "a home elsewhere"
        )


def _init_cluster(server: Server, password: str) -> None:
    """initdb: the superuser `airflow` with the password, SCRAM for every connection."""
    pwfile = server.root / ".initdb-pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    server.own(pwfile)
    try:
        done = server.run(
            str(bindir() / "initdb"), "-D", str(server.data_dir), "-U", DB_USER,
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
            timeout=300,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(server.data_dir, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{(done.stdout + done.stderr)[-3000:]}")
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        conf.write(SERVER_CONF)


def _create_database(port: int, password: str) -> None:
    import psycopg2

    connection = psycopg2.connect(
        host=HOST, port=port, user=DB_USER, password=password, dbname="postgres",
        connect_timeout=30,
    )  # fmt: skip
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        connection.close()


def start_server(home: Path, *, timeout_s: float = 120) -> dict[str, Any]:
    """Start the home's server (its cluster created on the first start) on a free port of
    127.0.0.1 and create the database `airflow`; returns its record (pid, start time, port,
    data directory), which `stop_server` takes.

    Refuses when a server already runs on the home's cluster.
    """
    server = Server.of(home)
    binaries = bindir()
    running = postmaster(server.home)
    if running is not None:
        raise RuntimeError(
            f"PostgreSQL already runs on {server.data_dir} (pid {running.pid}): "
            "stop the stack first"
        )
    if (server.data_dir / "PG_VERSION").is_file() and not (server.home / DB_LOGIN_FILE).is_file():
        raise RuntimeError(
            f"the password of the cluster {server.data_dir} is gone "
            f"({server.home / DB_LOGIN_FILE}): "
            f"remove {server.root} to start with an empty database"
        )
    password = ensure_db_password(server.home)
    server.root.mkdir(mode=0o700, exist_ok=True)
    server.own(server.root)
    _check_reachable(server)
    if not (server.data_dir / "PG_VERSION").is_file():
        _init_cluster(server, password)
    server.log.parent.mkdir(parents=True, exist_ok=True)
    server.log.touch()
    server.own(server.log)
    port = free_port()
    started = server.run(
        str(binaries / "pg_ctl"), "start", "-D", str(server.data_dir), "-l", str(server.log),
        "-w", "-t", str(int(timeout_s)), "-o", f"-p {port}",
        timeout=timeout_s + 30,
    )  # fmt: skip
    proc = postmaster(server.home)
    if started.returncode != 0 or proc is None:
        stop_server(server.home)
        tail = "\n".join(server.log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(
            f"PostgreSQL did not start on {server.data_dir}:\n"
            f"{(started.stdout + started.stderr)[-2000:]}\n{tail}"
        )
    record = {**process_record(proc.pid), "port": port, "data_dir": str(server.data_dir)}
    try:
        _create_database(port, password)
    except Exception:
        stop_server(server.home, record)
        raise
    return record


def stop_server(home: Path, record: dict[str, Any] | None = None, *, grace_s: float = 60) -> bool:
    """Stop the home's server (the one recorded, or whichever runs on its cluster) and wait
    until it and its backends are gone; whether one ran. Fast shutdown, then immediate, then
    SIGKILL."""
    proc = postmaster(home) or live_process(record)
    if proc is None:
        return False
    server = Server.of(home)
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        children = proc.children(recursive=True)
    pg_ctl = str(bindir() / "pg_ctl")
    for mode in ("fast", "immediate"):
        if not _running(proc):
            break
        server.run(
            pg_ctl, "stop", "-D", str(server.data_dir), "-m", mode, "-w", "-t", str(int(grace_s)),
            timeout=grace_s + 30,
        )  # fmt: skip
    procs = [proc, *children]
    _, alive = psutil.wait_procs(procs, timeout=10)
    for leftover in alive:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    _, alive = psutil.wait_procs(alive, timeout=10)
    if alive:
        raise RuntimeError(f"PostgreSQL processes of {home} survive: {[p.pid for p in alive]}")
    # Unregistered from the pid file by a clean stop; a killed server leaves it stale.
    deadline = time.monotonic() + 5
    while postmaster(server.home) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return True
