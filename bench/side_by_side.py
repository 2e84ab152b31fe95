"""Batch size for the featurize job: one single-threaded interpreter per core, all at once.

The job runs one Python worker per core, each with a one-thread interpreter; this measures that
arrangement on pre-decoded photos (no Spark) at each batch size, and, for comparison in the same
run, one process with a thread per core, as the ceiling (c) of `make bench` runs. It also times
the scaling of decoded pixels into the model's input: from the contiguous array `images.pixels`
returns, against a strided view of Pillow's RGBX memory (what `pixels` returned before).

    python -m bench.side_by_side [--input ROOT] [--weights FILE] [--batch-sizes 1,2,4,8]

Defaults: ../shared's bench photos and real weights, as `make bench`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.ceiling import decoded, one_process_by_batch_size
from bench.run import BENCH_IMAGES, SHARED
from fruits_pipeline.settings import SHARED_WEIGHTS
from spark_jobs.images import MODEL_INPUT_SIZE, load_pixels, to_model_scale
from spark_jobs.model import Featurizer, Weights, file_sha256, tflite_model


def _worker(flatbuffer: bytes, paths: list[Path], batch_size: int, barrier, results) -> None:
    data = decoded(paths)
    featurizer = Featurizer(flatbuffer, threads=1, batch_size=batch_size)
    featurizer(data[:batch_size])  # warm-up: allocation, XNNPACK packing
    barrier.wait()
    started = time.time()
    for _ in range(2):
        featurizer(data)
    results.put((2 * len(data), started, time.time()))


def side_by_side(flatbuffer: bytes, paths: list[Path], batch_size: int, processes: int) -> float:
    """Images/s of `processes` one-thread interpreters started at once: all their images over
    the time from the first start to the last end (a process left running alone would go
    faster)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=_worker, args=(flatbuffer, paths, batch_size, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        runs = [results.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    images = sum(count for count, _, _ in runs)
    return images / (max(end for _, _, end in runs) - min(start for _, start, _ in runs))


def scaling_ms_per_image(paths: list[Path], repeats: int = 5) -> dict[str, float]:
    """ms an image: copying Pillow's pixels out contiguously, and scaling either layout."""
    from PIL import Image

    contiguous = [load_pixels(p.read_bytes()) for p in paths]
    resized = [Image.fromarray(array) for array in contiguous]  # Pillow images of those pixels
    # Pillow keeps RGB as RGBX: the same strides as a view of its own memory.
    strided = [np.asarray(image.convert("RGBA"))[..., :3] for image in resized]
    target = np.empty((*MODEL_INPUT_SIZE, 3), np.float32)

    def per_image(step) -> float:
        started = time.perf_counter()
        for _ in range(repeats):
            for item in range(len(paths)):
                step(item)
        return round(1000 * (time.perf_counter() - started) / (repeats * len(paths)), 4)

    return {
        "contiguous_copy": per_image(lambda i: np.asarray(resized[i])),
        "scaling_contiguous": per_image(lambda i: to_model_scale(contiguous[i], out=target)),
        "scaling_strided_rgbx_view": per_image(lambda i: to_model_scale(strided[i], out=target)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=str(BENCH_IMAGES))
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    args = parser.parse_args(argv)
    if not (Path(args.input).is_dir() and Path(args.weights).is_file()):
        print(f"bench-batch needs photos and real weights ({SHARED}); absent here")
        return 2
    weights = Weights(args.weights, args.weights, file_sha256(args.weights))
    flatbuffer = tflite_model(weights)
    paths = sorted(Path(args.input).rglob("*.jpg"))[: args.images]
    processes = os.cpu_count() or 1
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    side = {size: round(side_by_side(flatbuffer, paths, size, processes), 1) for size in sizes}
    # The same photos in one process with `processes` threads, as the ceiling (c) runs them.
    one = one_process_by_batch_size(flatbuffer, decoded(paths), sizes, threads=processes)
    print(
        json.dumps(
            {
                "processes": processes,
                "side_by_side_images_per_s": side,
                "one_process_all_threads_images_per_s": {k: round(v, 1) for k, v in one.items()},
                "pixels_ms_per_image": scaling_ms_per_image(paths),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
