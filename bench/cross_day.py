"""`make cross-day`: real photos split into days, one `make demo` run per day, one feature space.

Splits PHOTOS (<Label>/<file>.jpg, by default ../shared's bench set) into DAYS days (each
label's photos dealt round-robin, so every day holds every fruit), runs the DAG once per day
into one fresh lake (the first run fits the basis, the others apply it), then reads `reduced/`
as one table and trains a linear classifier on all days but one and scores it on the held-out
day, each day in turn. For contrast, it does the same with v1's per-day fits (each day's own
PCA at the same variance, computed here from the same `features/`).

Prints the figures and writes bench/results/cross_day.json; exits non-zero when a run fails or
the days do not share one basis.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from fruits_pipeline.lake import Lake
from spark_jobs import basis, pca_math

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
FIRST_DAY = date(2026, 10, 1)


def day_dates(days: int) -> list[date]:
    return [FIRST_DAY + timedelta(days=index) for index in range(days)]


def split_into_days(photos: Path, days: int, into: Path) -> list[Path]:
    """Each label's photos, sorted by name, dealt round-robin into `days` folders (copies)."""
    folders = [into / f"day-{index + 1}" for index in range(days)]
    labels = sorted(p for p in photos.iterdir() if p.is_dir() and not p.is_symlink())
    if not labels:
        raise SystemExit(f"make cross-day: PHOTOS {photos} holds no <Label>/ folder")
    for label in labels:
        files = sorted(f for f in label.iterdir() if f.is_file() and not f.is_symlink())
        for index, file in enumerate(files):
            target = folders[index % days] / label.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return folders


def run_days(folders: list[Path], lake: Lake, weights: str | None) -> list[float]:
    seconds = []
    for dt, folder in zip(day_dates(len(folders)), folders, strict=True):
        argv = [sys.executable, "-m", "devtools.demo", "--raw", str(folder)]
        argv += ["--date", dt.isoformat(), "--lake", lake.root]
        argv += ["--weights", weights] if weights else []
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        seconds.append(time.monotonic() - started)
        summary = done.stdout[done.stdout.rfind("\nimages:") + 1 :] or done.stdout[-3000:]
        print(f"--- dt={dt} ({seconds[-1]:.0f} s)\n{summary.strip()}", flush=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"make cross-day: the run of dt={dt} failed (exit {done.returncode})")
    return seconds


def read_days(lake: Lake, dataset: str, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = ds.dataset(lake.table(dataset), partitioning="hive").to_table()
    vectors = np.stack(table.column(column).to_numpy(zero_copy_only=False)).astype(np.float64)
    labels = np.asarray(table.column("label").to_pylist())
    days = np.asarray([str(dt) for dt in table.column("dt").to_pylist()])
    return vectors, labels, days


def held_out_accuracies(vectors: np.ndarray, labels: np.ndarray, days: np.ndarray) -> dict:
    """Per held-out day: the classifier trained on the other days, scored on photos of those
    days it did not see (within) and on the held-out day (across)."""
    scores = {}
    for held_out in sorted(set(days)):
        train = days != held_out
        fit_x, within_x, fit_y, within_y = train_test_split(
            vectors[train], labels[train], test_size=0.2, random_state=0, stratify=labels[train]
        )
        classifier = LogisticRegression(max_iter=3000).fit(fit_x, fit_y)
        scores[str(held_out)] = {
            "within": round(float(classifier.score(within_x, within_y)), 4),
            "across": round(float(classifier.score(vectors[~train], labels[~train])), 4),
        }
    return scores


def per_day_fits(features: np.ndarray, days: np.ndarray, variance: float) -> np.ndarray:
    """v1: each day reduced by a PCA fitted on that day alone, cut to the smallest day's k so
    the rows stack (the coordinates still mean something else on each day)."""
    models = {}
    for day in sorted(set(days)):
        model = pca_math.fit(pca_math.Moments.of(features[days == day]))
        models[day] = model.with_k(pca_math.choose_k(model, variance=variance))
    k = min(model.k for model in models.values())
    reduced = np.zeros((len(features), k))
    for day, model in models.items():
        reduced[days == day] = model.with_k(k).transform(features[days == day])
    return reduced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make cross-day", description=__doc__.split("\n")[0])
    parser.add_argument("--photos", default=str(SHARED / "data" / "fruits360-bench"))
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--weights", help="as make demo's WEIGHTS (default: its default)")
    parser.add_argument("--keep", help="keep the lake in this folder (default: removed)")
    args = parser.parse_args(argv)
    photos = Path(args.photos)
    if not photos.is_dir():
        print(f"make cross-day: PHOTOS {photos} is not a folder (needs ../shared)", file=sys.stderr)
        return 2
    if args.days < 2:
        print(f"make cross-day: DAYS must be 2 or more, got {args.days}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fruits-cross-day-") as tmp:
        work = Path(tmp)
        folder = Path(args.keep).resolve() if args.keep else work / "lake"
        if args.keep and folder.exists():
            print(f"make cross-day: --keep {folder} exists; give a new folder", file=sys.stderr)
            return 2
        lake = Lake(str(folder))
        folders = split_into_days(photos, args.days, work / "photos")
        seconds = run_days(folders, lake, args.weights)
        manifests = [json.loads(Path(lake.manifest(dt)).read_text()) for dt in day_dates(args.days)]
        bases = sorted({m["basis"] for m in manifests})
        ks = sorted({m["k"] for m in manifests})
        reduced, labels, days = read_days(lake, "reduced", "pca_features")
        one_basis = held_out_accuracies(reduced, labels, days)
        features, feature_labels, feature_days = read_days(lake, "features", "features")
        fitted = json.loads(Path(basis.manifest_uri(lake.basis(bases[0]))).read_text())
        variance = fitted["variance_threshold"] or pca_math.DEFAULT_VARIANCE
        v1 = held_out_accuracies(
            per_day_fits(features, feature_days, variance), feature_labels, feature_days
        )
    result = {
        "photos": str(photos),
        "rows": int(len(labels)),
        "classes": int(len(set(labels))),
        "days": {str(day): int((days == day).sum()) for day in sorted(set(days))},
        "bases": bases,
        "k": ks,
        "captured_variance": [round(m["explained_variance"], 4) for m in manifests],
        "one_basis": one_basis,
        "per_day_fits_v1": v1,
        "run_seconds": [round(s) for s in seconds],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cross_day.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['rows']} photos, {result['classes']} classes, days {result['days']}")
    print(f"bases {bases}, k {ks}, captured variance per day {result['captured_variance']}")
    print("held-out day   one basis: within / across   v1 per-day fits: within / across")
    for day in one_basis:
        a, b = one_basis[day], v1[day]
        print(
            f"{day}     {a['within']:.3f} / {a['across']:.3f}"
            f"                 {b['within']:.3f} / {b['across']:.3f}"
        )
    if len(bases) != 1 or len(ks) != 1:
        print("make cross-day: the days do not share one basis and one k", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
