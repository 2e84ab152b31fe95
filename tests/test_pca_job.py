"""The PCA job on local Spark, against scikit-learn on the same vectors: fitting a basis, then
applying it to other days."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from fruits_pipeline.settings import REPO_ROOT as REPO
from spark_jobs import basis, pca
from tests.support.pca_data import DIM, WEIGHTS_A, WEIGHTS_B, synthetic_vectors, write_features

pytestmark = pytest.mark.slow
BASIS = "basis-20260102T020000Z-0123abcd"
def fit_argv(inputs, out, basis_folder, *extra: str) -> list[str]:
    return ["--input", *map(str, inputs), "--output", str(out / "reduced"), "--report",
            str(out / "report"), "--fit-basis", str(basis_folder), *extra]


def apply_argv(input_, out, basis_folder, *extra: str) -> list[str]:
    return ["--input", str(input_), "--output", str(out / "reduced"), "--report",
            str(out / "report"), "--apply-basis", str(basis_folder), *extra]


def saved_model(basis_folder) -> dict:
    return json.loads((basis_folder / basis.MODEL_FILE).read_text())


def numpy_projection(model: dict, vectors: np.ndarray) -> np.ndarray:
    mean, scale = np.asarray(model["mean"]), np.asarray(model["scale"])
    return ((vectors.astype(np.float64) - mean) / scale) @ np.asarray(model["components"]).T


def reduced_by_path(folder) -> dict:
    reduced = pq.read_table(folder).to_pandas()
    return dict(zip(reduced["path"], reduced["pca_features"], strict=True))


def folder_bytes(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    """Day A: fit basis BASIS on it, keeping the components that explain 90 %."""
    root = tmp_path_factory.mktemp("pca")
    vectors, labels = synthetic_vectors(300)
    write_features(root / "day-a" / "features", vectors, labels, WEIGHTS_A)
    args = pca.parse_args(
        fit_argv([root / "day-a" / "features"], root / "day-a", root / "models" / "pca" / BASIS,
                 "--variance", "0.9", "--days", "2026-01-01")
    )
    manifest = pca.run(spark, args)
    return root, vectors, manifest


@pytest.fixture(scope="module")
def applied(spark, fitted):
    """Day B (another draw of day A's distribution) and day C (other latent directions),
    reduced in day A's basis."""
    root, _, _ = fitted
    days = {}
    for day, distribution, draw in (("day-b", 0, 1), ("day-c", 1, 2)):
        vectors, labels = synthetic_vectors(300, distribution=distribution, draw=draw)
        write_features(root / day / "features", vectors, labels, WEIGHTS_A)
        args = pca.parse_args(
            apply_argv(root / day / "features", root / day, root / "models" / "pca" / BASIS)
        )
        days[day] = (vectors, pca.run(spark, args))
    return days


def sklearn_fit(vectors: np.ndarray) -> tuple[PCA, np.ndarray]:
    standardized = StandardScaler().fit_transform(vectors.astype(np.float64))
    model = PCA(svd_solver="full").fit(standardized)
    return model, standardized


# Fitting a basis.


def test_k_and_explained_variance_equal_sklearn(fitted):
    root, vectors, manifest = fitted
    reference, _ = sklearn_fit(vectors)
    cumulative = np.cumsum(reference.explained_variance_ratio_)
    expected_k = int(np.searchsorted(cumulative, 0.9) + 1)
    assert manifest["k"] == expected_k
    # At fit, the share the basis captures of its own rows is the cumulative explained variance.
    np.testing.assert_allclose(manifest["explained_variance"], cumulative[expected_k - 1],
                               rtol=1e-6)
    np.testing.assert_allclose(manifest["explained_variance_at_fit"],
                               cumulative[expected_k - 1], rtol=1e-6)
    model = saved_model(root / "models" / "pca" / BASIS)
    eigenvalues = np.asarray(model["eigenvalues"])
    np.testing.assert_allclose((eigenvalues / eigenvalues.sum())[:expected_k],
                               reference.explained_variance_ratio_[:expected_k], rtol=1e-6)


def test_components_and_reduced_vectors_equal_sklearn(fitted):
    root, vectors, manifest = fitted
    k = manifest["k"]
    reference, standardized = sklearn_fit(vectors)
    model = saved_model(root / "models" / "pca" / BASIS)
    components = np.asarray(model["components"])
    signs = np.sign(np.sum(components * reference.components_[:k], axis=1))
    np.testing.assert_allclose(components * signs[:, None], reference.components_[:k], atol=1e-6)

    reduced = pq.read_table(root / "day-a" / "reduced").to_pandas()
    assert set(reduced["basis"]) == {BASIS}
    by_path = dict(zip(reduced["path"], reduced["pca_features"], strict=True))
    expected = reference.transform(standardized)[:, :k] * signs
    for i in range(len(vectors)):
        label = f"class {i % 5}"
        got = by_path[f"file:/raw/{label}/{i}.jpg"]
        assert len(got) == k
        np.testing.assert_allclose(got, expected[i], rtol=1e-4, atol=1e-4)


def test_dead_columns_give_no_nan(fitted):
    root, _, _ = fitted
    reduced = np.stack(pq.read_table(root / "day-a" / "reduced").to_pandas()["pca_features"])
    assert np.isfinite(reduced).all()
    model = saved_model(root / "models" / "pca" / BASIS)
    assert model["scale"][7] == 1.0 and model["scale"][900] == 1.0


def test_basis_manifest(fitted):
    root, vectors, manifest = fitted
    folder = root / "models" / "pca" / BASIS
    assert {p.name for p in folder.iterdir() if not p.name.endswith(".crc")} == {
        basis.MODEL_FILE, basis.MANIFEST_FILE,
    }
    written = json.loads((folder / basis.MANIFEST_FILE).read_text())
    assert written["basis"] == BASIS
    assert written["k"] == manifest["k"] == saved_model(folder)["k"]
    assert written["fit_on"] == {"days": ["2026-01-01"], "rows": len(vectors)}
    assert written["feature_dim"] == DIM
    assert (written["variance_threshold"], written["fixed_k"]) == (0.9, None)
    assert written["explained_variance"] == manifest["explained_variance_at_fit"]
    assert written["weights"] == WEIGHTS_A
    assert datetime.fromisoformat(written["created_at"]).tzinfo is not None


def test_manifest_and_report(fitted):
    root, vectors, manifest = fitted
    report = root / "day-a" / "report"
    on_disk = json.loads((report / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["k"] == manifest["k"] and on_disk["rows"] == len(vectors)
    assert (on_disk["basis"], on_disk["mode"]) == (BASIS, "fit")
    assert on_disk["basis_fit_on"] == {"days": ["2026-01-01"], "rows": len(vectors)}
    assert on_disk["feature_dim"] == DIM and on_disk["weights"] == WEIGHTS_A
    assert on_disk["input"].endswith("features") and on_disk["output"].endswith("reduced")
    assert on_disk["basis_uri"].endswith(f"models/pca/{BASIS}")
    assert {"fit", "transform_and_write", "report", "total"} <= set(on_disk["timings_s"])
    for name in ("explained_variance.png", "pca_scatter.png"):
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_fixed_k(spark, fitted, tmp_path):
    root, vectors, _ = fitted
    folder = tmp_path / "models" / "pca" / "basis-20260103T020000Z-00000007"
    manifest = pca.run(spark, pca.parse_args(
        fit_argv([root / "day-a" / "features"], tmp_path, folder, "--k", "7")
    ))
    assert manifest["k"] == 7
    written = json.loads((folder / basis.MANIFEST_FILE).read_text())
    assert (written["k"], written["fixed_k"], written["variance_threshold"]) == (7, 7, None)
    reduced = pq.read_table(tmp_path / "reduced").to_pandas()
    assert len(reduced) == len(vectors)
    assert {len(v) for v in reduced["pca_features"]} == {7}


def test_fit_on_several_days(spark, fitted, applied, tmp_path):
    root, vectors, _ = fitted
    folder = tmp_path / "models" / "pca" / "basis-20260103T020000Z-000000ab"
    inputs = [root / "day-b" / "features", root / "day-a" / "features"]
    manifest = pca.run(spark, pca.parse_args(
        fit_argv(inputs, tmp_path, folder, "--k", "5", "--days", "2026-01-02", "2026-01-01")
    ))
    both = np.concatenate([vectors, applied["day-b"][0]])
    reference, _ = sklearn_fit(both)
    np.testing.assert_allclose(manifest["explained_variance"],
                               np.cumsum(reference.explained_variance_ratio_)[4], rtol=1e-6)
    assert manifest["basis_fit_on"] == {"days": ["2026-01-01", "2026-01-02"], "rows": 600}
    assert manifest["input"] == [str(p) for p in inputs]
    assert manifest["weights"] == WEIGHTS_A
    assert pq.read_table(tmp_path / "reduced").num_rows == 600


def test_fit_on_days_of_different_weights_is_refused(spark, fitted, tmp_path):
    root, _, _ = fitted
    vectors, labels = synthetic_vectors(30, draw=5)
    write_features(tmp_path / "other", vectors, labels, WEIGHTS_B)
    folder = tmp_path / "models" / "pca" / "basis-20260103T020000Z-000000cd"
    args = pca.parse_args(fit_argv([root / "day-a" / "features", tmp_path / "other"],
                                   tmp_path, folder, "--k", "3"))
    with pytest.raises(basis.WeightsMismatch, match=r"/a\.h5.*/b\.h5") as raised:
        pca.run(spark, args)
    assert str(tmp_path / "other") in str(raised.value)
    assert not folder.exists()


def test_fit_refuses_a_folder_that_holds_a_basis(spark, fitted, tmp_path):
    root, _, _ = fitted
    folder = root / "models" / "pca" / BASIS
    before = folder_bytes(folder)
    vectors, labels = synthetic_vectors(40, draw=9)
    write_features(tmp_path / "features", vectors, labels, WEIGHTS_A)
    args = pca.parse_args(fit_argv([tmp_path / "features"], tmp_path, folder, "--k", "3"))
    with pytest.raises(FileExistsError, match=f"basis {BASIS} already exists"):
        pca.run(spark, args)
    assert folder_bytes(folder) == before
    assert not (tmp_path / "reduced").exists() and not (tmp_path / "report").exists()


def test_k_beyond_rows_is_a_clear_error(spark, tmp_path):
    vectors, labels = synthetic_vectors(6)
    write_features(tmp_path / "features", vectors, labels)
    folder = tmp_path / "models" / "pca" / BASIS
    args = pca.parse_args(fit_argv([tmp_path / "features"], tmp_path, folder, "--k", "6"))
    with pytest.raises(ValueError, match=r"k=6 is out of range: it must be between 1 and 5"):
        pca.run(spark, args)
    assert not folder.exists()  # a failed fit leaves no half basis


def test_fewer_than_two_rows_is_a_clear_error(spark, tmp_path):
    vectors, labels = synthetic_vectors(1)
    write_features(tmp_path / "features", vectors, labels)
    args = pca.parse_args(
        fit_argv([tmp_path / "features"], tmp_path, tmp_path / "models" / "pca" / BASIS)
    )
    with pytest.raises(ValueError, match="at least 2 feature vectors; the input has 1"):
        pca.run(spark, args)


# Fitting a basis on its own (the refit DAG): no --output, no --report.


def fit_only_argv(inputs, basis_folder, *extra: str) -> list[str]:
    return ["--input", *map(str, inputs), "--fit-basis", str(basis_folder), *extra]


def test_fit_only_writes_the_basis_and_equals_sklearn(spark, fitted, applied, tmp_path,
                                                      monkeypatch):
    from spark_jobs import storage

    root, vectors, _ = fitted
    written = []
    original = storage.write_bytes  # every file goes through it (write_json too)
    monkeypatch.setattr(storage, "write_bytes", lambda spark, uri, data: (
        written.append(uri.rsplit("/", 1)[-1]), original(spark, uri, data)))
    folder = tmp_path / "models" / "pca" / "basis-20260105T020000Z-0000f17e"
    inputs = [root / "day-a" / "features", root / "day-b" / "features"]
    manifest = pca.run(spark, pca.parse_args(fit_only_argv(
        inputs, folder, "--variance", "0.9", "--days", "2026-01-02", "2026-01-01"
    )))
    # The model, its curve, then the manifest that makes the basis complete; nothing else.
    assert written == [basis.MODEL_FILE, basis.CURVE_FILE, basis.MANIFEST_FILE]
    assert {p.name for p in folder.iterdir() if not p.name.endswith(".crc")} == {
        basis.MODEL_FILE, basis.CURVE_FILE, basis.MANIFEST_FILE,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    with Image.open(folder / basis.CURVE_FILE) as image:
        assert image.format == "PNG" and image.size[0] > 300

    both = np.concatenate([vectors, applied["day-b"][0]])
    reference, _ = sklearn_fit(both)
    cumulative = np.cumsum(reference.explained_variance_ratio_)
    k = int(np.searchsorted(cumulative, 0.9) + 1)
    assert (manifest["basis"], manifest["k"], manifest["rows"]) == (folder.name, k, 600)
    assert manifest["fit_on"] == {"days": ["2026-01-01", "2026-01-02"], "rows": 600}
    np.testing.assert_allclose(manifest["explained_variance"], cumulative[k - 1], rtol=1e-6)
    components = np.asarray(saved_model(folder)["components"])
    signs = np.sign(np.sum(components * reference.components_[:k], axis=1))
    np.testing.assert_allclose(components * signs[:, None], reference.components_[:k], atol=1e-6)
    on_disk = json.loads((folder / basis.MANIFEST_FILE).read_text())
    assert on_disk == {key: value for key, value in manifest.items()
                       if key not in ("rows", "timings_s")}
    assert on_disk["weights"] == WEIGHTS_A and on_disk["variance_threshold"] == 0.9


def test_fit_only_prints_the_basis_manifest(fitted, tmp_path):
    root, vectors, _ = fitted
    folder = tmp_path / "models" / "pca" / "basis-20260105T020000Z-0000c11a"
    done = subprocess.run(
        [sys.executable, "-m", "spark_jobs.pca", "--master", "local[1]", *fit_only_argv(
            [root / "day-a" / "features"], folder, "--k", "4", "--days", "2026-01-01")],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary) == {"basis", "k", "explained_variance", "rows", "fit_on"}
    assert (summary["basis"], summary["k"], summary["rows"]) == (folder.name, 4, len(vectors))
    assert summary["fit_on"] == {"days": ["2026-01-01"], "rows": len(vectors)}
    assert summary["explained_variance"] == json.loads(
        (folder / basis.MANIFEST_FILE).read_text())["explained_variance"]


def test_fit_only_refuses_a_folder_that_holds_a_basis(spark, fitted):
    root, _, _ = fitted
    folder = root / "models" / "pca" / BASIS
    before = folder_bytes(folder)
    args = pca.parse_args(fit_only_argv([root / "day-a" / "features"], folder, "--days", "d"))
    with pytest.raises(FileExistsError, match=f"basis {BASIS} already exists"):
        pca.run(spark, args)
    assert folder_bytes(folder) == before


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf, expected
@pytest.mark.parametrize("only", [True, False], ids=["fit-only", "fit-and-reduce"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features_are_refused_and_nothing_is_written(spark, tmp_path, only, value):
    vectors, labels = synthetic_vectors(30, dim=16)
    vectors[11, 5] = value
    write_features(tmp_path / "features", vectors, labels)
    folder = tmp_path / "models" / "pca" / BASIS
    argv = (fit_only_argv([tmp_path / "features"], folder, "--k", "3", "--days", "d") if only
            else fit_argv([tmp_path / "features"], tmp_path, folder, "--k", "3"))
    with pytest.raises(ValueError, match="the features contain NaN or infinite values"):
        pca.run(spark, pca.parse_args(argv))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # 0 / 0, expected
@pytest.mark.parametrize("only", [True, False], ids=["fit-only", "fit-and-reduce"])
def test_features_without_variance_are_refused_and_nothing_is_written(spark, tmp_path, only):
    write_features(tmp_path / "features", np.full((20, 16), 0.5), ["a"] * 20)
    folder = tmp_path / "models" / "pca" / BASIS
    argv = (fit_only_argv([tmp_path / "features"], folder, "--days", "d") if only
            else fit_argv([tmp_path / "features"], tmp_path, folder))
    with pytest.raises(ValueError, match="the fit is unusable: its explained variance is nan"):
        pca.run(spark, pca.parse_args(argv))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


# Applying a basis.


def test_apply_to_the_fit_rows_reproduces_the_fit(spark, fitted, tmp_path):
    root, _, manifest = fitted
    args = pca.parse_args(
        apply_argv(root / "day-a" / "features", tmp_path, root / "models" / "pca" / BASIS)
    )
    applied = pca.run(spark, args)
    assert applied["k"] == manifest["k"] and applied["mode"] == "apply"
    assert applied["explained_variance"] == pytest.approx(manifest["explained_variance"],
                                                          rel=1e-9)
    first = pq.read_table(root / "day-a" / "reduced").to_pandas().sort_values("path")
    second = pq.read_table(tmp_path / "reduced").to_pandas().sort_values("path")
    np.testing.assert_array_equal(np.stack(first["pca_features"]),
                                  np.stack(second["pca_features"]))
    assert set(second["basis"]) == {BASIS}


def test_apply_to_another_day_projects_in_the_saved_basis(fitted, applied):
    root, _, fit_manifest = fitted
    vectors, manifest = applied["day-b"]
    assert manifest["k"] == fit_manifest["k"]
    assert (manifest["basis"], manifest["mode"]) == (BASIS, "apply")
    assert manifest["rows"] == len(vectors) and manifest["weights"] == WEIGHTS_A
    assert manifest["explained_variance_at_fit"] == fit_manifest["explained_variance_at_fit"]
    assert manifest["basis_fit_on"] == {"days": ["2026-01-01"], "rows": 300}
    assert "fit" not in manifest["timings_s"] and "moments" in manifest["timings_s"]

    reduced = pq.read_table(root / "day-b" / "reduced").to_pandas()
    assert len(reduced) == len(vectors) and set(reduced["basis"]) == {BASIS}
    expected = numpy_projection(saved_model(root / "models" / "pca" / BASIS), vectors)
    by_path = dict(zip(reduced["path"], reduced["pca_features"], strict=True))
    for i in range(len(vectors)):
        got = by_path[f"file:/raw/class {i % 5}/{i}.jpg"]
        assert len(got) == fit_manifest["k"]
        np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-4)
    report = root / "day-b" / "report"
    assert json.loads((report / "manifest.json").read_text())["mode"] == "apply"
    for name in ("explained_variance.png", "pca_scatter.png"):
        with Image.open(report / name) as image:
            assert image.format == "PNG"


def test_captured_share_says_whether_a_day_is_like_the_fit(fitted, applied):
    _, _, fit_manifest = fitted
    at_fit = fit_manifest["explained_variance"]
    same = applied["day-b"][1]["explained_variance"]
    shifted = applied["day-c"][1]["explained_variance"]
    print(f"captured share: fit {at_fit:.4f}, same distribution {same:.4f}, "
          f"shifted {shifted:.4f}")
    # Out of sample a little less is captured (about 0.877 against 0.901), never clearly more.
    assert at_fit - 0.05 < same <= at_fit + 0.01
    assert shifted < same - 0.5  # other latent directions: about 0.04


def apply_to_new_features(fitted, tmp_path, features: tuple, weights: dict):
    """Arguments applying the fitted basis BASIS to `features` (vectors, labels) made with
    `weights`, written in tmp_path."""
    root, _, _ = fitted
    write_features(tmp_path / "features", *features, weights)
    return pca.parse_args(
        apply_argv(tmp_path / "features", tmp_path, root / "models" / "pca" / BASIS)
    )


def test_apply_with_other_weights_is_refused(spark, fitted, tmp_path):
    args = apply_to_new_features(fitted, tmp_path, synthetic_vectors(40, draw=3), WEIGHTS_B)
    with pytest.raises(basis.WeightsMismatch) as raised:
        pca.run(spark, args)
    message = str(raised.value)
    assert "/a.h5" in message and "/b.h5" in message and BASIS in message
    assert not (tmp_path / "reduced").exists()


def test_apply_of_other_dimensions_is_refused(spark, fitted, tmp_path):
    args = apply_to_new_features(fitted, tmp_path, synthetic_vectors(10, dim=64), WEIGHTS_A)
    with pytest.raises(ValueError, match=f"basis {BASIS} expects 1280-d vectors; .* 64-d"):
        pca.run(spark, args)


def test_apply_of_a_missing_basis_waits_then_fails(spark, tmp_path):
    vectors, labels = synthetic_vectors(10, dim=16)
    write_features(tmp_path / "features", vectors, labels)
    missing = tmp_path / "models" / "pca" / "basis-20260104T020000Z-deadbeef"
    args = pca.parse_args(apply_argv(tmp_path / "features", tmp_path, missing, "--wait-s", "1"))
    assert args.wait_s == 1.0
    with pytest.raises(FileNotFoundError, match="basis basis-20260104T020000Z-deadbeef"):
        pca.run(spark, args)
    assert not (tmp_path / "reduced").exists()
    # It waits --wait-s, not a whole poll more.
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="deadbeef"):
        pca.read_basis(spark, str(missing), 1.0)
    assert 1.0 <= time.monotonic() - started < 1.0 + basis.WAIT_POLL_S / 2


def test_an_apply_waiting_for_the_basis_succeeds_once_it_is_fitted(
    spark, tmp_path, monkeypatch
):
    monkeypatch.setattr(basis, "WAIT_POLL_S", 0.2)
    vectors, labels = synthetic_vectors(20, dim=16)
    write_features(tmp_path / "a", vectors, labels)  # no weights recorded: both unknown
    other, other_labels = synthetic_vectors(20, draw=1, dim=16)
    write_features(tmp_path / "b", other, other_labels)
    folder = tmp_path / "models" / "pca" / "basis-20260104T020000Z-0000beef"
    outcome: dict = {}

    def wait_and_apply() -> None:
        try:
            outcome["manifest"] = pca.run(spark, pca.parse_args(
                apply_argv(tmp_path / "b", tmp_path / "day-b", folder, "--wait-s", "120")
            ))
        except Exception as err:  # reported below, in the test's thread
            outcome["error"] = err

    waiter = threading.Thread(target=wait_and_apply, daemon=True)
    waiter.start()
    time.sleep(1.0)
    assert not folder.exists() and waiter.is_alive()
    fitted = pca.run(spark, pca.parse_args(
        fit_argv([tmp_path / "a"], tmp_path / "day-a", folder, "--k", "3")
    ))
    waiter.join(timeout=120)
    assert not waiter.is_alive()
    assert "error" not in outcome, outcome.get("error")
    manifest = outcome["manifest"]
    assert (manifest["basis"], manifest["k"], manifest["weights"]) == (fitted["basis"], 3, None)
    reduced = pq.read_table(tmp_path / "day-b" / "reduced").to_pandas()
    expected = numpy_projection(saved_model(folder), other)
    by_path = dict(zip(reduced["path"], reduced["pca_features"], strict=True))
    for i in range(len(other)):
        np.testing.assert_allclose(by_path[f"file:/raw/class {i % 5}/{i}.jpg"], expected[i],
                                   rtol=1e-5, atol=1e-4)


# Arguments.


@pytest.mark.parametrize(
    "extra, message",
    [(["--variance", "1.5"], "--variance must be in"), (["--k", "0"], "--k must be between"),
     (["--k", "1281"], "--k must be between 1 and 1280"),
     (["--variance", "0.9", "--k", "3"], "not allowed with")],
)
def test_bad_arguments_are_refused(extra, message, capsys):
    with pytest.raises(SystemExit):
        pca.parse_args(["--input", "i", "--output", "o", "--fit-basis", f"m/{BASIS}",
                        "--report", "r", *extra])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--variance", "0.9"], ["--k", "3"]])
def test_apply_keeps_the_basis_k(extra, capsys):
    with pytest.raises(SystemExit):
        pca.parse_args(["--input", "i", "--output", "o", "--apply-basis", f"m/{BASIS}",
                        "--report", "r", *extra])
    assert "--apply-basis keeps the basis's k" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--fit-basis", "--apply-basis"])
@pytest.mark.parametrize(
    "folder", ["models/pca", "models/pca/model", f"models/pca/{BASIS}/pca_model.json",
               "basis-20260102T020000Z-0123ABCD", "s3://lake/models/pca/basis-2026-0123abcd"],
)
def test_a_basis_folder_ends_in_a_basis_id(option, folder, capsys):
    with pytest.raises(SystemExit):
        pca.parse_args(["--input", "i", "--output", "o", option, folder, "--report", "r"])
    assert "not a basis id" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [([], "one of the arguments --fit-basis --apply-basis is required"),
     (["--fit-basis", f"m/{BASIS}", "--apply-basis", f"m/{BASIS}"], "not allowed with"),
     (["--fit-basis", f"m/{BASIS}", "--model", "m"], "unrecognized arguments: --model"),
     (["--apply-model", f"m/{BASIS}"], "one of the arguments")],
)
def test_fit_or_apply_a_basis(argv, message, capsys):
    with pytest.raises(SystemExit):
        pca.parse_args(["--input", "i", "--output", "o", "--report", "r", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [(["--fit-basis", f"m/{BASIS}", "--output", "o", "--days", "d"], "go together"),
     (["--fit-basis", f"m/{BASIS}", "--report", "r", "--days", "d"], "go together"),
     (["--apply-basis", f"m/{BASIS}"], "--apply-basis needs --output and --report"),
     (["--fit-basis", f"m/{BASIS}"], "without --output needs --days")],
)
def test_output_and_report_are_both_given_or_neither(argv, message, capsys):
    with pytest.raises(SystemExit):
        pca.parse_args(["--input", "i", *argv])
    assert message in capsys.readouterr().err


def test_parsed_arguments():
    fit = pca.parse_args(["--input", "a", "b", "--output", "o", "--report", "r", "--fit-basis",
                          f"s3://lake/models/pca/{BASIS}/", "--days", "d1", "d2"])
    assert (fit.input, fit.variance, fit.k, fit.days) == (["a", "b"], 0.95, None, ["d1", "d2"])
    assert (fit.apply_basis, fit.wait_s) == (None, 0.0)
    apply = pca.parse_args(["--input", "a", "--output", "o", "--report", "r", "--apply-basis",
                            f"/lake/models/pca/{BASIS}", "--wait-s", "30"])
    assert (apply.variance, apply.k, apply.wait_s, apply.fit_basis) == (None, None, 30.0, None)
    only = pca.parse_args(["--input", "a", "b", "--fit-basis", f"/lake/models/pca/{BASIS}",
                           "--k", "9", "--days", "d1", "d2"])
    assert (only.output, only.report, only.k, only.days) == (None, None, 9, ["d1", "d2"])
