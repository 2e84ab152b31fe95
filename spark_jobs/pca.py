"""PCA: reduce feature vectors in a versioned basis (fitting it first, when asked).

    python -m spark_jobs.pca --input URI [URI ...] --output URI --report URI \
        --fit-basis models/pca/<basis id> [--variance V | --k N] [--days D ...]
    python -m spark_jobs.pca --input URI --output URI --report URI \
        --apply-basis models/pca/<basis id> [--wait-s S]

--output gets Parquet (path, label, pca_features list<float32> of the basis's k, basis: its id).
--fit-basis writes the basis once (`pca_model.json`, then `manifest.json`, see basis.py) and
refuses a folder that already holds one. --apply-basis reads it, waiting up to --wait-s for a
basis another run is still fitting. --report gets manifest.json (k, the basis, the share of these
rows' standardized variance the basis captures next to the share at fit),
explained_variance.png and pca_scatter.png.

Rows never reach the driver: partitions reduce them to moments, the driver decomposes the
d x d matrix (see pca_math), executors project.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from spark_jobs import basis, pca_math
from spark_jobs.model import FEATURE_DIM
from spark_jobs.pca_math import DEFAULT_VARIANCE, Moments, PcaModel

REDUCED_SCHEMA = "path string, label string, pca_features array<float>, basis string"
SCATTER_SAMPLE_ROWS = 5000
WAIT_POLL_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pca", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input", required=True, nargs="+", help="featurize outputs (Parquet), one per day"
    )
    parser.add_argument("--output", required=True, help="Parquet: path, label, pca_features")
    parser.add_argument("--report", required=True, help="folder for manifest.json and the PNGs")
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--fit-basis", help="fit a new basis and write it to this folder")
    chosen.add_argument("--apply-basis", help="reduce in the basis of this folder")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--variance", type=float, help="keep the smallest k reaching it (0.95)")
    size.add_argument("--k", type=int, help="or keep a fixed number of components")
    parser.add_argument("--days", nargs="*", default=[], help="the days fitted (for the record)")
    parser.add_argument(
        "--wait-s", type=float, default=0.0, help="wait this long for a basis being fitted"
    )
    parser.add_argument("--master", help="Spark master when not run by spark-submit")
    args = parser.parse_args(argv)
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
        if not np.isfinite(rows).all():
            raise ValueError("the features contain NaN or infinite values")
        total = total.merge(Moments.of(rows))
    yield pa.RecordBatch.from_pydict({"moments": [moments_bytes(total)]})


def feature_moments(features, dim: int) -> Moments:
    """Moments of all rows, reduced across executors; the driver receives one d x d matrix."""
    partials = features.select("features").mapInArrow(
        lambda batches: partition_moments(batches, dim), "moments binary"
    )
    return partials.rdd.map(lambda row: moments_from_bytes(row.moments, dim)).treeReduce(
        Moments.merge, depth=2
    )


def check_features(features) -> tuple[int, int]:
    """(rows, d); a clear error when vectors are missing or of different lengths."""
    from pyspark.sql import functions as F

    summary = features.select(
        F.count(F.lit(1)).alias("rows"),
        F.min(F.size("features")).alias("shortest"),
        F.max(F.size("features")).alias("longest"),
        F.sum(F.col("features").isNull().cast("int")).alias("missing"),
    ).first()
    if summary.rows < 2:
        raise ValueError(f"PCA needs at least 2 feature vectors; the input has {summary.rows}")
    if summary.missing:
        raise ValueError(f"{summary.missing} rows of the input have no feature vector")
    if summary.shortest != summary.longest:
        raise ValueError(
            f"feature vectors differ in length: from {summary.shortest} to {summary.longest}"
        )
    return int(summary.rows), int(summary.longest)


def project(spark, features, model: PcaModel, basis_id: str):
    """(path, label, features) -> (path, label, pca_features, basis), in the executors."""
    shipped = spark.sparkContext.broadcast(model.as_dict())

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        fitted = PcaModel.from_dict(shipped.value)
        for batch in batches:
            reduced = fitted.transform(np.stack(batch["features"].to_numpy()))
            yield pd.DataFrame(
                {
                    "path": batch["path"],
                    "label": batch["label"],
                    "pca_features": list(reduced),
                    "basis": basis_id,
                }
            )

    return features.select("path", "label", "features").mapInPandas(run, REDUCED_SCHEMA)


def input_weights(spark, inputs: list[str]) -> dict | None:
    """The weights every input was featurized with (their `_featurize.json`); they must agree."""
    from spark_jobs import storage
    from spark_jobs.featurize import FEATURIZE_MANIFEST

    records = []
    for uri in inputs:
        manifest = f"{uri.rstrip('/')}/{FEATURIZE_MANIFEST}"
        if storage.exists(spark, manifest):
            records.append((uri, storage.read_json(spark, manifest).get("weights")))
    if not records:
        return None
    (first_uri, first), *others = records
    for uri, record in others:
        # Both unknown is no mismatch, as in apply mode's check.
        if (first or record) and not basis.same_weights(first, record):
            raise basis.WeightsMismatch(
                f"the inputs were featurized with different weights: "
                f"{basis.describe_weights(first)} ({first_uri}) and "
                f"{basis.describe_weights(record)} ({uri})"
            )
    return first


def fit_basis(spark, args, moments: Moments, rows: int, weights: dict | None):
    """Fit, then write the model and, last, the manifest that makes the basis complete."""
    from spark_jobs import storage

    basis_id = basis.basis_id_of(args.fit_basis)
    if storage.exists(spark, basis.model_uri(args.fit_basis)):
        raise FileExistsError(f"basis {basis_id} already exists: a basis is never rewritten")
    fitted = pca_math.fit(moments)
    model = fitted.with_k(pca_math.choose_k(fitted, variance=args.variance, k=args.k))
    storage.write_json(spark, basis.model_uri(args.fit_basis), model.as_dict())
    manifest = {
        "basis": basis_id,
        "fit_on": {"days": sorted(args.days), "rows": rows},
        "k": model.k,
        "feature_dim": model.dim,
        "variance_threshold": args.variance,
        "fixed_k": args.k,
        "explained_variance": float(pca_math.cumulative_explained_variance(model)[model.k - 1]),
        "weights": weights,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(spark, basis.manifest_uri(args.fit_basis), manifest)
    return model, manifest


def read_basis(spark, uri: str, wait_s: float):
    """The basis at `uri`, waiting up to `wait_s` for the run still fitting it."""
    from spark_jobs import storage

    deadline = time.monotonic() + wait_s
    while not storage.exists(spark, basis.manifest_uri(uri)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise FileNotFoundError(
                f"basis {basis.basis_id_of(uri)} is not in the lake ({uri}), "
                f"after waiting {wait_s:.0f} s for the run fitting it"
            )
        time.sleep(min(WAIT_POLL_S, left))  # up to --wait-s, not up to a poll beyond it
    model = PcaModel.from_dict(storage.read_json(spark, basis.model_uri(uri)))
    return model, storage.read_json(spark, basis.manifest_uri(uri))


def run(spark, args: argparse.Namespace) -> dict:
    from spark_jobs import report, storage
    from spark_jobs.featurize import FEATURIZE_MANIFEST

    timings: dict[str, float] = {}
    clock = time.time()
    started = clock

    def lap(name: str) -> None:
        nonlocal clock
        now = time.time()
        timings[name] = round(now - clock, 3)
        clock = now

    features = spark.read.parquet(*args.input)
    rows, dim = check_features(features)
    weights = input_weights(spark, args.input)
    lap("check")
    moments = feature_moments(features, dim)
    if args.fit_basis:
        model, fitted = fit_basis(spark, args, moments, rows, weights)
    else:
        model, fitted = read_basis(spark, args.apply_basis, args.wait_s)
        if model.dim != dim:
            raise ValueError(
                f"basis {fitted['basis']} expects {model.dim}-d vectors; "
                f"the input has {dim}-d vectors"
            )
        if weights is not None or fitted.get("weights") is not None:
            basis.check_weights(weights, fitted.get("weights"), fitted["basis"])
    basis_id = fitted["basis"]
    captured = pca_math.captured_variance(model, moments)
    lap("fit" if args.fit_basis else "moments")
    reduced = project(spark, features, model, basis_id)
    reduced.write.mode("overwrite").parquet(args.output)
    lap("transform_and_write")

    cumulative = pca_math.cumulative_explained_variance(model)
    fraction = min(1.0, SCATTER_SAMPLE_ROWS / rows)
    sample = spark.read.parquet(args.output).sample(fraction=fraction, seed=0).collect()
    points = np.array([(r.pca_features + [0.0])[:2] for r in sample]).reshape(-1, 2)
    report_root = args.report.rstrip("/")
    storage.write_bytes(
        spark,
        f"{report_root}/explained_variance.png",
        report.explained_variance_png(
            cumulative, model.k, fitted.get("variance_threshold"), captured=captured
        ),
    )
    storage.write_bytes(
        spark,
        f"{report_root}/pca_scatter.png",
        report.scatter_png(points, [r.label for r in sample], rows),
    )
    lap("report")
    featurize_manifest = f"{args.input[0].rstrip('/')}/{FEATURIZE_MANIFEST}"
    upstream = (
        storage.read_json(spark, featurize_manifest)
        if len(args.input) == 1 and storage.exists(spark, featurize_manifest)
        else {}
    )
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

    return run_job(
        "fruits-pca", parse_args, run, ("basis", "k", "explained_variance", "rows"), argv
    )


if __name__ == "__main__":
    sys.exit(main())
