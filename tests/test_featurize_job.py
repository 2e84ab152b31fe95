"""The featurize job on local Spark: synthetic fruits plus the bad-input corpus, random weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from devtools.samples import make_synthetic_fruits
from spark_jobs import featurize
from spark_jobs.accumulators import SecondsParam
from spark_jobs.images import load_model_input, load_pixels, to_model_scale
from spark_jobs.model import (
    FEATURE_DIM,
    Featurizer,
    Weights,
    WeightsUnavailable,
    build_keras_model,
    tflite_model,
)
from tests.support.corpora import make_bad_input_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def partition(tmp_path_factory) -> tuple[Path, set[str], list]:
    """A date partition: 12 synthetic fruits, then the corpus of odd and broken files."""
    root = tmp_path_factory.mktemp("lake") / "raw" / "dt=2026-11-20"
    make_synthetic_fruits(root, n_classes=3, per_class=4, seed=1)
    synthetic = {str(p.relative_to(root)) for p in root.rglob("*.jpg")}
    cases = make_bad_input_corpus(root)
    return root, synthetic, cases


def run_job(spark, root: Path, out: Path, weights: str = "random") -> dict:
    args = featurize.parse_args(
        ["--input", str(root), "--output", str(out / "features"), "--errors",
         str(out / "errors"), "--weights", weights, "--batch-size", "8"]
    )
    return featurize.run(spark, args)


@pytest.fixture(scope="module")
def outputs(spark, partition, tmp_path_factory):
    root, _, _ = partition
    out = tmp_path_factory.mktemp("out")
    manifest = run_job(spark, root, out)
    features = pq.read_table(out / "features").to_pandas()
    errors = pq.read_table(out / "errors").to_pandas()
    return out, manifest, features, errors


def relative(path: str, root: Path) -> str:
    return path.split(str(root) + "/", 1)[1]


def test_every_image_is_featurized_or_recorded_and_nothing_else(partition, outputs):
    root, synthetic, cases = partition
    _, manifest, features, errors = outputs
    expected_processed = synthetic | {c.relpath for c in cases if c.expected == "processed"}
    expected_errors = {c.relpath for c in cases if c.expected == "error"}
    assert {relative(p, root) for p in features["path"]} == expected_processed
    assert {relative(p, root) for p in errors["path"]} == expected_errors
    assert manifest["images_found"] == len(expected_processed) + len(expected_errors)
    assert manifest["featurized"] == len(features) and manifest["errors"] == len(errors)


def by_relative_path(frame, column: str, root) -> dict:
    """`column` of an output frame by the input's path relative to `root`."""
    return dict(zip(frame["path"].map(lambda p: relative(p, root)), frame[column], strict=True))


def test_labels_are_the_exact_parent_folders(partition, outputs):
    root, _, cases = partition
    by_path = by_relative_path(outputs[2], "label", root)
    for case in cases:
        if case.expected == "processed":
            assert by_path[case.relpath] == case.label
    assert {"Apple Braeburn", "Pomme d'été", 'Label "quoted" & more'} <= set(by_path.values())


def test_errors_carry_their_reason(partition, outputs):
    root, _, cases = partition
    reasons = by_relative_path(outputs[3], "error", root)
    for case in cases:
        if case.expected == "error":
            assert case.reason_contains in reasons[case.relpath], (case.relpath, reasons)


def test_output_schema_and_vectors(outputs):
    out, _, features, _ = outputs
    schema = pq.read_schema(next((out / "features").glob("*.parquet")))
    assert str(schema.field("features").type) == "list<element: float>"
    assert {str(schema.field(name).type) for name in ("path", "label")} == {"string"}
    vectors = np.stack(features["features"].to_numpy())
    assert vectors.shape == (len(features), FEATURE_DIM)
    assert np.isfinite(vectors).all()


def test_weights_are_recorded(outputs):
    out, manifest, _, _ = outputs
    recorded = json.loads((out / "features" / featurize.FEATURIZE_MANIFEST).read_text())
    assert recorded["weights"] == {"source": "random", "path": None, "sha256": None}
    assert recorded == json.loads(json.dumps(manifest))


def test_worker_cpu_time_is_recorded_for_decoding_and_the_model(outputs):
    _, manifest, _, _ = outputs
    spent = manifest["worker_cpu_s"]
    assert set(spent) == {"decoding", "model"}
    assert spent["decoding"] > 0 and spent["model"] > 0
    # CPU time of threads within the run: never more than the cores could give in its time.
    assert sum(spent.values()) <= manifest["timings_s"]["total"] * (os.cpu_count() or 1)


def test_cpu_seconds_are_summed_name_by_name():
    param = SecondsParam()
    total = param.zero({})
    for part in ({"decoding": 0.5, "model": 2.0}, {"decoding": 0.25}, {"model": 0.0}):
        total = param.addInPlace(total, part)
    assert total == {"decoding": 0.75, "model": 2.0}
    assert param.addInPlace(param.zero({}), {"decoding": 0.0}) == {"decoding": 0.0}


def test_features_equal_plain_keras(partition, outputs):
    root, _, _ = partition
    _, _, features, _ = outputs
    keras_model = build_keras_model(Weights("random", None, None))
    paths = [root / relative(p, root) for p in features["path"]]
    batch = np.stack([load_model_input(p.read_bytes()) for p in paths])
    expected = keras_model.predict(batch, verbose=0)
    got = np.stack(features["features"].to_numpy())
    assert np.abs(got - expected).max() < 1e-3


def test_featurizer_scales_pixels_into_its_input_as_the_model_scale_does(partition):
    # The job hands uint8 pixels to the interpreter; the ceiling and tests hand float input.
    root, synthetic, _ = partition
    contents = [(root / relpath).read_bytes() for relpath in sorted(synthetic)[:5]]
    pixel_arrays = [load_pixels(content) for content in contents]
    featurizer = Featurizer(tflite_model(Weights("random", None, None)), threads=1, batch_size=2)
    from_pixels = featurizer(pixel_arrays)
    from_floats = featurizer(to_model_scale(np.stack(pixel_arrays)))
    assert from_pixels.shape == (5, FEATURE_DIM)
    np.testing.assert_array_equal(from_pixels, from_floats)
    assert np.abs(from_pixels - featurizer(pixel_arrays[::-1])[::-1]).max() < 1e-4


@pytest.mark.parametrize(
    ("images", "cores", "per_task", "tasks"),
    [(0, 2, 512, 2), (1, 2, 512, 2), (1024, 2, 512, 2), (1025, 2, 512, 4), (4120, 2, 512, 10),
     (4096, 8, 512, 8), (4120, 8, 512, 16), (100_000, 4, 512, 196)],
)
def test_task_count_is_a_multiple_of_the_cores_within_the_cap(images, cores, per_task, tasks):
    count = featurize.task_count(images, cores, per_task)
    assert count == tasks
    assert count % cores == 0 and -(-images // count) <= per_task


def test_files_are_spread_evenly_over_the_tasks(spark, tmp_path):
    from spark_jobs.inputs import list_inputs

    root = tmp_path / "raw"
    make_synthetic_fruits(root, n_classes=3, per_class=7, seed=2)  # 21 files
    listed = list_inputs(str(root))
    images = featurize.image_frame(spark, listed)
    assert images.columns == ["path", "label", "relpath"]
    parts = images.rdd.mapPartitions(lambda rows: [[row.label for row in rows]]).collect()
    sizes = [len(labels) for labels in parts]
    cores = spark.sparkContext.defaultParallelism
    assert len(sizes) == featurize.task_count(21, cores) and sum(sizes) == 21
    assert max(sizes) - min(sizes) <= 1, sizes
    # Dealt round-robin: every task gets photos of every label, not one folder each.
    assert all(len(set(labels)) == 3 for labels in parts), parts
    rows = images.collect()
    assert sorted(row.path for row in rows) == sorted(entry.path for entry in listed)


def test_rerun_replaces_outputs(spark, partition, outputs, tmp_path):
    root, _, _ = partition
    out, manifest, features, errors = outputs
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    run_job(spark, root, copy)
    again = pq.read_table(copy / "features").to_pandas()
    assert len(again) == len(features)
    assert again["path"].is_unique
    left = features.sort_values("path").reset_index(drop=True)
    right = again.sort_values("path").reset_index(drop=True)
    assert (left["path"] == right["path"]).all()
    assert np.array_equal(np.stack(left["features"]), np.stack(right["features"]))
    assert len(pq.read_table(copy / "errors")) == len(errors)


def test_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="--input .*no-such-partition"):
        run_job(spark, tmp_path / "no-such-partition", tmp_path / "out")


def test_missing_weights_file_names_the_alternatives(spark, partition, tmp_path):
    root, _, _ = partition
    with pytest.raises(WeightsUnavailable, match="random"):
        run_job(spark, root, tmp_path / "out", weights=str(tmp_path / "nope.weights.h5"))


def test_model_conversion_is_kept_in_the_given_cache_folder(spark, partition, tmp_path):
    from spark_jobs.model import tflite_cache_name

    root, _, _ = partition
    cache = tmp_path / "lake" / "models" / "tflite"
    args = featurize.parse_args(
        ["--input", str(root / "Banana"), "--output", str(tmp_path / "features"), "--errors",
         str(tmp_path / "errors"), "--weights", "random", "--model-cache", str(cache)]
    )
    featurize.run(spark, args)
    cached = cache / tflite_cache_name(Weights("random", None, None))
    assert cached.is_file() and cached.stat().st_size > 1_000_000
    # A second run reads the cached conversion: the file is not rewritten.
    written = cached.stat().st_mtime_ns
    featurize.run(spark, args)
    assert cached.stat().st_mtime_ns == written


def test_cache_name_has_the_installed_tensorflow_version():
    # Read from package metadata so that a cache hit does not import TensorFlow.
    import tensorflow as tf

    from spark_jobs.model import tensorflow_version

    assert tensorflow_version() == tf.__version__
