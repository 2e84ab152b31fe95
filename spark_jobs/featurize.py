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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from spark_jobs import inputs, reading, worker_cpu
from spark_jobs.accumulators import RowsParam, SecondsParam
from spark_jobs.batches import decode_listed, decoded_in_order, failed_rows, outcome_batch
from spark_jobs.model import FEATURE_DIM, MODEL_BATCH_SIZE, cached_featurizer

if TYPE_CHECKING:
    from pyspark import Broadcast

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


@dataclass(frozen=True)
class PartitionJob:
    """What every task of the featurize stage needs, shipped with its mapInArrow function."""

    root: inputs.InputRoot | str
    model_key: str
    flatbuffer: Broadcast  # of the TFLite model's bytes
    s3_options: dict | None = None
    batch_size: int = MODEL_BATCH_SIZE
    overlap_decoding: bool = True


def featurize_partition(
    batches: Iterator[pa.RecordBatch], job: PartitionJob, failures=None, cpu_seconds=None
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: one cached TFLite interpreter per Python worker, threads = task CPUs.

    Rows are (path, label, relpath) of the listed images below `job.root`; with
    `job.overlap_decoding`, a thread decodes the next batch while the model runs on this one.
    `failures`, an accumulator, also receives the (path, label, error) of every file that
    failed; `cpu_seconds` the CPU seconds spent decoding and in the model (see `worker_cpu`).
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    threads = context.cpus() if context is not None else 1
    featurizer = cached_featurizer(
        job.model_key, lambda: job.flatbuffer.value, threads, job.batch_size
    )
    read = reading.file_reader(job.root, job.s3_options)
    cpu = worker_cpu.StepCpuSeconds(cpu_seconds)
    decode = cpu.timed("decoding", lambda batch: decode_listed(batch, read))
    run_model = cpu.timed("model", featurizer)
    for decoded in decoded_in_order(batches, decode, job.overlap_decoding):
        outcomes = outcome_batch(decoded, run_model)
        if failures is not None and len(decoded.good) < len(decoded.paths):
            failures.add(failed_rows(outcomes))
        yield outcomes
    cpu.send()


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


def featurize(images, job: PartitionJob, failures=None, cpu_seconds=None):
    """(path, label, relpath) rows -> (path, label, features, error) rows."""

    def run(batches):
        return featurize_partition(batches, job, failures, cpu_seconds)

    return images.mapInArrow(run, OUTCOME_SCHEMA)


def write_outputs(
    spark, outcomes, failures, listed: list[inputs.InputFile], output: str, errors: str
) -> dict:
    """Write features and errors (replacing earlier ones) from one pass over the images.

    `listed` is every file found: the images `outcomes` reads, and the files recorded as
    errors from the listing alone (symbolic links, undecodable names, no label folder).

    The features are written by one parallel job; the failed files reach the driver through
    the `failures` accumulator of that same job (merged once per partition: the write is a
    result stage), so the model runs once per image without caching the outcomes: caching them
    would add a columnar encoding of every task's outcomes at its end.
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

    Every wave of tasks then keeps all cores busy: with any other count, the last wave has fewer
    tasks than cores, and a small last task can run alone while the other cores idle.
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
    job = PartitionJob(
        root=root,
        model_key=weights.cache_key,
        flatbuffer=spark.sparkContext.broadcast(flatbuffer),
        s3_options=options,
        batch_size=args.batch_size,
        overlap_decoding=not args.no_overlap,
    )
    outcomes = featurize(images, job, failures, cpu_seconds)
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
        "worker_cpu_s": worker_cpu.manifest_record(cpu_seconds.value),
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
