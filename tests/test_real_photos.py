"""Real Fruits-360 photos with the real ImageNet weights: fidelity, PCA exactness, separability.

`make test` runs it on ../shared's sample (12 photos a class: the probe trains on 6 a class and
reaches about 0.94). `make verify [PHOTOS=folder]` runs it on other real photos, by default
../shared's bench set (disjoint from the sample, 40 a class), where the probe must reach 0.97
(FRUITS_REAL_PHOTOS, FRUITS_PROBE_MIN_ACCURACY).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spark_jobs import basis, featurize, pca
from spark_jobs.images import load_model_input
from tests.support.shared_data import SHARED_SAMPLE, SHARED_WEIGHTS, require_shared

pytestmark = [pytest.mark.slow, pytest.mark.shared]
BASIS = "basis-20260102T020000Z-0123abcd"


@pytest.fixture(scope="module")
def photos() -> Path:
    require_shared()
    return Path(os.environ.get("FRUITS_REAL_PHOTOS") or SHARED_SAMPLE).resolve()


@pytest.fixture(scope="module")
def outputs(spark, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    featurize.run(spark, featurize.parse_args([
        "--input", str(photos), "--output", str(out / "features"), "--errors",
        str(out / "errors"), "--weights", str(SHARED_WEIGHTS),
    ]))
    folder = out / "models" / "pca" / BASIS
    manifest = pca.run(spark, pca.parse_args([
        "--input", str(out / "features"), "--output", str(out / "reduced"), "--fit-basis",
        str(folder), "--report", str(out / "report"), "--variance", "0.95",
    ]))
    manifest["model"] = json.loads((folder / basis.MODEL_FILE).read_text())
    features = pq.read_table(out / "features").to_pandas().sort_values("path", ignore_index=True)
    reduced = pq.read_table(out / "reduced").to_pandas().sort_values("path", ignore_index=True)
    return features, reduced, manifest


def local_file(path: str) -> Path:
    return Path(path.removeprefix("file:"))


def test_every_photo_is_featurized(photos, outputs):
    features, _, _ = outputs
    expected = {p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    assert {local_file(p) for p in features["path"]} == expected


def test_features_equal_plain_keras(outputs):
    import keras

    features, _, _ = outputs
    model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg"
    )
    model.load_weights(str(SHARED_WEIGHTS))
    largest = 0.0
    for start in range(0, len(features), 64):
        chunk = features.iloc[start : start + 64]
        batch = np.stack([load_model_input(local_file(p).read_bytes()) for p in chunk["path"]])
        expected = model.predict_on_batch(batch)
        largest = max(largest, float(np.abs(np.stack(chunk["features"]) - expected).max()))
    print(f"largest difference to plain Keras over {len(features)} photos: {largest:.2e}")
    assert largest < 1e-3


def test_k_and_explained_variance_equal_numpy(outputs):
    features, reduced, manifest = outputs
    vectors = np.stack(features["features"]).astype(np.float64)
    scale = vectors.std(axis=0)
    scale[scale == 0] = 1.0
    standardized = (vectors - vectors.mean(axis=0)) / scale
    singular = np.linalg.svd(standardized, compute_uv=False)
    ratio = singular**2 / np.sum(singular**2)
    cumulative = np.cumsum(ratio)
    k = int(np.searchsorted(cumulative, 0.95) + 1)
    print(f"k={manifest['k']} explained variance {manifest['explained_variance']:.6f} "
          f"(numpy: k={k}, {cumulative[k - 1]:.6f})")
    assert manifest["k"] == k
    np.testing.assert_allclose(manifest["explained_variance"], cumulative[k - 1], rtol=1e-6)
    np.testing.assert_allclose(manifest["explained_variance_at_fit"], cumulative[k - 1],
                               rtol=1e-6)
    eigenvalues = np.asarray(manifest["model"]["eigenvalues"])
    np.testing.assert_allclose((eigenvalues / eigenvalues.sum())[:k], ratio[:k], rtol=1e-6)
    assert {len(v) for v in reduced["pca_features"]} == {k}
    assert set(reduced["basis"]) == {BASIS} and manifest["basis"] == BASIS
    # The basis records the real weights it was fit with, as featurize recorded them.
    assert manifest["weights"]["source"].endswith(SHARED_WEIGHTS.name)
    assert manifest["weights"]["sha256"]


def test_linear_probe_recognises_held_out_photos(outputs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    _, reduced, manifest = outputs
    vectors = np.stack(reduced["pca_features"])
    train_x, test_x, train_y, test_y = train_test_split(
        vectors, reduced["label"], test_size=0.5, stratify=reduced["label"], random_state=0
    )
    probe = LogisticRegression(max_iter=3000).fit(train_x, train_y)
    accuracy = probe.score(test_x, test_y)
    print(f"linear probe on {manifest['k']}-d vectors: held-out accuracy {accuracy:.4f} "
          f"over {len(test_y)} photos, {reduced['label'].nunique()} classes")
    assert accuracy >= float(os.environ.get("FRUITS_PROBE_MIN_ACCURACY", "0.9"))
