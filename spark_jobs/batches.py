"""The per-batch work of the featurize job's Python workers: decode a batch of listed files,
run the model on the good ones, and build the Arrow rows Spark writes (one per file).

No Spark here: `featurize.featurize_partition` feeds these the Arrow batches of its task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spark_jobs.images import BadImage, load_pixels
from spark_jobs.model import FEATURE_DIM
from spark_jobs.reading import UnreadableFile


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
        except (BadImage, UnreadableFile) as exc:
            errors.append(str(exc))
            continue
        errors.append(None)
        good.append(index)
    return DecodedBatch(paths, labels, errors, good, arrays)


def decode_listed(batch: pa.RecordBatch, read) -> DecodedBatch:
    """`decode_batch` of an Arrow batch of listed files: (path, label, relpath) rows."""
    return decode_batch(
        batch.column("path").to_pylist(),
        batch.column("label").to_pylist(),
        batch.column("relpath").to_pylist(),
        read,
    )


def decoded_in_order(
    batches: Iterable[pa.RecordBatch],
    decode: Callable[[pa.RecordBatch], DecodedBatch],
    overlap: bool = True,
) -> Iterator[DecodedBatch]:
    """Each batch decoded, in order. With `overlap`, a thread decodes the next batch while the
    caller works on this one (file reads, Pillow and TFLite all release the GIL); at most two
    batches are in memory."""
    if not overlap:
        for batch in batches:
            yield decode(batch)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending = None
        for batch in batches:
            upcoming = pool.submit(decode, batch)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def outcome_batch(decoded: DecodedBatch, featurize_batch) -> pa.RecordBatch:
    """Run the model on a decoded batch: (path, label, features, error) rows, one per file.

    Built with pyarrow directly: the features column wraps the model's output array without a
    copy per row (pandas made one Python object per vector, a sizeable share of a worker's time).
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


def failed_rows(outcomes: pa.RecordBatch) -> list[tuple[str, str | None, str]]:
    """(path, label, error) of the files of an outcome batch that failed."""
    return [
        (row["path"], row["label"], row["error"])
        for row in outcomes.select(["path", "label", "error"]).to_pylist()
        if row["error"] is not None
    ]
