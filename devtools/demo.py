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

The parameter checks, the run and its summary are here; the copy into the lake is
devtools.staging's, the throwaway Airflow and its watchdog devtools.throwaway's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from devtools.airflow_env import choose_weights
from devtools.staging import DemoError, stage_raw, tree
from devtools.throwaway import dags_test, exit_on_signal, run_throwaway
from fruits_pipeline.lake import Lake
from fruits_pipeline.params import NAMED_WEIGHTS, parse_partition_date, validate_params
from fruits_pipeline.settings import REPO_ROOT


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


def run_dag(env: dict[str, str], dt: date, extra_conf: dict | None = None) -> int:
    conf = {"partition_date": dt.isoformat(), **(extra_conf or {})}
    return dags_test(env, "fruits_features", conf)


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


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    sys.exit(main())
