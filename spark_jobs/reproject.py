"""Reprojection: published days' features reduced again, in another basis, by one job.

    python -m spark_jobs.reproject --basis LAKE/models/pca/<basis id> \
        --input URI [URI ...] --days D [D ...] --output URI --report URI \
        [--previous-report ROOT]

--input are the days' featurize outputs, the day folders of one table (LAKE/features/dt=D), one
per day of --days, in the same order. --output gets Parquet partitioned by day, `dt=D/`, with
the columns of a daily reduced output (path, label, pca_features of the basis's k, basis); it
is replaced. --report gets `dt=D/` per day: manifest.json, explained_variance.png and
pca_scatter.png, as a daily run writes them. With --previous-report, a day's manifest starts
from ROOT/dt=D/manifest.json (the daily run's: featurize counts...), its basis fields replaced
and the old basis kept in `previous_basis`.

The days are read as one table (Spark takes each row's day from its folder) and projected in
one pass; each day's captured share comes from per-day sums of O(d + k) numbers merged in an
accumulator of that pass (see pca_math.Spread).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, date, datetime

import numpy as np

from spark_jobs import basis, featurized, pca, pca_math
from spark_jobs.accumulators import DaySpreadsParam

DAY_COLUMN = "dt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reproject", description=__doc__.split("\n")[0])
    parser.add_argument("--basis", required=True, help="the basis folder: models/pca/<id>")
    parser.add_argument("--input", required=True, nargs="+", help="featurize outputs, one a day")
    parser.add_argument("--days", required=True, nargs="+", help="their days, YYYY-MM-DD")
    parser.add_argument("--output", required=True, help="Parquet, partitioned dt=YYYY-MM-DD")
    parser.add_argument("--report", required=True, help="folder of dt=YYYY-MM-DD/ reports")
    parser.add_argument("--previous-report", help="the days' earlier reports (dt=D/manifest.json)")
    parser.add_argument("--master", help="Spark master when not run by spark-submit")
    args = parser.parse_args(argv)
    if len(args.input) != len(args.days):
        parser.error(
            f"--input gives {len(args.input)} URIs and --days {len(args.days)} days: "
            "one input per day, in the same order"
        )
    for day in args.days:
        if not is_day(day):
            parser.error(f"--days: {day!r} is not a date written YYYY-MM-DD")
    repeated = sorted({day for day in args.days if args.days.count(day) > 1})
    if repeated:
        parser.error(f"--days names {', '.join(repeated)} more than once")
    for uri, day in zip(args.input, args.days, strict=True):
        if uri.rstrip("/").rsplit("/", 1)[-1] != f"{DAY_COLUMN}={day}":
            parser.error(f"--input {uri} is not the folder {DAY_COLUMN}={day} of day {day}")
    tables = sorted({table_of(uri) for uri in args.input})
    if len(tables) > 1:
        parser.error(f"--input: the days are folders of one table, not of {', '.join(tables)}")
    try:
        basis.basis_id_of(args.basis)
    except ValueError as err:
        parser.error(f"{args.basis}: {err}")
    return args


def table_of(day_folder: str) -> str:
    return day_folder.rstrip("/").rsplit("/", 1)[0]


def is_day(text: str) -> bool:
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def read_days(spark, inputs: list[str]):
    """(path, label, features, dt) of the day folders `inputs` of one table, as one scan."""
    return (
        spark.read.option("basePath", table_of(inputs[0]))
        .schema(f"{featurized.FEATURES_SCHEMA}, {DAY_COLUMN} string")
        .parquet(*inputs)
    )


def checked_days(features, args, model: pca_math.PcaModel, fitted: dict) -> dict:
    """{day: rows}, once each day has at least 2 vectors of the basis's d and its weights."""
    counts = {row[DAY_COLUMN]: row for row in featurized.vector_counts(features, DAY_COLUMN)}
    rows = {}
    for uri, day in zip(args.input, args.days, strict=True):
        subject = f"day {day} ({uri})"
        rows[day], dim = featurized.checked_counts(counts.get(day), subject)
        if dim != model.dim:
            raise ValueError(
                f"basis {fitted['basis']} expects {model.dim}-d vectors; {subject} has {dim}-d"
            )
    return rows


def check_day_weights(spark, args, fitted: dict) -> None:
    """Each day's features must be of the basis's weights: a mismatch names the day."""
    for uri, day in zip(args.input, args.days, strict=True):
        weights = (featurized.featurize_manifest(spark, uri) or {}).get("weights")
        try:
            basis.check_weights(weights, fitted.get("weights"), fitted["basis"])
        except basis.WeightsMismatch as err:
            raise basis.WeightsMismatch(f"day {day} ({uri}): {err}") from None


def day_manifest(spark, args, day: str, fitted: dict, rows: int, captured: float) -> dict:
    """The day's previous manifest (if any), its basis fields replaced."""
    from spark_jobs import storage

    previous = {}
    if args.previous_report:
        uri = f"{args.previous_report.rstrip('/')}/{DAY_COLUMN}={day}/manifest.json"
        if storage.exists(spark, uri):
            previous = storage.read_json(spark, uri)
    return {
        **previous,
        "basis": fitted["basis"],
        "k": fitted["k"],
        "explained_variance": captured,
        "explained_variance_at_fit": fitted["explained_variance"],
        "basis_fit_on": fitted["fit_on"],
        "rows": rows,
        "basis_uri": args.basis,
        "mode": "reprojected",
        "previous_basis": previous.get("basis"),
        "reprojected_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run(spark, args: argparse.Namespace) -> dict:
    from spark_jobs import storage

    started = time.time()
    model, fitted = pca.read_basis(spark, args.basis)
    check_day_weights(spark, args, fitted)
    features = read_days(spark, args.input)
    rows = checked_days(features, args, model, fitted)
    checked = time.time()

    spreads = spark.sparkContext.accumulator({}, DaySpreadsParam())
    reduced = pca.project(spark, features, model, fitted["basis"], day_spreads=spreads)
    reduced.write.mode("overwrite").partitionBy(DAY_COLUMN).parquet(args.output)
    projected = time.time()

    captured = {}
    by_day = spreads.value
    for day in args.days:
        spread = by_day.get(day)
        projected_rows = spread.n if spread is not None else 0
        if projected_rows != rows[day]:  # a result stage counts each task once: not expected
            raise RuntimeError(f"day {day}: {projected_rows} rows projected, {rows[day]} read")
        if not np.isfinite(spread.squares).all():
            raise ValueError(f"day {day}: the features contain NaN or infinite values")
        captured[day] = pca_math.captured_share(model, spread)
    for day in args.days:
        report = f"{args.report.rstrip('/')}/{DAY_COLUMN}={day}"
        output = f"{args.output.rstrip('/')}/{DAY_COLUMN}={day}"
        pca.write_report_images(
            spark,
            report,
            spark.read.schema(pca.REDUCED_SCHEMA).parquet(output),
            rows[day],
            model,
            fitted.get("variance_threshold"),
            captured[day],
        )
        manifest = day_manifest(spark, args, day, fitted, rows[day], captured[day])
        storage.write_json(spark, f"{report}/manifest.json", manifest)
    done = time.time()
    return {
        "basis": fitted["basis"],
        "k": model.k,
        "rows": rows,
        "explained_variance": captured,
        "timings_s": {
            "check": round(checked - started, 3),
            "project_and_write": round(projected - checked, 3),
            "reports": round(done - projected, 3),
            "total": round(done - started, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.session import run_job

    summary = ("basis", "k", "rows", "explained_variance", "timings_s")
    return run_job("fruits-reproject", parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
