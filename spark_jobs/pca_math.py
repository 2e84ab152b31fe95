"""PCA math: the one place that standardizes, fits and projects. numpy only.

Why not `pyspark.ml.feature.PCA`: at the features' d its driver-side SVD is often wrong (explained
variances far from numpy's on the same rows). Why not `RowMatrix.computeCovariance`: it needs
one pass for the scaler and another for the Gramian, and subtracts the mean afterwards, which
loses precision when means are large. Here each partition reduces its rows to (n, mean, centred
scatter matrix) in one pass, partials merge pairwise (Chan et al.'s update, exact in exact
arithmetic), and only the d x d matrix reaches the driver, where numpy's `eigh` decomposes it.

Conventions follow scikit-learn's `StandardScaler` + `PCA`, so results compare one to one:
scale is the population standard deviation (1 where it is 0: a constant column becomes 0, not
NaN), eigenvalues are variances with n - 1, each component's largest-magnitude entry is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cumulative ratios are sums of floats: do not miss a threshold by rounding noise.
THRESHOLD_TOLERANCE = 1e-12
# The share of the variance a basis keeps unless a run asks otherwise.
DEFAULT_VARIANCE = 0.95


@dataclass
class PooledRows:
    """Count and mean of a set of rows, with sums of squared deviations from the mean that a
    subclass keeps: sets merge pairwise by Chan et al.'s update (exact in exact arithmetic)."""

    n: int
    mean: np.ndarray  # (d,)

    def merge(self, other):
        """Both sets as one (of the same subclass)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        return self.merged(other, n, mean, delta, self.n * other.n / n)

    def merged(self, other, n: int, mean: np.ndarray, delta: np.ndarray, weight: float):
        """Both sets as one: their sums of squared deviations plus `weight` times the squares
        of `delta`, the gap between their means."""
        raise NotImplementedError


@dataclass
class Moments(PooledRows):
    """Count, mean and centred scatter matrix of a set of rows: what partitions send back."""

    scatter: np.ndarray  # (d, d): sum of outer products of centred rows

    @classmethod
    def of(cls, rows: np.ndarray) -> Moments:
        rows = np.asarray(rows, dtype=np.float64)
        mean = rows.mean(axis=0)
        centred = rows - mean
        return cls(len(rows), mean, centred.T @ centred)

    @property
    def finite(self) -> bool:
        # A NaN or infinite value anywhere in the rows leaves NaN or inf in the mean or scatter.
        return bool(np.isfinite(self.mean).all() and np.isfinite(self.scatter).all())

    def merged(self, other: Moments, n, mean, delta, weight) -> Moments:
        return Moments(n, mean, self.scatter + other.scatter + np.outer(delta, delta) * weight)


@dataclass
class PcaModel:
    """A fitted standardize-then-PCA model, portable as plain numbers (see `as_dict`)."""

    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), rows are unit eigenvectors
    eigenvalues: np.ndarray  # (m,): every eigenvalue kept by the fit, m >= k, descending
    rows: int

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self.eigenvalues / self.eigenvalues.sum()

    def standardize(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float64) - self.mean) / self.scale

    def coordinates(self, standardized: np.ndarray) -> np.ndarray:
        return standardized @ self.components.T

    def transform(self, rows: np.ndarray) -> np.ndarray:
        return self.coordinates(self.standardize(rows)).astype(np.float32)

    def with_k(self, k: int) -> PcaModel:
        return PcaModel(self.mean, self.scale, self.components[:k], self.eigenvalues, self.rows)

    def as_dict(self) -> dict:
        return {
            "format": "fruits-pca/1",
            "dim": self.dim,
            "k": self.k,
            "rows": self.rows,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "components": self.components.tolist(),
            "eigenvalues": self.eigenvalues.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PcaModel:
        if data.get("format") != "fruits-pca/1":
            raise ValueError(f"not a fruits PCA model (format {data.get('format')!r})")
        model = cls(
            mean=np.asarray(data["mean"], dtype=np.float64),
            scale=np.asarray(data["scale"], dtype=np.float64),
            components=np.asarray(data["components"], dtype=np.float64).reshape(
                data["k"], data["dim"]
            ),
            eigenvalues=np.asarray(data["eigenvalues"], dtype=np.float64),
            rows=int(data["rows"]),
        )
        return model


@dataclass
class Spread(PooledRows):
    """Count, mean and sum of squared deviations of each column: the diagonal of `Moments`,
    O(d) numbers where `Moments` ships d x d."""

    squares: np.ndarray  # (columns,): sum of squared deviations from the mean

    @classmethod
    def of(cls, *blocks: np.ndarray) -> Spread:
        """Of the rows made of the blocks' columns side by side ((n, a), (n, b) -> a + b
        columns), without copying them into one array."""
        means, squares = [], []
        for block in blocks:
            mean = block.mean(axis=0)
            centred = block - mean
            means.append(mean)
            squares.append(np.einsum("ij,ij->j", centred, centred))
        return cls(len(blocks[0]), np.concatenate(means), np.concatenate(squares))

    def merged(self, other: Spread, n, mean, delta, weight) -> Spread:
        return Spread(n, mean, self.squares + other.squares + delta**2 * weight)


def standard_scale(moments: Moments) -> np.ndarray:
    """Population standard deviation per column; 1 for a constant column, as sklearn decides it.

    The bound is sklearn's `_is_constant_feature`: the error bound of the two-pass variance.
    """
    variance = np.clip(np.diag(moments.scatter) / moments.n, 0.0, None)
    eps = np.finfo(np.float64).eps
    constant = variance <= moments.n * eps * variance + (moments.n * moments.mean * eps) ** 2
    scale = np.sqrt(variance)
    scale[constant] = 1.0
    return scale


def fit(moments: Moments) -> PcaModel:
    """Eigendecomposition of the standardized covariance matrix (all components)."""
    if moments.n < 2:
        raise ValueError(f"PCA needs at least 2 rows; the input has {moments.n}")
    scale = standard_scale(moments)
    covariance = moments.scatter / (moments.n - 1) / np.outer(scale, scale)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0.0, None)
    components = eigenvectors[:, order].T
    # n rows span at most n - 1 centred dimensions: later eigenvalues are rounding noise.
    rank_bound = min(moments.n - 1, len(eigenvalues))
    components = _sign_flip(components[:rank_bound])
    return PcaModel(moments.mean, scale, components, eigenvalues[:rank_bound], moments.n)


def _sign_flip(components: np.ndarray) -> np.ndarray:
    """Make each component's largest-magnitude entry positive (sklearn's convention)."""
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), largest])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def choose_k(model: PcaModel, *, variance: float | None = None, k: int | None = None) -> int:
    """The smallest k whose cumulative explained variance reaches `variance`, or a fixed k.

    k is at least 1 and at most min(rows - 1, d).
    """
    k_max = len(model.eigenvalues)
    if k is not None:
        if not 1 <= k <= k_max:
            raise ValueError(
                f"k={k} is out of range: it must be between 1 and {k_max} "
                f"(min(rows - 1, d) with {model.rows} rows and d={model.dim})"
            )
        return k
    if variance is None or not 0.0 < variance <= 1.0:
        raise ValueError(f"variance={variance} is out of range: it must be in (0, 1]")
    cumulative = np.cumsum(model.explained_variance_ratio)
    reached = np.nonzero(cumulative >= variance - THRESHOLD_TOLERANCE)[0]
    return int(reached[0]) + 1 if len(reached) else k_max


def cumulative_explained_variance(model: PcaModel) -> np.ndarray:
    return np.cumsum(model.explained_variance_ratio)


def checked_explained_variance(model: PcaModel) -> float:
    """The share of the variance the model's k components explain, once the fit is checked
    usable: k >= 1, every number finite, the share in (0, 1]. A clear error otherwise."""
    arrays = {
        "mean": model.mean,
        "scale": model.scale,
        "components": model.components,
        "eigenvalues": model.eigenvalues,
    }
    broken = [name for name, values in arrays.items() if not np.isfinite(values).all()]
    if broken:
        raise ValueError(f"the fit is unusable: its {', '.join(broken)} hold NaN or infinity")
    if model.k < 1:
        raise ValueError("the fit is unusable: it kept no component")
    with np.errstate(invalid="ignore"):  # 0 / 0 when nothing varies: refused below
        explained = float(cumulative_explained_variance(model)[model.k - 1])
    if not 0.0 < explained <= 1.0 + THRESHOLD_TOLERANCE:
        raise ValueError(
            f"the fit is unusable: its explained variance is {explained} "
            "(features without any variance?)"
        )
    return explained


def captured_variance(model: PcaModel, moments: Moments) -> float:
    """The share of the rows' variance, standardized with the model's scale, that the model's k
    components capture. On the rows it was fit on, that is its explained variance; rows unlike
    them (a new fruit, another camera) give less."""
    if moments.n < 2:
        raise ValueError(f"the captured variance needs at least 2 rows; got {moments.n}")
    covariance = moments.scatter / (moments.n - 1) / np.outer(model.scale, model.scale)
    total = float(np.trace(covariance))
    if total <= 0.0:
        return 1.0  # no variance at all: nothing is lost
    kept = float(np.einsum("kd,de,ke->", model.components, covariance, model.components))
    return kept / total


def transform_with_spread(model: PcaModel, rows: np.ndarray) -> tuple[np.ndarray, Spread]:
    """`model.transform(rows)`, and the `Spread` of the standardized rows beside their
    coordinates (d + k columns), from one projection: what `captured_share` needs."""
    standardized = model.standardize(rows)
    coordinates = model.coordinates(standardized)
    return coordinates.astype(np.float32), Spread.of(standardized, coordinates)


def captured_share(model: PcaModel, spread: Spread) -> float:
    """`captured_variance` from the `Spread` of `transform_with_spread`: the coordinates'
    variances over the standardized columns' (shift-invariant, so the model's mean does), from
    O(d + k) numbers instead of a d x d matrix."""
    if spread.n < 2:
        raise ValueError(f"the captured variance needs at least 2 rows; got {spread.n}")
    if spread.squares.shape != (model.dim + model.k,):
        raise ValueError(
            f"a spread of {spread.squares.shape[0]} columns is not of this model's "
            f"{model.dim} standardized columns and {model.k} coordinates"
        )
    total = float(spread.squares[: model.dim].sum())
    # Identical rows leave rounding noise of their mean (as in `standard_scale`'s bound).
    noise = spread.n * (spread.n * np.finfo(np.float64).eps) ** 2 * spread.mean[: model.dim] ** 2
    if total <= noise.sum():
        return 1.0  # no variance at all: nothing is lost
    return float(spread.squares[model.dim :].sum()) / total
