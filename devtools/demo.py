"""`make demo`: run the `fruits_features` DAG once, locally, on a folder of photos.

Copies RAW (<Label>/<file>) into LAKE/raw/dt=DATE/, runs the DAG for DATE with the local
backend (`airflow dags test` under a throwaway AIRFLOW_HOME with SQLite), prints a summary and
exits non-zero when the run failed. No AWS account needed.

What it never does:
- touch anything before every parameter is checked: a bad DATE, LAKE, RAW or WEIGHTS is one line
  naming the value, exit code 2;
- destroy what it did not make: a `raw/dt=DATE/` already holding exactly RAW's files is reused, one
  holding anything else is refused; the copy is staged under a hidden name beside the partition
  (`raw/.dt=DATE.staging-<pid>-<id>`, which every reader ignores) and renamed into place only
  when complete, so a failed or killed copy leaves the lake as it was;
- follow a symbolic link of RAW: links are copied as links (the featurize job records them);
- outlive itself: its local Spark clusters are owned by it (FRUITS_LOCAL_CLUSTER_OWNER, their
  watchdog ends them once it is gone) and a detached watchdog of its own stops `airflow dags
  test` and the clusters and removes the throwaway AIRFLOW_HOME, whether the demo ends normally,
  fails, is interrupted or is killed (kill -9 of it or of its whole process group included).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import filecmp
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psutil

from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.lake import Lake
from fruits_pipeline.params import NAMED_WEIGHTS, parse_partition_date, validate_params
from fruits_pipeline.settings import REPO_ROOT, SHARED_WEIGHTS

SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "fruits360-sample"
HOME_PREFIX = "fruits-demo-airflow-"
WATCHDOG_FLAG = "--watchdog"
_STAGING = re.compile(r"\.(?P<partition>.+)\.staging-(?P<pid>\d+)-[0-9a-f]+")


class DemoError(Exception):
    """A refusal or failure the demo reports as one line (no traceback), with its exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(" ".join(message.split("\n")))
        self.code = code


@dataclass(frozen=True)
class Plan:
    """The checked parameters: nothing has been touched yet."""

    dt: date
    lake: Lake
    raw: Path | None  # None: the shared sample, else synthetic fruits
    weights: str | None  # None: choose_weights picks the default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--raw",
        help="folder of <Label>/<file> photos (default: ../shared "
        "sample, else generated synthetic fruits)",
    )
    parser.add_argument("--date", help="partition date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--lake", default=str(REPO_ROOT / ".lake"), help="lake folder")
    parser.add_argument(
        "--weights", help="imagenet | random | path (default: ../shared weights, else imagenet)"
    )
    return parser.parse_args(argv)


# --- parameter checks: nothing is touched before all of them pass --------------------------


def check_params(args: argparse.Namespace) -> Plan:
    """Every parameter, checked before anything is written or started; raises DemoError."""
    dt = check_date(args.date)
    lake = check_lake(args.lake)
    raw = check_raw(args.raw, lake) if args.raw is not None else None
    weights = check_weights(args.weights, lake) if args.weights is not None else None
    return Plan(dt=dt, lake=lake, raw=raw, weights=weights)


def check_date(text: str | None) -> date:
    if text is None:
        return datetime.now(UTC).date()
    try:
        return parse_partition_date(text)  # the DAG's own rule
    except ValueError as err:
        raise DemoError(str(err).replace("partition_date", "DATE", 1)) from None


def check_lake(text: str) -> Lake:
    """An existing writable folder, or one that can be created (it is not created here)."""
    path = Path(os.path.abspath(os.path.expanduser(text)))
    if path.is_dir():
        path = path.resolve()
    try:
        lake = Lake(str(path))
    except ValueError as err:
        raise DemoError(f"LAKE {text!r} cannot be the lake: {err}") from None
    if os.path.lexists(path) and not path.is_dir():
        raise DemoError(f"LAKE {text!r} is not a folder (it is a file)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise DemoError(f"LAKE {text!r} is not writable")
        for inner in (path / "raw",):
            if os.path.lexists(inner) and not inner.is_dir():
                raise DemoError(f"LAKE {text!r} is not a lake: {inner} is not a folder")
        return lake
    ancestor = path.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DemoError(f"LAKE {text!r} cannot be created: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DemoError(f"LAKE {text!r} cannot be created: {ancestor} is not writable")
    return lake


def check_raw(text: str, lake: Lake) -> Path:
    """A folder holding at least one image, read without following any symbolic link."""
    from spark_jobs.inputs import is_image_relpath  # the rule the DAG counts images by

    path = Path(os.path.abspath(os.path.expanduser(text)))
    if not os.path.lexists(path) or not path.exists():
        raise DemoError(f"RAW {text!r} does not exist")
    if not path.is_dir():
        raise DemoError(f"RAW {text!r} is not a folder")
    path = path.resolve()
    lake_root = Path(lake.root)
    if lake_root == path or path in lake_root.parents:
        raise DemoError(f"LAKE {lake.root!r} is inside RAW {text!r}: give a lake outside RAW")
    try:
        entries = tree(path)
    except OSError as err:
        raise DemoError(f"RAW {text!r} cannot be read: {err}") from None
    special = [rel for rel, kind in entries.items() if kind[0] == "special"]
    if special:
        raise DemoError(
            f"RAW {text!r} holds {special[0]!r}, which is neither a file, a folder nor a "
            "symbolic link"
        )
    if not any(kind[0] == "file" and is_image_relpath(rel) for rel, kind in entries.items()):
        raise DemoError(
            f"RAW {text!r} holds no images (.jpg, .jpeg or .png files in <Label>/ folders)"
        )
    return path


def check_weights(text: str, lake: Lake) -> str:
    """The DAG's rules (params.validate_params); a relative path is taken from here (joined,
    not normalised: a '..' segment stays refused)."""
    weights = text
    if text and text not in NAMED_WEIGHTS and "://" not in text:
        weights = os.path.join(os.getcwd(), os.path.expanduser(text))
    try:
        return validate_params({"weights": weights}, lake).weights
    except ValueError as err:
        raise DemoError(f"WEIGHTS {text!r} is refused: {err}") from None


def choose_weights(asked: str | None) -> str:
    if asked:
        return asked
    if SHARED_WEIGHTS.is_file():
        return str(SHARED_WEIGHTS)
    try:  # ImageNet weights Keras already has, or can download.
        from spark_jobs.model import resolve_weights

        resolve_weights("imagenet")
        return "imagenet"
    except Exception:
        return "random"


# --- staging RAW into the lake --------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root by relative path, without following symbolic links: ("dir",),
    ("file", size), ("link", target) or ("special",) (a FIFO, socket or device)."""
    entries: dict[str, tuple] = {}
    pending = [(str(root), "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as scan:
            for entry in scan:
                rel = prefix + entry.name
                if entry.is_symlink():
                    entries[rel] = ("link", os.readlink(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    entries[rel] = ("dir",)
                    pending.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    entries[rel] = ("file", entry.stat(follow_symlinks=False).st_size)
                else:
                    entries[rel] = ("special",)
    return entries


def _copy_file(source: str, target: str) -> None:
    shutil.copyfile(source, target, follow_symlinks=False)


def _copy_tree(source: Path, target: Path, entries: dict[str, tuple]) -> None:
    """Copy the entries (as `tree` lists them) into the new folder target: links as links."""
    target.mkdir()
    for rel, kind in sorted(entries.items()):  # a folder sorts before what it holds
        if kind[0] == "dir":
            (target / rel).mkdir()
        elif kind[0] == "link":
            os.symlink(kind[1], target / rel)
        elif kind[0] == "file":
            _copy_file(str(source / rel), str(target / rel))
        else:
            raise OSError(errno.EINVAL, "neither a file, a folder nor a symbolic link", rel)


def _same_files(source: Path, entries: dict[str, tuple], target: Path) -> bool:
    """True when target holds exactly the entries of source: same paths, sizes and bytes."""
    if tree(target) != entries:
        return False
    return all(
        filecmp.cmp(source / rel, target / rel, shallow=False)
        for rel, kind in entries.items()
        if kind[0] == "file"
    )


def _remove_stale_staging(target: Path) -> None:
    """Staging folders of this partition left by a copy whose process is gone (killed)."""
    for path in target.parent.glob(f".{target.name}.staging-*"):
        match = _STAGING.fullmatch(path.name)
        if match and match["partition"] == target.name and not psutil.pid_exists(
            int(match["pid"])
        ):
            shutil.rmtree(path, ignore_errors=True)


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p; returns the folders it created, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def place(source: Path, target: Path) -> bool:
    """Make target (a partition folder) hold a copy of source; returns True when target already
    held exactly that copy (reused, nothing copied). Raises DemoError, with the lake as it was,
    when target holds anything else or when the copy fails."""
    try:
        entries = tree(source)
    except OSError as err:
        raise DemoError(f"RAW {str(source)!r} cannot be read: {err}") from None
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_dir():
            raise DemoError(f"{target} exists and is not a folder: nothing was changed; "
                            "give another DATE or LAKE")  # fmt: skip
        if any(target.iterdir()):
            if _same_files(source, entries, target):
                _remove_stale_staging(target)
                return True
            raise DemoError(
                f"{target} already holds other files than RAW {str(source)!r}: nothing was "
                "changed; give another DATE or LAKE (or remove that folder yourself)"
            )
        # An empty partition folder: the rename below replaces it.
    created = _make_parents(target.parent)
    _remove_stale_staging(target)
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        _copy_tree(source, staging, entries)
        os.rename(staging, target)  # atomic; replaces an empty folder, never a non-empty one
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise DemoError(
                f"{target} was filled by someone else during the copy: nothing of it was "
                "changed; give another DATE or LAKE"
            ) from None
        if isinstance(exc, OSError):
            raise DemoError(
                f"could not copy RAW {str(source)!r} into {target}: {exc}; the lake is unchanged",
                code=1,
            ) from None
        raise
    return False


def stage_raw(raw: str | None, target: Path) -> str:
    """Fill the partition from RAW (see `place`); returns a description of the images used."""
    reused = " (already in the lake: reused, nothing copied)"
    if raw:
        return f"{raw}{reused if place(Path(raw), target) else ''}"
    if SHARED_SAMPLE.is_dir():
        kept = place(SHARED_SAMPLE, target)
        return f"{SHARED_SAMPLE} (real Fruits-360 photos){reused if kept else ''}"
    from devtools.samples import make_synthetic_fruits

    with tempfile.TemporaryDirectory(prefix="fruits-demo-synthetic-") as tmp:
        counts = make_synthetic_fruits(Path(tmp) / "raw", n_classes=8, per_class=15)
        kept = place(Path(tmp) / "raw", target)
    return (
        f"{sum(counts.values())} synthetic fruit images generated by the project"
        f"{reused if kept else ''}"
    )


# --- the run, its throwaway Airflow home and what cleans up after it ------------------------


def airflow_env(home: Path, lake: Path, weights: str) -> dict[str, str]:
    return os.environ | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "FRUITS_BACKEND": "local",
        "FRUITS_LAKE_ROOT": str(lake),
        "FRUITS_WEIGHTS": weights,
        "FRUITS_LOCAL_STATE_DIR": str(home / "clusters"),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")]),
    }


def run_dag(env: dict[str, str], dt: date, extra_conf: dict | None = None) -> int:
    conf = {"partition_date": dt.isoformat(), **(extra_conf or {})}
    return dags_test(env, "fruits_features", conf)


def dags_test(env: dict[str, str], dag_id: str, conf: dict) -> int:
    """`airflow dags test` of `dag_id` with `conf`, after creating the throwaway database."""
    airflow = str(Path(sys.executable).with_name("airflow"))
    migrate = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if migrate.returncode != 0:
        print(migrate.stdout[-3000:] + migrate.stderr[-3000:], file=sys.stderr)
        print(f"`airflow db migrate` failed (exit {migrate.returncode})", file=sys.stderr)
        return migrate.returncode
    return subprocess.run(
        [airflow, "dags", "test", dag_id, "--conf", json.dumps(conf)], env=env, check=False
    ).returncode


def cleanup(home: Path, state_dir: Path) -> None:
    """Stop whatever the run under `home` left (Airflow's processes, every process carrying
    AIRFLOW_HOME=home, the clusters of state_dir) and remove home. Idempotent."""
    marked = local_cluster.marked_processes("AIRFLOW_HOME", str(home))
    local_cluster.stop_processes(marked, grace_s=10)
    if state_dir.is_dir():
        for cdir in sorted(state_dir.glob("local-*")):
            if (cdir / local_cluster.CLUSTER_FILE).is_file():
                with contextlib.suppress(LookupError, OSError, ValueError):
                    local_cluster.terminate_cluster(
                        state_dir, cdir.name, reason="make demo ended", grace_s=5
                    )
    local_cluster.stop_processes(
        local_cluster.marked_processes("AIRFLOW_HOME", str(home)), grace_s=5
    )
    shutil.rmtree(home, ignore_errors=True)


def spawn_watchdog(home: Path, state_dir: Path) -> dict[str, Any]:
    """Start, in a session of its own (a kill of the demo's process group does not reach it),
    the process that runs `cleanup` once this one is gone; returns its process record."""
    owner = json.dumps(local_cluster.process_record(os.getpid()))
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")])
    }
    args = [sys.executable, "-m", "devtools.demo", WATCHDOG_FLAG, owner]
    return local_cluster.spawn_detached(
        [*args, str(home), str(state_dir)],
        log_path=Path(tempfile.gettempdir()) / f"{home.name}.watchdog.log",
        env=env,
        cwd=REPO_ROOT,
    )


def watch(owner: dict[str, Any], home: Path, state_dir: Path) -> None:
    """The watchdog: wait for the demo to exit, then clean up after it. When the demo ends
    normally it cleans up itself, then stops this process (SIGTERM) while it still waits."""
    while local_cluster.live_process(owner) is not None:
        time.sleep(0.2)
    cleanup(home, state_dir)
    Path(tempfile.gettempdir(), f"{home.name}.watchdog.log").unlink(missing_ok=True)


def stop_watchdog(record: dict[str, Any] | None, home: Path) -> None:
    """Once the demo's own cleanup is done (home gone): the watchdog has nothing left to do."""
    proc = local_cluster.live_process(record)
    if proc is None or home.exists():
        return  # home survived the cleanup: the watchdog retries once the demo is gone
    local_cluster.stop_processes([proc], grace_s=10)
    Path(tempfile.gettempdir(), f"{home.name}.watchdog.log").unlink(missing_ok=True)


def task_durations(home: Path, dag_id: str) -> dict[str, float]:
    """Seconds each task of the (only) run took, from the throwaway metadata database."""
    database = home / "airflow.db"
    if not database.is_file():
        return {}
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT task_id, (julianday(end_date) - julianday(start_date)) * 86400 "
            "FROM task_instance WHERE dag_id = ? AND start_date IS NOT NULL "
            "AND end_date IS NOT NULL",
            (dag_id,),
        ).fetchall()
    return {task_id: round(seconds, 1) for task_id, seconds in rows}


def timings_line(durations: dict[str, float]) -> str:
    """Cluster start, featurize, PCA, validation, teardown: where the run's time went."""
    phases = [("cluster start", "create_cluster"), ("featurize", "watch_featurize"),
              ("PCA", "watch_pca"), ("validation", "validate"), ("teardown", "terminate_cluster")]
    shown = [f"{name} {durations[task]:.0f} s" for name, task in phases if task in durations]
    return "timings:  " + ", ".join(shown) if shown else ""


def basis_line(manifest: dict) -> str:
    """Which basis reduced the day and how well it fits it."""
    fit_on = manifest.get("basis_fit_on") or {}
    days = fit_on.get("days") or []
    where = f"dt={days[0]}" if len(days) == 1 else f"{len(days)} days" if days else "?"
    how = "fit by this run" if manifest.get("mode") == "fit" else "applied"
    return (
        f"basis:    {manifest.get('basis')} ({how}; fit on {where}, {fit_on.get('rows')} rows, "
        f"k={manifest.get('k')}), captures {manifest['explained_variance']:.1%} of this day's "
        f"variance ({manifest['explained_variance_at_fit']:.1%} at fit)"
    )


def summary(lake: Lake, dt: date, weights: str, images: str, seconds: float, code: int) -> str:
    lines = [f"images:   {images}", f"weights:  {weights}", f"lake:     {lake.root}"]
    raw_count = 0
    with contextlib.suppress(OSError):
        raw_count = sum(1 for kind in tree(Path(lake.raw(dt))).values() if kind[0] != "dir")
    lines.append(f"raw:      {raw_count} files under {lake.raw(dt)}")
    marker = Path(lake.success_marker(dt))
    # The run's exit code comes first: a marker can be an earlier run's (a failed or skipped
    # run before prepare_run leaves it), and then this run published nothing.
    fresh = marker.is_file() and marker.stat().st_mtime >= time.time() - seconds - 1
    if code != 0:
        lines.append(f"result:   FAILED dt={dt} (exit {code}); not published. See the log above.")
    elif fresh:
        published = json.loads(marker.read_text())
        lines += [
            f"result:   PUBLISHED dt={dt} in {seconds:.0f} s",
            f"featurized {published['featurized']}, errors {published['errors']} "
            f"(see {lake.errors(dt)}), k = {published['k']}, explained variance "
            f"{published['explained_variance']:.4f}",
            basis_line(json.loads(Path(lake.manifest(dt)).read_text())),
            f"reduced:  {lake.reduced(dt)}",
            f"report:   {lake.report(dt)}/explained_variance.png, pca_scatter.png, manifest.json",
        ]
    else:
        lines.append(f"result:   SKIPPED dt={dt}: no uploads, nothing written ({seconds:.0f} s)")
        if marker.is_file():
            lines.append(f"note:     an earlier run's publication of dt={dt} stays: {marker}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = check_params(args)
        images = stage_raw(str(plan.raw) if plan.raw else None, Path(plan.lake.raw(plan.dt)))
        weights = choose_weights(plan.weights)
    except DemoError as err:
        print(f"make demo: {err}", file=sys.stderr)
        return err.code
    except (KeyboardInterrupt, SystemExit) as exc:
        print("make demo: interrupted before the run: no copy was left half-done", file=sys.stderr)
        return exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    lake, dt = plan.lake, plan.dt
    outcome = run_throwaway(lake, weights, "fruits_features", lambda env: run_dag(env, dt))
    if outcome.interrupted:
        print(
            f"\nresult:   {outcome.interrupted.upper()} dt={dt}: not published; Airflow and its "
            f"Spark cluster were stopped, {outcome.home} removed",
            file=sys.stderr,
        )
        return outcome.code
    print("\n" + summary(lake, dt, weights, images, outcome.seconds, outcome.code))
    if outcome.durations:
        print(timings_line(outcome.durations))
    return outcome.code


@dataclass(frozen=True)
class Outcome:
    code: int
    interrupted: str | None  # "interrupted" (Ctrl-C) or "terminated" (SIGTERM, SIGHUP)
    durations: dict[str, float]  # seconds per task
    seconds: float
    home: Path


def run_throwaway(lake: Lake, weights: str, dag_id: str, run: Callable[[dict], int]) -> Outcome:
    """`run(env)` (an `airflow dags test`) under a throwaway AIRFLOW_HOME, with the local
    backend and the lake; whatever ends it, its Airflow and clusters are stopped and the home
    removed (also by the detached watchdog, should this process be killed)."""
    # Out of the repository, a fresh name: created only once the watchdog that removes it runs.
    home = Path(tempfile.gettempdir()) / f"{HOME_PREFIX}{uuid.uuid4().hex[:12]}"
    env = airflow_env(home, Path(lake.root), weights)
    env[local_cluster.OWNER_ENV] = str(os.getpid())  # its clusters end when this process does
    state_dir = Path(env["FRUITS_LOCAL_STATE_DIR"])
    watchdog = None
    started = time.time()
    interrupted = None
    durations: dict[str, float] = {}
    try:
        watchdog = spawn_watchdog(home, state_dir)
        home.mkdir(mode=0o700)
        print(f"airflow:  throwaway AIRFLOW_HOME {home} (removed when the run ends)", flush=True)
        code = run(env)
        durations = task_durations(home, dag_id)
    except KeyboardInterrupt:
        code, interrupted = 130, "interrupted"
    except SystemExit as exc:  # SIGTERM or SIGHUP, see exit_on_signal
        code = exc.code if isinstance(exc.code, int) else 1
        interrupted = "terminated"
    finally:
        cleanup(home, state_dir)
        stop_watchdog(watchdog, home)
    return Outcome(code, interrupted, durations, time.time() - started, home)


def exit_on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: through its cleanup."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    if sys.argv[1:2] == [WATCHDOG_FLAG]:
        _, _, owner_json, home_dir, clusters_dir = sys.argv
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the demo's to handle
        watch(json.loads(owner_json), Path(home_dir), Path(clusters_dir))
        sys.exit(0)
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    sys.exit(main())
