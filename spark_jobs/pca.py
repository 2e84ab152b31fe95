"""PCA: standardize the featurize output and keep the components that explain enough variance.

    python -m spark_jobs.pca --input URI --output URI --model URI --report URI [--variance V|--k N]
    python -m spark_jobs.pca --input URI --output URI --apply-model URI --report URI

--output gets Parquet (path, label, pca_features list<float32> of k). --model gets
`pca_model.json` (mean, scale, components, eigenvalues: plain numbers any language reads).
--report gets manifest.json, explained_variance.png and pca_scatter.png.

Rows never reach the driver: partitions reduce them to moments, the driver decomposes the
d x d matrix (see pca_math), executors project.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from spark_jobs import pca_math
from spark_jobs.pca_math import Moments, PcaModel

REDUCED_SCHEMA = "path string, label string, pca_features array<float>"
MODEL_FILE = "pca_model.json"
SCATTER_SAMPLE_ROWS = 5000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pca", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="the featurize output (Parquet)")
    parser.add_argument("--output", required=True, help="Parquet: path, label, pca_features")
    parser.add_argument("--report", required=True, help="folder for manifest.json and the PNGs")
    fitted = parser.add_mutually_exclusive_group(required=True)
    fitted.add_argument("--model", help="folder where the fitted model is written")
    fitted.add_argument("--apply-model", help="transform with a model fitted earlier")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--variance", type=float, help="keep the smallest k reaching it (0.95)")
    size.add_argument("--k", type=int, help="or keep a fixed number of components")
    parser.add_argument("--master", help="Spark master when not run by spark-submit")
    args = parser.parse_args(argv)
    if args.apply_model and (args.variance is not None or args.k is not None):
        parser.error("--apply-model keeps the model's k: give neither --variance nor --k")
    if args.variance is not None and not 0.0 < args.variance <= 1.0:
        parser.error(f"--variance must be in (0, 1], not {args.variance}")
    if args.k is not None and not 1 <= args.k <= 1280:
        parser.error(f"--k must be between 1 and 1280, not {args.k}")
    if args.model and args.variance is None and args.k is None:
        args.variance = 0.95
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


def project(spark, features, model: PcaModel):
    """(path, label, features) -> (path, label, pca_features), projected in the executors."""
    shipped = spark.sparkContext.broadcast(model.as_dict())

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        fitted = PcaModel.from_dict(shipped.value)
        for batch in batches:
            reduced = fitted.transform(np.stack(batch["features"].to_numpy()))
            yield pd.DataFrame(
                {"path": batch["path"], "label": batch["label"], "pca_features": list(reduced)}
            )

    return features.select("path", "label", "features").mapInPandas(run, REDUCED_SCHEMA)


def model_file(uri: str) -> str:
    return uri if uri.endswith(".json") else f"{uri.rstrip('/')}/{MODEL_FILE}"


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

    features = spark.read.parquet(args.input)
    rows, dim = check_features(features)
    lap("check")
    if args.apply_model:
        model = PcaModel.from_dict(storage.read_json(spark, model_file(args.apply_model)))
        if model.dim != dim:
            raise ValueError(
                f"--apply-model {args.apply_model} expects {model.dim}-d vectors; "
                f"the input has {dim}-d vectors"
            )
    else:
        fitted = pca_math.fit(feature_moments(features, dim))
        model = fitted.with_k(pca_math.choose_k(fitted, variance=args.variance, k=args.k))
        storage.write_json(spark, model_file(args.model), model.as_dict())
    lap("fit")
    reduced = project(spark, features, model)
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
        report.explained_variance_png(cumulative, model.k, args.variance),
    )
    storage.write_bytes(
        spark,
        f"{report_root}/pca_scatter.png",
        report.scatter_png(points, [r.label for r in sample], rows),
    )
    lap("report")
    featurize_manifest = f"{args.input.rstrip('/')}/{FEATURIZE_MANIFEST}"
    upstream = (
        storage.read_json(spark, featurize_manifest)
        if storage.exists(spark, featurize_manifest)
        else {}
    )
    timings["total"] = round(time.time() - started, 3)
    manifest = {
        "k": model.k,
        "explained_variance": float(cumulative[model.k - 1]),
        "explained_variance_ratio": model.explained_variance_ratio[: model.k].tolist(),
        "variance_threshold": args.variance,
        "fixed_k": args.k,
        "mode": "apply" if args.apply_model else "fit",
        "rows": rows,
        "feature_dim": dim,
        "model_rows": model.rows,
        "weights": upstream.get("weights"),
        "featurize": {key: upstream.get(key) for key in ("images_found", "featurized", "errors")},
        "input": args.input,
        "output": args.output,
        "model": model_file(args.apply_model or args.model),
        "report": args.report,
        "timings_s": timings,
    }
    storage.write_json(spark, f"{report_root}/manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.session import run_job

    return run_job("fruits-pca", parse_args, run, ("k", "explained_variance", "rows"), argv)


if __name__ == "__main__":
    sys.exit(main())
