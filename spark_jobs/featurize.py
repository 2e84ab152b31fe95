"""Featurize: every image under --input becomes one 1280-d MobileNetV2 vector, or an error row.

    python -m spark_jobs.featurize --input ROOT --output URI --errors URI --weights W
    spark-submit --py-files spark_jobs.zip spark_jobs/featurize.py --input ... (the EMR form)

--output gets Parquet (path, label, features list<float32> of 1280) and `_featurize.json`: the
weights used (path, sha256), counts, timings, and the CPU seconds the Python workers spent
decoding and in the model. --errors gets Parquet (path, label, error).
A bad file never stops the job; rerunning with the same outputs replaces them.

The driver lists --input itself (`inputs.list_inputs`: exact names, symbolic links never
followed), and the Python workers read each image's bytes in the thread that decodes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spark_jobs import inputs
from spark_jobs.images import BadImage, load_pixels
from spark_jobs.model import FEATURE_DIM, MODEL_BATCH_SIZE, cached_featurizer

FEATURIZE_MANIFEST = "_featurize.json"
OUTCOME_SCHEMA = "path string, label string, features array<float>, error string"
# Rows per Arrow batch between the JVM and a Python worker: it bounds the worker's memory
# (two batches of decoded images at most) whatever the number of images.
ARROW_BATCH_ROWS = 32
# At most this many files per task (see `task_count`).
IMAGES_PER_TASK = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="featurize", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="folder or URI of <Label>/<file> images")
    parser.add_argument("--output", required=True, help="Parquet: path, label, features")
    parser.add_argument("--errors", required=True, help="Parquet: path, label, error")
    parser.add_argument(
        "--weights", required=True, help="imagenet | random | local path or s3:// URI (.weights.h5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=MODEL_BATCH_SIZE, help="images per model call"
    )
    parser.add_argument(
        "--model-cache", help="folder or URI keeping TFLite conversions (default: local disk)"
    )
    parser.add_argument(
        "--no-overlap", action="store_true", help="decode and infer in turn (for benchmarks)"
    )
    parser.add_argument("--master", help="Spark master when not run by spark-submit")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, not {args.batch_size}")
    return args


@dataclass
class DecodedBatch:
    """One batch of files after decoding: model input for the good ones, reasons for the rest."""

    paths: list[str]
    labels: list[str | None]
    errors: list[str | None]
    good: list[int]  # positions of the files in `pixels`
    pixels: list[np.ndarray]  # uint8 (224, 224, 3) of each good file, for the Featurizer


def decode_batch(
    paths: list[str], labels: list[str | None], relpaths: list[str], read
) -> DecodedBatch:
    """Read (`read(relpath)` -> bytes) and decode each file; one at a time, so a worker holds
    the bytes of one file, never of a whole batch."""
    errors: list[str | None] = []
    arrays: list[np.ndarray] = []
    good: list[int] = []
    for index, relpath in enumerate(relpaths):
        try:
            arrays.append(load_pixels(read(relpath)))
        except (BadImage, inputs.UnreadableFile) as exc:
            errors.append(str(exc))
            continue
        errors.append(None)
        good.append(index)
    return DecodedBatch(paths, labels, errors, good, arrays)


def outcome_batch(decoded: DecodedBatch, featurize_batch) -> pa.RecordBatch:
    """Run the model on a decoded batch: (path, label, features, error) rows, one per file.

    Built with pyarrow directly: the features column wraps the model's output array without a
    copy per row (pandas made one object per vector, 10% of a worker's time).
    """
    size = len(decoded.paths)
    lengths = np.zeros(size, np.int32)
    lengths[decoded.good] = FEATURE_DIM
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    if decoded.pixels:
        vectors = np.ascontiguousarray(featurize_batch(decoded.pixels), np.float32)
    else:
        vectors = np.zeros((0, FEATURE_DIM), np.float32)
    features = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.array(vectors.ravel()),
        type=pa.list_(pa.float32()),
        mask=pa.array(lengths == 0),
    )
    return pa.RecordBatch.from_arrays(
        [
            pa.array(decoded.paths, pa.string()),
            pa.array(decoded.labels, pa.string()),
            features,
            pa.array(decoded.errors, pa.string()),
        ],
        names=["path", "label", "features", "error"],
    )


class SecondsParam:
    """An accumulator of named seconds, summed key by key (pyspark's AccumulatorParam)."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, seconds: dict, more: dict) -> dict:  # noqa: N802 (Spark's name)
        return {name: seconds.get(name, 0.0) + more.get(name, 0.0) for name in seconds | more}


class RowsParam:
    """An accumulator of lists of rows (pyspark's AccumulatorParam protocol)."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, rows: list, more: list) -> list:  # noqa: N802 (Spark's name)
        rows.extend(more)
        return rows


def featurize_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    root: inputs.InputRoot | str,
    model_key: str,
    flatbuffer,
    s3_options: dict | None = None,
    failures=None,
    cpu_seconds=None,
    batch_size: int = MODEL_BATCH_SIZE,
    overlap_decoding: bool = True,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: one cached TFLite interpreter per Python worker, threads = task CPUs.

    Rows are (path, label, relpath) of the listed images below `root`. With `overlap_decoding`,
    a thread reads and decodes the next batch while the model runs on this one (file reads,
    Pillow and TFLite all release the GIL); at most two batches are in memory. `failures`, an
    accumulator, also receives the (path, label, error) of every file that failed;
    `cpu_seconds` the CPU time of the threads decoding and running the model (with one XNNPACK
    thread, inference runs in the calling thread, so its thread CPU time is the model's).
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    threads = context.cpus() if context is not None else 1
    featurizer = cached_featurizer(model_key, lambda: flatbuffer.value, threads, batch_size)
    read = inputs.file_reader(root, s3_options)
    spent = {"decoding": 0.0, "model": 0.0}

    def decode(batch: pa.RecordBatch) -> DecodedBatch:
        started = time.thread_time()
        decoded = decode_batch(
            batch.column("path").to_pylist(),
            batch.column("label").to_pylist(),
            batch.column("relpath").to_pylist(),
            read,
        )
        spent["decoding"] += time.thread_time() - started
        return decoded

    def run_model(pixels: list[np.ndarray]) -> np.ndarray:
        started = time.thread_time()
        vectors = featurizer(pixels)
        spent["model"] += time.thread_time() - started
        return vectors

    def outcomes(decoded: DecodedBatch) -> pa.RecordBatch:
        rows = outcome_batch(decoded, run_model)
        if failures is not None and len(decoded.good) < len(decoded.paths):
            failures.add(
                [
                    (row["path"], row["label"], row["error"])
                    for row in rows.select(["path", "label", "error"]).to_pylist()
                    if row["error"] is not None
                ]
            )
        return rows

    if not overlap_decoding:
        for batch in batches:
            yield outcomes(decode(batch))
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
            pending = None
            for batch in batches:
                upcoming = pool.submit(decode, batch)
                if pending is not None:
                    yield outcomes(pending.result())
                pending = upcoming
            if pending is not None:
                yield outcomes(pending.result())
    if cpu_seconds is not None:
        cpu_seconds.add(spent)


IMAGE_SCHEMA = "path string, label string, relpath string"


def image_frame(spark, images: list[inputs.InputFile]):
    """(path, label, relpath) of the images to read, in `task_count` even partitions.

    Dealt round-robin, so a folder of large photos does not all land in one task.
    """
    tasks = task_count(len(images), spark.sparkContext.defaultParallelism)
    dealt = [image for start in range(tasks) for image in images[start::tasks]]
    rows = spark.sparkContext.parallelize(
        [(image.path, image.label, image.relpath) for image in dealt], tasks
    )
    return spark.createDataFrame(rows, IMAGE_SCHEMA)


def s3_options(spark, root: inputs.InputRoot) -> dict | None:
    """pyarrow.fs.S3FileSystem options matching the session's S3A settings, for s3a:// roots.

    S3A outside EMR (MinIO in the docker-compose stack) has its endpoint in the Hadoop settings;
    credentials come from the usual AWS chain (environment, profile, instance role), as S3A's.
    s3:// (EMRFS) needs none: the bucket's region is looked up.
    """
    if not root.uri.startswith("s3a://"):
        return None
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    endpoint = conf.get("fs.s3a.endpoint")
    if not endpoint:
        return None
    scheme, _, host = endpoint.rpartition("://")
    ssl = (conf.get("fs.s3a.connection.ssl.enabled") or "true").lower() == "true"
    options: dict = {"endpoint_override": host, "scheme": scheme or ("https" if ssl else "http")}
    region = conf.get("fs.s3a.endpoint.region")
    if region:
        options["region"] = region
    if (conf.get("fs.s3a.path.style.access") or "false").lower() != "true":
        options["force_virtual_addressing"] = True
    return options


def featurize(
    spark,
    images,
    *,
    root: inputs.InputRoot | str,
    model_key: str,
    flatbuffer: bytes,
    s3_options: dict | None = None,
    failures=None,
    cpu_seconds=None,
    batch_size: int = MODEL_BATCH_SIZE,
    overlap_decoding: bool = True,
):
    """(path, label, relpath) rows -> (path, label, features, error) rows."""
    shipped = spark.sparkContext.broadcast(flatbuffer)

    def run(batches):
        return featurize_partition(
            batches,
            root=root,
            model_key=model_key,
            flatbuffer=shipped,
            s3_options=s3_options,
            failures=failures,
            cpu_seconds=cpu_seconds,
            batch_size=batch_size,
            overlap_decoding=overlap_decoding,
        )

    return images.mapInArrow(run, OUTCOME_SCHEMA)


def write_outputs(
    spark, outcomes, failures, listed: list[inputs.InputFile], output: str, errors: str
) -> dict:
    """Write features and errors (replacing earlier ones) from one pass over the images.

    `listed` is every file found: the images `outcomes` reads, and the files recorded as
    errors from the listing alone (symbolic links, undecodable names, no label folder).

    The features are written by one parallel job; the failed files reach the driver through
    the `failures` accumulator of that same job (merged once per partition: the write is a
    result stage), so the model runs once per image without caching the outcomes. Caching them
    cost every task 0.3 to 1 s of columnar encoding at its end, 10% of the run.
    """
    from pyspark.sql import functions as F

    (
        outcomes.where(F.col("error").isNull())
        .select("path", "label", "features")
        .write.mode("overwrite")
        # Feature values almost never repeat: a dictionary of them is built and thrown away.
        .option("parquet.enable.dictionary", "false")
        .parquet(output)
    )
    featurized = spark.read.parquet(output).count()
    failed = list(failures.value)
    failed += [(entry.path, entry.label, entry.error) for entry in listed if entry.error]
    (
        spark.createDataFrame(sorted(failed), "path string, label string, error string")
        .coalesce(1)
        .write.mode("overwrite")
        .parquet(errors)
    )
    return {"images_found": len(listed), "featurized": featurized, "errors": len(failed)}


def task_count(images: int, cores: int, images_per_task: int = IMAGES_PER_TASK) -> int:
    """Tasks for `images` files on `cores`: a multiple of the cores, none above the size cap.

    Every wave of tasks then keeps all cores busy: 4,120 photos in 9 tasks of 500 ended with one
    task of 93 running alone while the other core idled.
    """
    waves = max(1, -(-images // (cores * images_per_task)))
    return cores * waves


def tune_for_images(spark) -> None:
    """The Arrow batch bounds a Python worker's memory whatever the number of images.

    (Tasks are sized by `image_frame`, from the listing: `task_count` tasks, even in files.)
    """
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))


def run(spark, args: argparse.Namespace) -> dict:
    from spark_jobs import model, storage

    started = time.time()
    weights = model.resolve_weights(
        args.weights, fetch=lambda uri, local: storage.copy_to_local(spark, uri, local)
    )
    if args.model_cache:
        cache = args.model_cache.rstrip("/")
        flatbuffer = model.tflite_model(
            weights,
            read_cached=lambda name: (
                storage.read_bytes(spark, f"{cache}/{name}")
                if storage.exists(spark, f"{cache}/{name}")
                else None
            ),
            write_cached=lambda name, data: storage.write_bytes(spark, f"{cache}/{name}", data),
        )
    else:
        flatbuffer = model.tflite_model(weights)
    model_ready = time.time()
    root = inputs.InputRoot.parse(args.input)
    options = s3_options(spark, root)
    listed = inputs.list_inputs(root, options)
    images = image_frame(spark, [entry for entry in listed if entry.error is None])
    tune_for_images(spark)
    failures = spark.sparkContext.accumulator([], RowsParam())
    cpu_seconds = spark.sparkContext.accumulator({}, SecondsParam())
    outcomes = featurize(
        spark,
        images,
        root=root,
        model_key=weights.cache_key,
        flatbuffer=flatbuffer,
        s3_options=options,
        failures=failures,
        cpu_seconds=cpu_seconds,
        batch_size=args.batch_size,
        overlap_decoding=not args.no_overlap,
    )
    counts = write_outputs(spark, outcomes, failures, listed, args.output, args.errors)
    finished = time.time()
    manifest = {
        "input": args.input,
        "output": args.output,
        "errors_output": args.errors,
        "weights": weights.as_record(),
        "feature_dim": FEATURE_DIM,
        **counts,
        "timings_s": {
            "model": round(model_ready - started, 3),
            "featurize_and_write": round(finished - model_ready, 3),
            "total": round(finished - started, 3),
        },
        # Summed over the Python workers: where a worker's time goes, per run (on EMR too).
        "worker_cpu_s": {name: round(value, 3) for name, value in cpu_seconds.value.items()},
    }
    storage.write_json(spark, f"{args.output.rstrip('/')}/{FEATURIZE_MANIFEST}", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    from spark_jobs.session import run_job

    return run_job(
        "fruits-featurize", parse_args, run, ("images_found", "featurized", "errors"), argv
    )


if __name__ == "__main__":
    sys.exit(main())
