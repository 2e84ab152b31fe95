"""Standardize-then-PCA from merged moments, against scikit-learn and numpy's SVD."""

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spark_jobs.pca_math import (
    Moments,
    PcaModel,
    Spread,
    captured_share,
    captured_variance,
    checked_explained_variance,
    choose_k,
    cumulative_explained_variance,
    fit,
    standard_scale,
    transform_with_spread,
)

ZERO_COLUMN, CONSTANT_COLUMN = 7, 21


def _latent_factor_data(n: int, d: int, *, factors: int = 5, seed: int = 0) -> np.ndarray:
    """Correlated columns on very different scales and offsets."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(factors, d)) * np.linspace(5, 1, factors)[:, None]
    rows = rng.normal(size=(n, factors)) @ loadings + 0.5 * rng.normal(size=(n, d))
    return rows * rng.uniform(0.1, 100, d) + rng.uniform(-50, 50, d)


def _with_constant_columns(rows: np.ndarray) -> np.ndarray:
    rows = np.insert(rows, [ZERO_COLUMN, CONSTANT_COLUMN - 1], 0.0, axis=1)
    rows[:, CONSTANT_COLUMN] = 3.7
    return rows


def _empty(d: int) -> Moments:
    """What a partition without rows sends (see spark_jobs.pca.partition_moments)."""
    return Moments(0, np.zeros(d), np.zeros((d, d)))


def _assert_moments_close(actual: Moments, expected: Moments, rtol: float) -> None:
    assert actual.n == expected.n
    np.testing.assert_allclose(
        actual.mean, expected.mean, rtol=rtol, atol=rtol * np.abs(expected.mean).max()
    )
    np.testing.assert_allclose(
        actual.scatter, expected.scatter, rtol=rtol, atol=rtol * np.abs(expected.scatter).max()
    )


def _assert_sign_convention(components: np.ndarray) -> None:
    largest = np.argmax(np.abs(components), axis=1)
    assert np.all(components[np.arange(len(components)), largest] > 0)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rows = _with_constant_columns(_latent_factor_data(300, 40))
    assert rows.shape == (300, 42)
    assert np.all(rows[:, ZERO_COLUMN] == 0.0)
    assert np.all(rows[:, CONSTANT_COLUMN] == 3.7)
    return rows


@pytest.fixture(scope="module")
def sklearn_fit(data):
    pipeline = make_pipeline(StandardScaler(), PCA(svd_solver="full")).fit(data)
    return pipeline, pipeline[-1]


@pytest.fixture(scope="module")
def model(data) -> PcaModel:
    return fit(Moments.of(data))


# Against scikit-learn.


def test_keeps_min_rows_minus_one_and_d_components(model, sklearn_fit):
    _, pca = sklearn_fit
    assert (model.k, model.dim, model.rows) == (42, 42, 300)
    assert model.eigenvalues.shape == (42,)
    assert pca.n_components_ == 42


def test_scaler_matches_standard_scaler(model, sklearn_fit):
    pipeline, _ = sklearn_fit
    scaler = pipeline[0]
    np.testing.assert_allclose(model.mean, scaler.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.scale, scaler.scale_, rtol=1e-12)
    assert model.scale[ZERO_COLUMN] == 1.0
    assert model.scale[CONSTANT_COLUMN] == 1.0


def test_explained_variance_matches_sklearn(model, sklearn_fit):
    _, pca = sklearn_fit
    np.testing.assert_allclose(
        model.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-6, atol=1e-15
    )
    np.testing.assert_allclose(model.eigenvalues, pca.explained_variance_, rtol=1e-6, atol=1e-12)
    # The two constant columns carry no variance.
    assert model.eigenvalues[-2:].tolist() == [0.0, 0.0]
    assert model.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(model.eigenvalues) <= 0)
    # The total variance of the standardized data: one per non-constant column.
    assert model.eigenvalues.sum() == pytest.approx(40 * 300 / 299, rel=1e-9)


def test_components_match_sklearn_up_to_sign(model, sklearn_fit):
    _, pca = sklearn_fit
    informative = 40  # the last two span the constant columns' null space, in no fixed basis
    ours, theirs = model.components[:informative], pca.components_[:informative]
    signs = np.sign(np.sum(ours * theirs, axis=1))
    assert np.all(signs != 0)
    np.testing.assert_allclose(ours, theirs * signs[:, None], rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(42), atol=1e-10)
    _assert_sign_convention(model.components)
    assert np.abs(model.components[:informative, [ZERO_COLUMN, CONSTANT_COLUMN]]).max() < 1e-12


def test_transform_matches_sklearn_up_to_the_same_signs(data, model, sklearn_fit):
    pipeline, pca = sklearn_fit
    ours = model.transform(data)
    assert ours.dtype == np.float32
    assert ours.shape == (300, 42)
    assert not np.isnan(ours).any()
    signs = np.sign(np.sum(model.components[:40] * pca.components_[:40], axis=1))
    theirs = pipeline.transform(data)
    np.testing.assert_allclose(ours[:, :40], theirs[:, :40] * signs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours[:, 40:], 0.0, atol=1e-5)
    # New rows: the constant columns take other values, still no NaN.
    new = data[:5].copy()
    new[:, [ZERO_COLUMN, CONSTANT_COLUMN]] = [1.0, -2.0]
    assert np.isfinite(model.transform(new)).all()


def test_transform_of_a_subset_of_components(data, model):
    three = model.with_k(3)
    assert (three.k, len(three.eigenvalues)) == (3, 42)
    np.testing.assert_array_equal(three.transform(data), model.transform(data)[:, :3])


def test_fewer_rows_than_columns_keeps_at_most_rows_minus_one(sklearn_fit):
    rows = _latent_factor_data(30, 60, seed=1)
    model = fit(Moments.of(rows))
    assert (model.k, len(model.eigenvalues), model.dim) == (29, 29, 60)
    assert np.all(model.eigenvalues > 0)
    pca = make_pipeline(StandardScaler(), PCA(svd_solver="full")).fit(rows)[-1]
    np.testing.assert_allclose(
        model.explained_variance_ratio, pca.explained_variance_ratio_[:29], rtol=1e-6
    )
    assert pca.explained_variance_ratio_[29] < 1e-20  # the 30th is rounding noise
    assert choose_k(model, variance=1.0) == 29
    with pytest.raises(ValueError, match="k=30 is out of range"):
        choose_k(model, k=30)


def test_real_dimension_matches_numpy_svd():
    """d=1280 MobileNetV2 features: where pyspark.ml's PCA gets the variance wrong."""
    rng = np.random.default_rng(1280)
    n, d, rank = 600, 1280, 40
    signal = (rng.normal(size=(n, rank)) * np.geomspace(10, 0.5, rank)) @ rng.normal(size=(rank, d))
    rows = np.abs(signal + rng.normal(size=(n, d))) * rng.uniform(0.01, 3, d)  # ReLU-like

    model = fit(Moments.of(rows))
    assert (model.k, model.dim) == (599, 1280)
    standardized = (rows - rows.mean(axis=0)) / rows.std(axis=0)
    singular = np.linalg.svd(standardized, compute_uv=False)
    ratio = singular**2 / np.sum(singular**2)
    np.testing.assert_allclose(model.explained_variance_ratio[:50], ratio[:50], rtol=1e-6)
    np.testing.assert_allclose(model.eigenvalues[:50], singular[:50] ** 2 / (n - 1), rtol=1e-6)
    assert 0.05 < model.explained_variance_ratio[0] < 0.1
    _assert_sign_convention(model.components[:50])


# Moments.


def test_merged_uneven_chunks_equal_the_whole(data):
    whole = Moments.of(data)
    d = data.shape[1]
    bounds = np.cumsum([0, 0, 1, 57, 3, 0, 239])
    chunks = [
        Moments.of(data[start:stop]) if stop > start else _empty(d)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    assert [chunk.n for chunk in chunks] == [0, 1, 57, 3, 0, 239]

    left_fold = _empty(d)
    for chunk in chunks:
        left_fold = left_fold.merge(chunk)
    _assert_moments_close(left_fold, whole, rtol=1e-9)

    # Spark's treeReduce merges in another order.
    pairs = [chunks[0].merge(chunks[1]), chunks[2].merge(chunks[3]), chunks[4].merge(chunks[5])]
    _assert_moments_close(pairs[2].merge(pairs[0].merge(pairs[1])), whole, rtol=1e-9)


def test_one_row_has_zero_scatter_and_empty_merges_are_identities():
    row = np.array([[1.0, -2.0, 3.5]])
    one = Moments.of(row)
    assert one.n == 1
    assert one.mean.tolist() == [1.0, -2.0, 3.5]
    assert np.all(one.scatter == 0.0)
    assert one.merge(_empty(3)) is one
    assert _empty(3).merge(one) is one
    two = one.merge(Moments.of(np.array([[3.0, -2.0, 0.5]])))
    assert two.n == 2
    assert two.mean.tolist() == [2.0, -2.0, 2.0]
    assert two.scatter.tolist() == [[2.0, 0.0, -3.0], [0.0, 0.0, 0.0], [-3.0, 0.0, 4.5]]


def test_merging_stays_accurate_with_a_large_mean():
    rng = np.random.default_rng(7)
    centred = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))
    shifted = centred + 1e6
    truth = Moments.of(centred)  # the scatter does not depend on the offset

    bounds = np.cumsum([0, 1, 57, 3, 239])
    merged = _empty(10)
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        merged = merged.merge(Moments.of(shifted[start:stop]))

    assert merged.n == 300
    np.testing.assert_allclose(merged.mean, truth.mean + 1e6, rtol=1e-14)
    scale = np.abs(truth.scatter).max()
    np.testing.assert_allclose(merged.scatter, truth.scatter, rtol=0, atol=1e-9 * scale)
    # The one-pass sum-of-squares formula loses five orders of magnitude more on the same data.
    naive = shifted.T @ shifted - 300 * np.outer(shifted.mean(axis=0), shifted.mean(axis=0))
    assert np.abs(naive - truth.scatter).max() > 1e-6 * scale
    # And the fit is the same as on the centred data.
    np.testing.assert_allclose(
        fit(merged).explained_variance_ratio, fit(truth).explained_variance_ratio, rtol=1e-8
    )


def test_standard_scale_of_constant_and_varying_columns():
    rows = np.column_stack([np.zeros(5), np.full(5, 1e6 + 0.1), np.arange(5.0)])
    scale = standard_scale(Moments.of(rows))
    assert scale.tolist() == [1.0, 1.0, pytest.approx(np.sqrt(2.0), rel=1e-15)]


# Choosing k.


def _known_model(eigenvalues: list[float]) -> PcaModel:
    d = len(eigenvalues)
    return PcaModel(
        mean=np.zeros(d),
        scale=np.ones(d),
        components=np.eye(d),
        eigenvalues=np.asarray(eigenvalues, dtype=float),
        rows=10,
    )


@pytest.mark.parametrize(
    ("variance", "k"),
    [(0.1, 1), (0.4, 1), (0.41, 2), (0.7, 2), (0.71, 3), (0.9, 3), (0.91, 4), (1.0, 4)],
)
def test_choose_k_is_the_smallest_k_reaching_the_variance(variance, k):
    model = _known_model([4, 3, 2, 1])
    assert cumulative_explained_variance(model).tolist() == pytest.approx([0.4, 0.7, 0.9, 1.0])
    assert choose_k(model, variance=variance) == k


def test_choose_k_does_not_miss_a_threshold_by_rounding():
    model = _known_model([7, 1, 1, 1])
    assert cumulative_explained_variance(model)[1] < 0.8  # 0.7 + 0.1 = 0.7999999999999999
    assert choose_k(model, variance=0.8) == 2


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixed_k_in_range(k):
    model = _known_model([4, 3, 2, 1])
    assert choose_k(model, k=k) == k
    assert choose_k(model, k=k, variance=0.99) == k  # a fixed k wins


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": 0}, "k=0 is out of range"),
        ({"k": 5}, "k=5 is out of range: it must be between 1 and 4"),
        ({"k": -1}, "k=-1 is out of range"),
        ({"variance": 0}, "variance=0 is out of range"),
        ({"variance": 0.0}, r"variance=0\.0 is out of range"),
        ({"variance": -0.5}, r"variance=-0\.5 is out of range"),
        ({"variance": 1.5}, r"variance=1\.5 is out of range: it must be in \(0, 1\]"),
        ({"variance": float("nan")}, "variance=nan is out of range"),
        ({}, "variance=None is out of range"),
    ],
)
def test_choose_k_rejects_bad_values(arguments, message):
    with pytest.raises(ValueError, match=message):
        choose_k(_known_model([4, 3, 2, 1]), **arguments)


@pytest.mark.parametrize("n", [0, 1])
def test_fit_needs_two_rows(n):
    moments = Moments.of(np.ones((1, 3))) if n else _empty(3)
    with pytest.raises(ValueError, match=f"PCA needs at least 2 rows; the input has {n}$"):
        fit(moments)


def test_two_rows_give_one_component():
    model = fit(Moments.of(np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]])))
    assert (model.k, model.eigenvalues.tolist()) == (1, [pytest.approx(4.0)])
    assert model.components.tolist() == [pytest.approx([np.sqrt(0.5), np.sqrt(0.5), 0.0])]


# The share of other rows' variance a basis captures.


@pytest.mark.parametrize("k", [1, 3, 5, 10, 40, 42])
def test_captured_variance_on_the_fit_rows_is_the_explained_variance(data, model, k):
    reduced = model.with_k(k)
    captured = captured_variance(reduced, Moments.of(data))
    assert captured == pytest.approx(cumulative_explained_variance(reduced)[k - 1], rel=1e-9)
    # The same from the rows themselves: the variance of the projections over the total.
    standardized = (data - model.mean) / model.scale
    projected = standardized @ reduced.components.T
    assert captured == pytest.approx(projected.var(axis=0).sum() / standardized.var(axis=0).sum(),
                                     rel=1e-9)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_captured_variance_is_lower_on_rows_of_another_distribution(data, model, k):
    other = _with_constant_columns(_latent_factor_data(300, 40, seed=3))
    reduced = model.with_k(k)
    on_fit = captured_variance(reduced, Moments.of(data))
    on_other = captured_variance(reduced, Moments.of(other))
    assert 0.0 <= on_other < on_fit - 0.3


def test_captured_variance_of_all_components_is_everything(data, model):
    other = _with_constant_columns(_latent_factor_data(300, 40, seed=3))
    # 40 informative components and the 2 spanning the constant columns: the whole space.
    assert captured_variance(model, Moments.of(other)) == pytest.approx(1.0, rel=1e-9)


def test_captured_variance_of_rows_without_variance_is_one(model):
    assert captured_variance(model.with_k(2), Moments.of(np.full((5, 42), 2.0))) == 1.0


@pytest.mark.parametrize("n", [0, 1])
def test_captured_variance_needs_two_rows(model, n):
    moments = Moments.of(np.ones((1, 42))) if n else _empty(42)
    with pytest.raises(ValueError, match=f"needs at least 2 rows; got {n}$"):
        captured_variance(model, moments)


# The same share from per-day spreads (O(d + k) numbers), as the reprojection computes it.


def _spread_in_chunks(model: PcaModel, rows: np.ndarray, sizes: list[int]) -> Spread:
    """What the reprojection's accumulator holds: each batch's spread, merged."""
    merged = Spread(0, np.zeros(0), np.zeros(0))
    for chunk in np.split(rows, np.cumsum(sizes)[:-1]):
        coordinates, spread = transform_with_spread(model, chunk)
        np.testing.assert_array_equal(coordinates, model.transform(chunk))
        merged = merged.merge(spread)
    return merged


def test_spread_of_merged_uneven_chunks_equals_the_whole(data):
    whole = Spread.of(data)
    np.testing.assert_allclose(whole.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole.squares, data.var(axis=0) * len(data), rtol=1e-12)
    merged = Spread(0, np.zeros(0), np.zeros(0))
    for chunk in np.split(data, [1, 58, 61]):
        merged = merged.merge(Spread.of(chunk))
    assert merged.n == 300
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.squares, whole.squares, rtol=1e-10, atol=1e-10)
    # Blocks side by side are the columns of one array.
    beside = Spread.of(data[:, :10], data[:, 10:])
    np.testing.assert_array_equal(beside.squares, whole.squares)


@pytest.mark.parametrize("k", [1, 3, 10, 42])
@pytest.mark.parametrize("seed", [0, 3])  # the fit rows, rows of another distribution
def test_captured_share_equals_captured_variance(data, model, k, seed):
    rows = data if seed == 0 else _with_constant_columns(_latent_factor_data(300, 40, seed=seed))
    reduced = model.with_k(k)
    spread = _spread_in_chunks(reduced, rows, [1, 120, 79, 100])
    assert spread.n == 300 and spread.squares.shape == (42 + k,)
    expected = captured_variance(reduced, Moments.of(rows))
    assert captured_share(reduced, spread) == pytest.approx(expected, rel=1e-9)


def test_captured_share_of_rows_without_variance_is_one(model):
    spread = _spread_in_chunks(model.with_k(2), np.full((5, 42), 2.0), [5])
    assert captured_share(model.with_k(2), spread) == 1.0


def test_captured_share_needs_two_rows_of_the_model(data, model):
    _, one = transform_with_spread(model.with_k(3), data[:1])
    with pytest.raises(ValueError, match="needs at least 2 rows; got 1$"):
        captured_share(model.with_k(3), one)
    _, spread = transform_with_spread(model.with_k(3), data)
    with pytest.raises(ValueError, match="45 columns is not of this model's 42 .* and 4"):
        captured_share(model.with_k(4), spread)


# A fit is checked before it is written.


def test_checked_explained_variance_of_a_good_fit(model):
    for k in (1, 5, 42):
        assert checked_explained_variance(model.with_k(k)) == pytest.approx(
            cumulative_explained_variance(model)[k - 1], rel=1e-15
        )


def test_moments_of_non_finite_rows_are_not_finite(data):
    assert Moments.of(data).finite
    for value in (np.nan, np.inf, -np.inf):
        rows = data.copy()
        rows[17, 3] = value
        with np.errstate(invalid="ignore"):
            merged = Moments.of(rows[:100]).merge(Moments.of(rows[100:]))
            assert not Moments.of(rows).finite and not merged.finite


def test_a_fit_of_rows_without_variance_is_refused():
    fitted = fit(Moments.of(np.full((10, 6), 3.0)))
    with pytest.raises(ValueError, match="unusable: its explained variance is nan"):
        checked_explained_variance(fitted.with_k(2))


@pytest.mark.parametrize("field", ["mean", "scale", "components", "eigenvalues"])
def test_a_fit_holding_nan_or_infinity_is_refused(model, field):
    broken = model.with_k(3)
    values = getattr(broken, field).copy()
    values.flat[1] = np.nan if field != "scale" else np.inf
    setattr(broken, field, values)
    with pytest.raises(ValueError, match=f"unusable: its {field} hold NaN or infinity"):
        checked_explained_variance(broken)


def test_a_fit_without_components_is_refused(model):
    with pytest.raises(ValueError, match="unusable: it kept no component"):
        checked_explained_variance(model.with_k(0))


# Serialization.


def test_as_dict_round_trips_through_json(data, model):
    for original in (model, model.with_k(5)):
        text = json.dumps(original.as_dict())
        restored = PcaModel.from_dict(json.loads(text))
        assert (restored.k, restored.dim, restored.rows) == (original.k, 42, 300)
        np.testing.assert_array_equal(restored.transform(data), original.transform(data))
        np.testing.assert_array_equal(restored.eigenvalues, original.eigenvalues)
        np.testing.assert_array_equal(
            restored.explained_variance_ratio, original.explained_variance_ratio
        )
        assert restored.as_dict() == original.as_dict()


def test_as_dict_fields(model):
    fields = model.with_k(2).as_dict()
    assert fields["format"] == "fruits-pca/1"
    assert (fields["dim"], fields["k"], fields["rows"]) == (42, 2, 300)
    assert len(fields["components"]) == 2
    assert len(fields["components"][0]) == 42
    assert len(fields["eigenvalues"]) == 42


@pytest.mark.parametrize(
    "fields",
    [{"format": "fruits-pca/2"}, {"format": None}, {}, {"format": "sklearn", "k": 1}],
)
def test_from_dict_rejects_other_formats(model, fields):
    data = (
        {**model.as_dict(), **fields}
        if fields
        else {key: value for key, value in model.as_dict().items() if key != "format"}
    )
    with pytest.raises(ValueError, match="not a fruits PCA model"):
        PcaModel.from_dict(data)
