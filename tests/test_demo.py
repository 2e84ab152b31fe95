"""`make demo` (`python -m devtools.demo`): checks before it touches, never destroys what
it did not make, never follows a symbolic link, and takes everything it started with it.

The quick tests run the real command (or `demo.main`, where a failure must be injected) up to
the point that matters; the slow ones run a real demo on synthetic fruits and kill it while its
featurize step runs, then look for any process of its cluster and for its Airflow home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import pytest

from devtools import demo, staging, throwaway
from devtools.samples import make_synthetic_fruits
from fruits_pipeline import procs
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.lake import Lake
from tests.support.processes import live_processes

REPO = Path(__file__).resolve().parents[1]
D = date(2026, 4, 1)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root, links not followed: kind, bytes or link target, mtime."""
    found: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return found
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():  # its mtime changes when a staging folder comes and goes
                found[rel] = ("dir",)
            else:
                found[rel] = ("file", path.read_bytes(), info.st_mtime_ns, info.st_ino)
    return found


def published_lake(root: Path, raw_files: dict[str, bytes]) -> Lake:
    """A lake where D looks published, as a finished demo leaves it (no DAG needed)."""
    lake = Lake(str(root))
    for rel, data in raw_files.items():
        path = Path(lake.raw(D)) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for dataset in (lake.reduced(D), lake.report(D)):
        Path(dataset).mkdir(parents=True)
    (Path(lake.reduced(D)) / "part-00000.parquet").write_bytes(b"PAR1 reduced PAR1")
    Path(lake.success_marker(D)).write_text(json.dumps({"partition": D.isoformat(), "k": 3}))
    return lake


def photos(root: Path, n_classes: int = 2, per_class: int = 3) -> Path:
    make_synthetic_fruits(root, n_classes=n_classes, per_class=per_class, size=32)
    return root


def run_demo(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """The real command, with a TMPDIR of its own: an Airflow home or a watchdog log would
    appear there."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "devtools.demo", *args],
        cwd=REPO,
        env=os.environ | {"TMPDIR": str(tmpdir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def processes_of_lake(lake: Lake) -> list[str]:
    """Processes started for this lake: Airflow and every cluster process carry its root."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (proc.info["environ"] or {}).get("FRUITS_LAKE_ROOT") == lake.root:
            found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}")
    return found


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- parameters: checked before anything is touched ------------------------------------------


def test_a_missing_raw_leaves_a_published_day_as_it_was(tmp_path):
    lake = published_lake(tmp_path / "lake", {"Apple/a.jpg": b"apple", "Banana/b.jpg": b"banana"})
    before = snapshot(Path(lake.root))
    missing = tmp_path / "no-such-folder"

    result = run_demo(["--raw", str(missing), "--date", str(D), "--lake", lake.root], tmp_path)

    line = assert_one_line_error(result, repr(str(missing)))
    assert line == f"make demo: RAW {str(missing)!r} does not exist"
    assert snapshot(Path(lake.root)) == before
    assert Path(lake.success_marker(D)).is_file()
    assert list((tmp_path / "tmpdir").iterdir()) == []


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--date", "2026-02-30", "DATE '2026-02-30' is not a calendar date: day is out of range"),
        ("--date", "../x", "DATE must be a date written YYYY-MM-DD, got '../x'"),
        ("--lake", "{tmp}/a-file", "LAKE '{tmp}/a-file' is not a folder (it is a file)"),
        ("--lake", "{tmp}/a-file/lake", "LAKE '{tmp}/a-file/lake' cannot be created: "),
        ("--weights", "/nonexistent.h5", "the weights file '/nonexistent.h5' does not exist"),
        ("--weights", "s3://elsewhere", "weights URI 's3://elsewhere' is outside the lake"),
        ("--weights", "/etc/passwd", "a weights path must name a Keras .h5 file"),
        ("--weights", "/opt/../etc/w.h5", "must not contain a '..' segment"),
        ("--raw", "{tmp}/a-file", "RAW '{tmp}/a-file' is not a folder"),
        ("--raw", "{tmp}/empty", "RAW '{tmp}/empty' holds no images"),
        ("--raw", "{tmp}/lake-parent", "is inside RAW '{tmp}/lake-parent'"),
    ],
    ids=[
        "date-not-calendar",
        "date-dotdot",
        "lake-is-a-file",
        "lake-not-creatable",
        "weights-missing",
        "weights-outside-lake",
        "weights-not-h5",
        "weights-dotdot",
        "raw-is-a-file",
        "raw-no-images",
        "lake-inside-raw",
    ],
)
def test_a_bad_parameter_is_one_line_naming_it_and_touches_nothing(
    tmp_path, option, value, expected
):
    value, expected = (s.replace("{tmp}", str(tmp_path)) for s in (value, expected))
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "empty" / "Apple").mkdir(parents=True)
    (tmp_path / "empty" / "Apple" / "notes.txt").write_text("no image here")
    raw = photos(tmp_path / "lake-parent" / "photos")
    args = {"--raw": str(raw), "--date": str(D), "--lake": str(tmp_path / "lake-parent" / "lake")}
    args["--weights"] = "random"
    args[option] = value
    before = snapshot(tmp_path)

    result = run_demo([item for pair in args.items() for item in pair], tmp_path)

    assert_one_line_error(result, expected, value)
    # Nothing was written (no raw/ copy, no lake), no Airflow home, no watchdog, no cluster.
    assert snapshot(tmp_path) | {"tmpdir": ("dir",)} == before | {"tmpdir": ("dir",)}
    assert list((tmp_path / "tmpdir").iterdir()) == []
    assert processes_of_lake(Lake(str(tmp_path / "lake-parent" / "lake"))) == []


# --- the copy: all or nothing, links never followed, nothing destroyed -------------------------


@pytest.fixture
def no_dag(monkeypatch):
    """demo.main with everything real but `airflow dags test`; records the Airflow homes."""
    homes: list[Path] = []
    airflow_env = throwaway.airflow_env

    def recording_env(home, lake_root, weights):
        homes.append(home)
        return airflow_env(home, lake_root, weights)

    def fake_run_dag(env, dt, extra_conf=None):
        assert Path(env["AIRFLOW_HOME"]).is_dir()
        assert env[local_cluster.OWNER_ENV] == str(os.getpid())
        return 0

    monkeypatch.setattr(throwaway, "airflow_env", recording_env)
    monkeypatch.setattr(demo, "run_dag", fake_run_dag)
    return homes


def demo_args(raw: Path, lake: Lake) -> list[str]:
    return ["--raw", str(raw), "--date", str(D), "--lake", lake.root, "--weights", "random"]


@pytest.mark.parametrize("failure", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_copy_that_fails_halfway_leaves_the_lake_as_it_was(
    tmp_path, monkeypatch, capsys, no_dag, failure
):
    lake = published_lake(tmp_path / "lake", {"Apple/a.jpg": b"apple"})
    other_day = Lake(lake.root).raw(date(2026, 4, 2))
    before = snapshot(Path(lake.root))
    raw = photos(tmp_path / "photos", n_classes=3, per_class=4)
    copied: list[str] = []

    def copy_then_fail(source: str, target: str) -> None:
        if len(copied) == 5:
            raise failure
        staging.shutil.copyfile(source, target, follow_symlinks=False)
        copied.append(target)

    monkeypatch.setattr(staging, "_copy_file", copy_then_fail)
    argv = [*demo_args(raw, lake)]
    argv[argv.index("--date") + 1] = "2026-04-02"

    code = demo.main(argv)

    err = capsys.readouterr().err
    assert len(copied) == 5
    assert code == (1 if isinstance(failure, OSError) else 130), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    expected = "the lake is unchanged" if isinstance(failure, OSError) else "interrupted"
    assert expected in err
    assert snapshot(Path(lake.root)) == before
    assert not Path(other_day).exists()
    assert no_dag == []  # no Airflow home, no run


def test_a_failed_copy_into_a_new_lake_leaves_no_lake(tmp_path, monkeypatch, capsys, no_dag):
    def failing_copy(source: str, target: str) -> None:
        raise PermissionError(13, "Permission denied", source)

    monkeypatch.setattr(staging, "_copy_file", failing_copy)
    lake = Lake(str(tmp_path / "new" / "lake"))

    assert demo.main(demo_args(photos(tmp_path / "photos"), lake)) == 1

    assert "Permission denied" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_stale_staging_folder_of_a_killed_copy_is_removed(tmp_path, no_dag):
    lake = Lake(str(tmp_path / "lake"))
    dead_pid = 99_999_999  # above any pid_max: the process that made it is gone
    stale = Path(lake.raw(D)).with_name(f".dt={D}.staging-{dead_pid}-0123abcd")
    (stale / "Apple").mkdir(parents=True)
    (stale / "Apple" / "half.jpg").write_bytes(b"half a copy")
    raw = photos(tmp_path / "photos")

    assert demo.main(demo_args(raw, lake)) == 0

    assert not stale.exists()
    assert sorted(p.name for p in Path(lake.raw(D)).parent.iterdir()) == [f"dt={D}"]
    assert {k: v[:2] for k, v in snapshot(Path(lake.raw(D))).items() if v[0] == "file"} == {
        k: v[:2] for k, v in snapshot(raw).items() if v[0] == "file"
    }


def test_a_rerun_with_the_same_photos_reuses_the_partition(tmp_path, capsys, no_dag):
    raw = photos(tmp_path / "photos")
    lake = Lake(str(tmp_path / "lake"))
    assert demo.main(demo_args(raw, lake)) == 0
    before = snapshot(Path(lake.root))  # inodes and mtimes: a copy would change them

    assert demo.main(demo_args(raw, lake)) == 0

    assert "already in the lake: reused, nothing copied" in capsys.readouterr().out
    assert snapshot(Path(lake.root)) == before
    assert len(no_dag) == 2 and not any(home.exists() for home in no_dag)


@pytest.mark.parametrize("change", ["other-bytes", "extra-file", "missing-file"])
def test_a_partition_holding_other_files_is_refused_untouched(tmp_path, capsys, no_dag, change):
    raw = photos(tmp_path / "photos")
    files = {str(p.relative_to(raw)): p.read_bytes() for p in raw.rglob("*.jpg")}
    first = sorted(files)[0]
    if change == "other-bytes":  # same names and sizes, other bytes
        files[first] = bytes(reversed(files[first]))
    elif change == "extra-file":
        files["Apple Braeburn/other.jpg"] = b"someone else's upload"
    else:
        del files[first]
    lake = published_lake(tmp_path / "lake", files)
    before = snapshot(Path(lake.root))

    assert demo.main(demo_args(raw, lake)) == 2

    err = capsys.readouterr().err.strip()
    assert err == (
        f"make demo: {lake.raw(D)} already holds other files than RAW {str(raw)!r}: nothing "
        "was changed; give another DATE or LAKE (or remove that folder yourself)"
    )
    assert snapshot(Path(lake.root)) == before
    assert no_dag == []


def test_symbolic_links_are_copied_as_links_never_followed(tmp_path, capsys, no_dag):
    raw = photos(tmp_path / "photos")
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"SECRET BYTES OUTSIDE RAW")
    banana = next(raw.iterdir())
    (banana / "evil.jpg").symlink_to("/etc/passwd")
    (banana / "outside.jpg").symlink_to(outside)
    (banana / "loop.jpg").symlink_to("loop.jpg")  # ELOOP when followed
    (banana / "deep").mkdir()
    (banana / "deep" / "up").symlink_to("..")  # a folder loop: 40 nested levels when followed
    lake = Lake(str(tmp_path / "lake"))

    started = time.monotonic()
    code = demo.main(demo_args(raw, lake))

    out, err = capsys.readouterr()
    assert code == 0, err
    assert time.monotonic() - started < 30
    copy = Path(lake.raw(D)) / banana.name
    assert os.readlink(copy / "evil.jpg") == "/etc/passwd"
    assert os.readlink(copy / "outside.jpg") == str(outside)
    assert os.readlink(copy / "loop.jpg") == "loop.jpg"
    assert os.readlink(copy / "deep" / "up") == ".."
    secrets = (Path("/etc/passwd").read_bytes(), outside.read_bytes())
    files = [v for v in snapshot(Path(lake.root)).values() if v[0] == "file"]
    assert len(files) == 6
    assert not any(data in secrets for _, data, *_ in files)
    assert "raw:      10 files under" in out


def test_a_normal_end_removes_the_home_and_its_watchdog(tmp_path, no_dag):
    lake = Lake(str(tmp_path / "lake"))

    assert demo.main(demo_args(photos(tmp_path / "photos"), lake)) == 0

    (home,) = no_dag
    assert not home.exists()
    assert watchdogs_of(home) == []
    assert not Path(f"{home}.watchdog.log").exists()


def test_the_watchdog_cleans_up_after_a_demo_killed_with_sigkill(tmp_path):
    """The watchdog alone (the demo's part of a kill -9): a stand-in demo process that leaves
    a home, a process marked with it and a cluster record, then dies."""
    home = tmp_path / "home"
    state_dir = home / "clusters"
    state_dir.mkdir(parents=True)
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3)"], start_new_session=True
    )
    # Detached, as Airflow's leftovers are once the demo died (init reaps them).
    marked = procs.spawn_detached(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        log_path=tmp_path / "marked.log",
        env=os.environ | {"AIRFLOW_HOME": str(home)},
        cwd=tmp_path,
    )
    owner = procs.process_record(stand_in.pid)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "devtools.throwaway", throwaway.WATCHDOG_FLAG, json.dumps(owner),
         str(home), str(state_dir)],  # fmt: skip
        cwd=REPO,
    )
    try:
        time.sleep(1)
        assert watcher.poll() is None and home.exists()  # waits while its demo lives
        stand_in.send_signal(signal.SIGKILL)
        stand_in.wait()
        assert watcher.wait(timeout=30) == 0
        assert procs.live_process(marked) is None
        assert not home.exists()
    finally:
        for proc in (stand_in, watcher):
            proc.kill()
            proc.wait()
        if (left := procs.live_process(marked)) is not None:
            procs.stop_processes([left], grace_s=1)


def watchdogs_of(home: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if throwaway.WATCHDOG_FLAG in (p.info["cmdline"] or []) and str(home) in p.info["cmdline"]
    ]


# --- a real demo, interrupted while its featurize step runs ------------------------------------


def traces(cluster_id: str, home: str) -> list[str]:
    """Processes of the cluster (by marker), of the Airflow home (by marker or command line:
    the watchdog) that are still running."""

    def of_the_run(cmdline: str, environ: dict[str, str]) -> bool:
        return (
            environ.get(local_cluster.CLUSTER_ENV) == cluster_id
            or environ.get("AIRFLOW_HOME") == home
            or home in cmdline
        )

    return live_processes(of_the_run, width=200)


def featurize_step(lake: Lake) -> psutil.Process | None:
    """A running featurize step of a cluster started for this lake."""
    for proc in psutil.process_iter(["cmdline", "environ"]):
        environ = proc.info["environ"] or {}
        if (
            environ.get("FRUITS_LAKE_ROOT") == lake.root
            and environ.get(local_cluster.CLUSTER_ENV)
            and "featurize" in " ".join(proc.info["cmdline"] or [])
        ):
            return proc
    return None


@pytest.fixture
def running_demo(tmp_path):
    """Start a real demo in its own session; returns a function waiting for its featurize step
    (then: the Popen, the step's environment). Whatever happens, nothing is left running."""
    raw = photos(tmp_path / "photos", n_classes=3, per_class=4)
    lake = Lake(str(tmp_path / "lake"))
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 (closed at teardown)
    started: list[tuple[subprocess.Popen, dict]] = []

    def start() -> tuple[subprocess.Popen, dict[str, str], Lake]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.demo", *demo_args(raw, lake)],
            cwd=REPO,
            env=os.environ | {"FRUITS_LOCAL_IDLE_TIMEOUT_S": "900"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # As from a terminal: pytest may itself ignore SIGINT (a background job of a
            # non-interactive shell), and an ignored signal stays ignored across exec.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 600
        while (step := featurize_step(lake)) is None:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()[-5000:]
            assert time.monotonic() < deadline, "no featurize step after 600 s"
            time.sleep(0.2)
        environ = step.environ()
        started.append((proc, environ))
        return proc, environ, lake

    yield start
    for proc, environ in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leftovers = [
            psutil.Process(int(t.split(":")[0]))
            for t in traces(environ[local_cluster.CLUSTER_ENV], environ["AIRFLOW_HOME"])
        ]
        procs.stop_processes(leftovers, grace_s=5)
    log.close()


def wait_for_no_trace(cluster_id: str, home: str, timeout_s: float) -> float:
    started = time.monotonic()
    while traces(cluster_id, home) or Path(home).exists():
        if time.monotonic() - started > timeout_s:
            pytest.fail(
                f"after {timeout_s:.0f} s: home exists: {Path(home).exists()}; processes left: "
                f"{traces(cluster_id, home)}"
            )
        time.sleep(0.5)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize("target", ["process-group", "demo-only"])
def test_kill_9_of_a_demo_while_featurize_runs_takes_everything_with_it(running_demo, target):
    proc, environ, lake = running_demo()
    cluster_id, home = environ[local_cluster.CLUSTER_ENV], environ["AIRFLOW_HOME"]
    assert environ[local_cluster.OWNER_ENV] == str(proc.pid)
    assert not home.startswith(str(REPO))

    if target == "process-group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    seconds = wait_for_no_trace(cluster_id, home, timeout_s=60)
    print(f"killed ({target}): no trace left after {seconds:.1f} s")
    assert not Path(lake.success_marker(D)).exists()
    time.sleep(3)  # nothing comes back, nothing writes the lake
    assert traces(cluster_id, home) == []
    assert not Path(lake.success_marker(D)).exists()
    assert not Path(lake.reduced(D)).exists()


@pytest.mark.slow
def test_ctrl_c_of_a_demo_while_featurize_runs_removes_its_home(running_demo):
    proc, environ, lake = running_demo()
    cluster_id, home = environ[local_cluster.CLUSTER_ENV], environ["AIRFLOW_HOME"]

    os.kill(proc.pid, signal.SIGINT)

    assert proc.wait(timeout=90) == 130
    assert not Path(home).exists()
    assert traces(cluster_id, home) == []
    assert not Path(lake.success_marker(D)).exists()
    state = Path(home) / "clusters" / cluster_id
    assert not state.exists()


@pytest.mark.slow
def test_a_cluster_ends_once_its_owner_is_gone(tmp_path):
    """FRUITS_LOCAL_CLUSTER_OWNER: the cluster's own watchdog terminates it, reason "owner
    exited", as soon as the owner process is gone (make demo names itself the owner)."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    state_dir = tmp_path / "clusters"
    cluster = local_cluster.start_cluster(
        state_dir, env={local_cluster.OWNER_ENV: str(owner.pid)}, worker_memory="512m"
    )
    cluster_id = cluster["cluster_id"]
    try:
        assert cluster["owner"] == procs.process_record(owner.pid)
        time.sleep(2)
        assert local_cluster.describe_cluster(state_dir, cluster_id)["state"] == "WAITING"
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 30
        while local_cluster.describe_cluster(state_dir, cluster_id)["state"] != "TERMINATED":
            assert time.monotonic() < deadline, "the cluster outlived its owner by 30 s"
            time.sleep(0.25)
        described = local_cluster.describe_cluster(state_dir, cluster_id)
        assert described["reason"] == "owner exited"
        # The watchdog marks the cluster TERMINATED and then exits itself: give it a moment.
        deadline = time.monotonic() + 10
        while (alive := local_cluster.cluster_processes_alive(state_dir, cluster_id)):
            assert time.monotonic() < deadline, f"cluster processes left running: {alive}"
            time.sleep(0.25)
    finally:
        owner.kill()
        owner.wait()
        local_cluster.terminate_cluster(state_dir, cluster_id, reason="test teardown")
