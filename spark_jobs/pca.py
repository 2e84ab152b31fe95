"""PCA: reduce feature vectors in a versioned basis (fitting it first, when asked).

    python -m spark_jobs.pca --input URI [URI ...] --output URI --report URI \
        --fit-basis models/pca/<basis id> [--variance V | --k N] [--days D ...]
    python -m spark_jobs.pca --input URI --output URI --report URI \
        --apply-basis models/pca/<basis id> [--wait-s S]
    python -m spark_jobs.pca --input URI [URI ...] --fit-basis models/pca/<basis id> \
        [--variance V | --k N] --days D [D ...]

--output gets Parquet (path, label, pca_features list<float32> of the basis's k, basis: its id).
--fit-basis writes the basis once (`pca_model.json`, then `manifest.json`, see basis.py) and
refuses a folder that already holds one. --apply-basis reads it, waiting up to --wait-s for a
basis another run is still fitting. --report gets manifest.json (k, the basis, the share of these
rows' standardized variance the basis captures next to the share at fit),
explained_variance.png and pca_scatter.png.

Without --output and --report, --fit-basis only fits (the refit DAG): the basis gets its
explained-variance curve too, and the job prints the basis's manifest and the rows.

Rows never reach the driver: partitions reduce them to moments, the driver decomposes the
d x d matrix (see pca_math), executors project.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from spark_jobs import basis, featurized, pca_math
from spark_jobs.model import FEATURE_DIM
from spark_jobs.pca_math import DEFAULT_VARIANCE, Moments, PcaModel

REDUCED_SCHEMA = "path string, label string, pca_features array<float>, basis string"
SCATTER_SAMPLE_ROWS = 5000
# Partial moments merged this many at a time below the driver: each holds a d x d matrix.
TREE_FAN_IN = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pca", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input", required=True, nargs="+", help="featurize outputs (Parquet), one per day"
    )
    parser.add_argument("--output", help="Parquet: path, label, pca_features, basis")
    parser.add_argument("--report", help="folder for manifest.json and the PNGs")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--fit-basis", help="fit a new basis and write it to this folder")
    chosen.add_argument("--apply-basis", help="reduce in the basis of this folder")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--variance", type=float, help=f"keep the smallest k reaching it ({DEFAULT_VARIANCE})"
    )
    size.add_argument("--k", type=int, help="or keep a fixed number of components")
    parser.add_argument("--days", nargs="*", default=[], help="the days fitted (for the record)")
    parser.add_argument(
        "--wait-s", type=float, default=0.0, help="wait this long for a basis being fitted"
    )
    parser.add_argument("--master", help="Spark master when not run by spark-submit")
    args = parser.parse_args(argv)
    if (args.output is None) != (args.report is None):
        parser.error("--output and --report go together: both, or neither to only fit a basis")
    if args.apply_basis and args.output is None:
        parser.error("--apply-basis needs --output and --report")
    if args.fit_basis and args.output is None and not args.days:
        parser.error("fitting a basis without --output needs --days: the days it is fit on")
    if args.apply_basis and (args.variance is not None or args.k is not None):
        parser.error("--apply-basis keeps the basis's k: give neither --variance nor --k")
    if args.variance is not None and not 0.0 < args.variance <= 1.0:
        parser.error(f"--variance must be in (0, 1], not {args.variance}")
    if args.k is not None and not 1 <= args.k <= FEATURE_DIM:
        parser.error(f"--k must be between 1 and {FEATURE_DIM}, not {args.k}")
    for uri in filter(None, (args.fit_basis, args.apply_basis)):
        try:
            basis.basis_id_of(uri)
        except ValueError as err:
            parser.error(f"{uri}: {err}")
    if args.fit_basis and args.variance is None and args.k is None:
        args.variance = DEFAULT_VARIANCE
    return args


def moments_bytes(moments: Moments) -> bytes:
    return np.concatenate([[moments.n], moments.mean, moments.scatter.ravel()]).tobytes()


def moments_from_bytes(data: bytes, dim: int) -> Moments:
    values = np.frombuffer(data, dtype=np.float64)
    return Moments(int(values[0]), values[1 : dim + 1].copy(), values[dim + 1 :].reshape(dim, dim))


def partition_moments(batches: Iterator, dim: int) -> Iterator:
    """mapInArrow body: the moments of one partition's feature vectors, as one row."""
    import pyarrow as pa

    total = Moments(0, np.zeros(dim), np.zeros((dim, dim)))
    for batch in batches:
        if batch.num_rows == 0:
            continue
        column = batch.column(0)
        rows = column.flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, dim)
        total = total.merge(Moments.of(rows))
    yield pa.RecordBatch.from_pydict({"moments": [moments_bytes(total)]})


def feature_moments(features, dim: int) -> Moments:
    """Moments of all rows, reduced across executors; the driver receives a few d x d
    matrices, however many rows and partitions."""
    partials = (
        features.select("features")
        .mapInArrow(lambda batches: partition_moments(batches, dim), "moments binary")
        .rdd.map(lambda row: moments_from_bytes(row.moments, dim))
    )
    depth = math.ceil(math.log(max(partials.getNumPartitions(), 2), TREE_FAN_IN))
    moments = partials.treeReduce(Moments.merge, depth=max(2, depth))
    if not moments.finite:
        raise ValueError("the features contain NaN or infinite values")
    return moments


def project(spark, features, model: PcaModel, basis_id: str, day_spreads=None):
    """(path, label, features) -> (path, label, pca_features, basis), in the executors.

    With `day_spreads` (an accumulator of {day: pca_math.Spread}, see reproject), the rows keep
    their day (column `dt`) and each day's spread is added to it as its rows are projected."""
    shipped = spark.sparkContext.broadcast(model.as_dict())
    by_day = day_spreads is not None

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        fitted = PcaModel.from_dict(shipped.value)
        for batch in batches:
            rows = np.stack(batch["features"].to_numpy())
            if not by_day:
                reduced = fitted.transform(rows)
            else:
                reduced = np.empty((len(rows), fitted.k), dtype=np.float32)
                days = batch["dt"].to_numpy()
                for day in np.unique(days):
                    chosen = days == day
                    reduced[chosen], spread = pca_math.transform_with_spread(fitted, rows[chosen])
                    day_spreads.add({day: spread})
            # The schema's columns, in its order.
            result = batch[["path", "label"]].assign(pca_features=list(reduced), basis=basis_id)
            if by_day:
                result["dt"] = batch["dt"]
            yield result

    columns = ["path", "label", "features", *(["dt"] if by_day else [])]
    schema = REDUCED_SCHEMA + (", dt string" if by_day else "")
    return features.select(*columns).mapInPandas(run, schema)


def fit_basis(spark, args, moments: Moments, rows: int, weights: dict | None):
    """Fit, check the fit, then write the basis (with its curve when fitted on its own)."""
    from spark_jobs import report

    fitted = pca_math.fit(moments)
    model = fitted.with_k(pca_math.choose_k(fitted, variance=args.variance, k=args.k))
    manifest = {
        "basis": basis.basis_id_of(args.fit_basis),
        "fit_on": {"days": sorted(args.days), "rows": rows},
        "k": model.k,
        "feature_dim": model.dim,
        "variance_threshold": args.variance,
        "fixed_k": args.k,
        "explained_variance": pca_math.checked_explained_variance(model),
        "weights": weights,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    curve = None
    if args.output is None:
        cumulative = pca_math.cumulative_explained_variance(model)
        curve = report.explained_variance_png(cumulative, model.k, args.variance)
    basis.write(spark, args.fit_basis, model.as_dict(), manifest, curve)
    return model, manifest


def read_basis(spark, uri: str, wait_s: float = 0.0) -> tuple[PcaModel, dict]:
    """(model, manifest) of the basis at `uri`, waiting up to `wait_s` for the run fitting it."""
    model, manifest = basis.read(spark, uri, wait_s)
    return PcaModel.from_dict(model), manifest


def write_report_images(
    spark, folder: str, reduced, rows: int, model: PcaModel, threshold, captured: float
) -> None:
    """explained_variance.png (the basis's curve and the share `captured` of these rows) and
    pca_scatter.png (at most SCATTER_SAMPLE_ROWS rows of `reduced`, drawn at random)."""
    from pyspark.sql import functions as F

    from spark_jobs import report, storage

    fraction = min(1.0, SCATTER_SAMPLE_ROWS / rows)
    sample = (
        reduced.sample(fraction=fraction, seed=0)
        .select("label", F.slice("pca_features", 1, 2).alias("first_two"))
        .collect()[:SCATTER_SAMPLE_ROWS]
    )
    points = np.array([(list(r.first_two) + [0.0])[:2] for r in sample]).reshape(-1, 2)
    cumulative = pca_math.cumulative_explained_variance(model)
    storage.write_bytes(
        spark,
        f"{folder}/explained_variance.png",
        report.explained_variance_png(cumulative, model.k, threshold, captured=captured),
    )
    storage.write_bytes(
        spark,
        f"{folder}/pca_scatter.png",
        report.scatter_png(points, [r.label for r in sample], rows),
    )


def run(spark, args: argparse.Namespace) -> dict:
    from spark_jobs import storage

    timings: dict[str, float] = {}
    clock = time.time()
    started = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.time()
        timings[name] = round(now - clock, 3)
        clock = now

    if args.fit_basis:
        basis.refuse_existing(spark, args.fit_basis)  # before the pass over the rows
    features = spark.read.parquet(*args.input)
    rows, dim = featurized.check_features(features)
    weights = featurized.input_weights(spark, args.input)
    lap("check")
    moments = feature_moments(features, dim)
    if args.fit_basis:
        model, fitted = fit_basis(spark, args, moments, rows, weights)
        if args.output is None:
            lap("fit")
            timings["total"] = round(time.time() - started, 3)
            return {**fitted, "rows": rows, "timings_s": timings}
    else:
        model, fitted = read_basis(spark, args.apply_basis, args.wait_s)
        if model.dim != dim:
            raise ValueError(
                f"basis {fitted['basis']} expects {model.dim}-d vectors; "
                f"the input has {dim}-d vectors"
            )
        basis.check_weights(weights, fitted.get("weights"), fitted["basis"])
    basis_id = fitted["basis"]
    captured = pca_math.captured_variance(model, moments)
    lap("fit" if args.fit_basis else "moments")
    reduced = project(spark, features, model, basis_id)
    reduced.write.mode("overwrite").parquet(args.output)
    lap("transform_and_write")

    report_root = args.report.rstrip("/")
    write_report_images(
        spark,
        report_root,
        spark.read.parquet(args.output),
        rows,
        model,
        fitted.get("variance_threshold"),
        captured,
    )
    lap("report")
    upstream = (
        featurized.featurize_manifest(spark, args.input[0]) if len(args.input) == 1 else None
    ) or {}
    timings["total"] = round(time.time() - started, 3)
    manifest = {
        "basis": basis_id,
        "k": model.k,
        # The share of these rows' standardized variance the basis's k components capture;
        # at fit, the same share on the rows it was fit on. A drop says the uploads changed.
        "explained_variance": captured,
        "explained_variance_at_fit": fitted["explained_variance"],
        "basis_fit_on": fitted["fit_on"],
        "mode": "fit" if args.fit_basis else "apply",
        "rows": rows,
        "feature_dim": dim,
        "weights": weights,
        "featurize": {key: upstream.get(key) for key in ("images_found", "featurized", "errors")},
        "input": args.input[0] if len(args.input) == 1 else args.input,
        "output": args.output,
        "basis_uri": args.fit_basis or args.apply_basis,
        "report": args.report,
        "timings_s": timings,
    }
    storage.write_json(spark, f"{report_root}/manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.session import run_job

    # `fit_on`: only when fitting without --output (the daily manifest has `basis_fit_on`).
    summary = ("basis", "k", "explained_variance", "rows", "fit_on")
    return run_job("fruits-pca", parse_args, run, summary, argv)


if __name__ == "__main__":
    sys.exit(main())
