"""The PCA job on local Spark, against scikit-learn on the same vectors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from spark_jobs import pca

pytestmark = pytest.mark.slow
DIM = 1280


def write_features(path, vectors: np.ndarray, labels: list[str]) -> None:
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


def synthetic_vectors(rows: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Low-rank structure plus noise, ReLU-like, with two dead (all-zero) columns."""
    rng = np.random.default_rng(seed)
    labels = [f"class {i % 5}" for i in range(rows)]
    centres = rng.normal(0, 3, (5, 20))
    latent = centres[[i % 5 for i in range(rows)]] + rng.normal(0, 1, (rows, 20))
    vectors = np.maximum(latent @ rng.normal(0, 1, (20, DIM)) + rng.normal(0, 0.5, (rows, DIM)), 0)
    vectors[:, [7, 900]] = 0.0
    return vectors.astype(np.float32), labels


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pca")
    vectors, labels = synthetic_vectors(300)
    write_features(root / "features", vectors, labels)
    args = pca.parse_args(
        ["--input", str(root / "features"), "--output", str(root / "reduced"), "--model",
         str(root / "model"), "--report", str(root / "report"), "--variance", "0.9"]
    )
    manifest = pca.run(spark, args)
    return root, vectors, manifest


def sklearn_fit(vectors: np.ndarray) -> tuple[PCA, np.ndarray]:
    standardized = StandardScaler().fit_transform(vectors.astype(np.float64))
    model = PCA(svd_solver="full").fit(standardized)
    return model, standardized


def test_k_and_explained_variance_equal_sklearn(fitted):
    _, vectors, manifest = fitted
    reference, _ = sklearn_fit(vectors)
    cumulative = np.cumsum(reference.explained_variance_ratio_)
    expected_k = int(np.searchsorted(cumulative, 0.9) + 1)
    assert manifest["k"] == expected_k
    np.testing.assert_allclose(manifest["explained_variance"], cumulative[expected_k - 1],
                               rtol=1e-6)
    np.testing.assert_allclose(manifest["explained_variance_ratio"],
                               reference.explained_variance_ratio_[:expected_k], rtol=1e-6)


def test_components_and_reduced_vectors_equal_sklearn(fitted):
    root, vectors, manifest = fitted
    k = manifest["k"]
    reference, standardized = sklearn_fit(vectors)
    model = json.loads((root / "model" / pca.MODEL_FILE).read_text())
    components = np.asarray(model["components"])
    signs = np.sign(np.sum(components * reference.components_[:k], axis=1))
    np.testing.assert_allclose(components * signs[:, None], reference.components_[:k], atol=1e-6)

    reduced = pq.read_table(root / "reduced").to_pandas()
    by_path = dict(zip(reduced["path"], reduced["pca_features"], strict=True))
    expected = reference.transform(standardized)[:, :k] * signs
    for i in range(len(vectors)):
        label = f"class {i % 5}"
        got = by_path[f"file:/raw/{label}/{i}.jpg"]
        assert len(got) == k
        np.testing.assert_allclose(got, expected[i], rtol=1e-4, atol=1e-4)


def test_dead_columns_give_no_nan(fitted):
    root, _, _ = fitted
    reduced = np.stack(pq.read_table(root / "reduced").to_pandas()["pca_features"])
    assert np.isfinite(reduced).all()
    model = json.loads((root / "model" / pca.MODEL_FILE).read_text())
    assert model["scale"][7] == 1.0 and model["scale"][900] == 1.0


def test_manifest_and_report(fitted):
    root, vectors, manifest = fitted
    on_disk = json.loads((root / "report" / "manifest.json").read_text())
    assert on_disk["k"] == manifest["k"] and on_disk["rows"] == len(vectors)
    assert len(on_disk["explained_variance_ratio"]) == on_disk["k"]
    assert on_disk["variance_threshold"] == 0.9
    assert on_disk["input"].endswith("features") and on_disk["output"].endswith("reduced")
    assert {"fit", "transform_and_write", "report", "total"} <= set(on_disk["timings_s"])
    for name in ("explained_variance.png", "pca_scatter.png"):
        with Image.open(root / "report" / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_fixed_k(spark, fitted, tmp_path):
    root, vectors, _ = fitted
    args = pca.parse_args(
        ["--input", str(root / "features"), "--output", str(tmp_path / "reduced"), "--model",
         str(tmp_path / "model"), "--report", str(tmp_path / "report"), "--k", "7"]
    )
    manifest = pca.run(spark, args)
    assert manifest["k"] == 7
    reduced = pq.read_table(tmp_path / "reduced").to_pandas()
    assert len(reduced) == len(vectors)
    assert {len(v) for v in reduced["pca_features"]} == {7}


def test_apply_model_reproduces_the_fit(spark, fitted, tmp_path):
    root, _, manifest = fitted
    args = pca.parse_args(
        ["--input", str(root / "features"), "--output", str(tmp_path / "reduced"),
         "--apply-model", str(root / "model"), "--report", str(tmp_path / "report")]
    )
    applied = pca.run(spark, args)
    assert applied["k"] == manifest["k"] and applied["mode"] == "apply"
    first = pq.read_table(root / "reduced").to_pandas().sort_values("path")
    second = pq.read_table(tmp_path / "reduced").to_pandas().sort_values("path")
    np.testing.assert_array_equal(np.stack(first["pca_features"]),
                                  np.stack(second["pca_features"]))


def test_k_beyond_rows_is_a_clear_error(spark, tmp_path):
    vectors, labels = synthetic_vectors(6)
    write_features(tmp_path / "features", vectors, labels)
    args = pca.parse_args(
        ["--input", str(tmp_path / "features"), "--output", str(tmp_path / "reduced"),
         "--model", str(tmp_path / "model"), "--report", str(tmp_path / "report"), "--k", "6"]
    )
    with pytest.raises(ValueError, match=r"k=6 is out of range: it must be between 1 and 5"):
        pca.run(spark, args)


def test_fewer_than_two_rows_is_a_clear_error(spark, tmp_path):
    vectors, labels = synthetic_vectors(1)
    write_features(tmp_path / "features", vectors, labels)
    args = pca.parse_args(
        ["--input", str(tmp_path / "features"), "--output", str(tmp_path / "reduced"),
         "--model", str(tmp_path / "model"), "--report", str(tmp_path / "report")]
    )
    with pytest.raises(ValueError, match="at least 2 feature vectors; the input has 1"):
        pca.run(spark, args)


@pytest.mark.parametrize(
    "extra, message",
    [(["--variance", "1.5"], "--variance must be in"), (["--k", "0"], "--k must be between"),
     (["--variance", "0.9", "--k", "3"], "not allowed with")],
)
def test_bad_arguments_are_refused(extra, message, capsys):
    with pytest.raises(SystemExit):
        pca.parse_args(["--input", "i", "--output", "o", "--model", "m", "--report", "r", *extra])
    assert message in capsys.readouterr().err
