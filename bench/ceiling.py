"""Benchmark (c): the fastest inference of the model in one process, all cores, on pre-decoded
batches; and plain Keras features of a few images, to check (b)'s fidelity.

    python -m bench.ceiling --input ROOT --weights FILE [--keras-check N --features URI]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from spark_jobs.images import load_model_input
from spark_jobs.model import Featurizer, Weights, build_keras_model, file_sha256, tflite_model


def decoded(paths: list[Path]) -> np.ndarray:
    return np.stack([load_model_input(p.read_bytes()) for p in paths])


def images_per_second(run, batches: list[np.ndarray], repeats: int = 2) -> float:
    run(batches[0])  # warm-up: allocation, XNNPACK packing
    started = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            run(batch)
    return repeats * sum(len(b) for b in batches) / (time.perf_counter() - started)


def one_process_by_batch_size(
    flatbuffer: bytes, data: np.ndarray, sizes: list[int], threads: int
) -> dict[int, float]:
    """Images/s of one interpreter with `threads` threads, at each batch size."""
    rates = {}
    for size in sizes:
        # One interpreter call per batch: the Featurizer would otherwise split it.
        featurizer = Featurizer(flatbuffer, threads, batch_size=size)
        batches = [data[i : i + size] for i in range(0, len(data), size)]
        rates[size] = images_per_second(featurizer, batches)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="the fastest one counts")
    parser.add_argument("--features", help="Parquet of (b): compare with plain Keras")
    parser.add_argument("--keras-check", type=int, default=256)
    parser.add_argument("--tflite-only", action="store_true", help="no Keras figures")
    args = parser.parse_args(argv)

    weights = Weights(args.weights, args.weights, file_sha256(args.weights))
    paths = sorted(Path(args.input).rglob("*.jpg"))[: args.images]
    data = decoded(paths)
    cores = os.cpu_count() or 1
    flatbuffer = tflite_model(weights)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    by_batch_size = one_process_by_batch_size(flatbuffer, data, sizes, threads=cores)
    result = {
        "tflite_all_cores": max(by_batch_size.values()),
        "tflite_by_batch_size": by_batch_size,
    }
    if args.tflite_only:
        print(json.dumps(result))
        return 0
    keras_model = build_keras_model(weights)
    batches = [data[i : i + 32] for i in range(0, len(data), 32)]
    result["keras_predict_on_batch"] = images_per_second(
        keras_model.predict_on_batch, batches, repeats=1
    )
    if args.features:
        import pyarrow.parquet as pq

        table = pq.read_table(args.features).to_pandas().sample(n=args.keras_check, random_state=0)
        files = [Path(p.removeprefix("file:")) for p in table["path"]]
        expected = keras_model.predict_on_batch(decoded(files))
        result["largest_difference_to_keras"] = float(
            np.abs(np.stack(table["features"]) - expected).max()
        )
        result["keras_checked_images"] = len(files)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
