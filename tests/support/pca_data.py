"""Feature vectors as the featurize job writes them, for the PCA and reprojection jobs' tests."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIM = 1280
WEIGHTS_A = {"source": "/a.h5", "sha256": "aaa"}
WEIGHTS_B = {"source": "/b.h5", "sha256": "bbb"}


def write_features(path, vectors: np.ndarray, labels: list[str], weights: dict | None = None):
    """Parquet as featurize writes it and, with `weights`, its `_featurize.json` beside it."""
    path.mkdir(parents=True)
    table = pa.table(
        {
            "path": [f"file:/raw/{label}/{i}.jpg" for i, label in enumerate(labels)],
            "label": labels,
            "features": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32())),
        }
    )
    # Several files, so that moments are merged across partitions.
    bounds = np.linspace(0, len(labels), 4).astype(int)
    for part, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        pq.write_table(table.slice(start, stop - start), path / f"part-{part}.parquet")
    if weights is not None:
        (path / "_featurize.json").write_text(json.dumps({"weights": weights}))


def synthetic_vectors(
    rows: int, distribution: int = 0, draw: int = 0, dim: int = DIM
) -> tuple[np.ndarray, list[str]]:
    """Low-rank structure plus noise, ReLU-like, with two dead (all-zero) columns.

    `distribution` picks the class centres and the latent directions; `draw` the rows drawn
    from them: the same distribution with another draw is another day of the same uploads."""
    shape = np.random.default_rng(distribution)
    centres = shape.normal(0, 3, (5, 20))
    loadings = shape.normal(0, 1, (20, dim))
    rng = np.random.default_rng([distribution, draw])
    labels = [f"class {i % 5}" for i in range(rows)]
    latent = centres[[i % 5 for i in range(rows)]] + rng.normal(0, 1, (rows, 20))
    vectors = np.maximum(latent @ loadings + rng.normal(0, 0.5, (rows, dim)), 0)
    vectors[:, [7, min(900, dim - 1)]] = 0.0
    return vectors.astype(np.float32), labels
