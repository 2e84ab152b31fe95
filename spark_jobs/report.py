"""The PCA report's two images, rendered to PNG bytes (matplotlib, no display)."""

from __future__ import annotations

import io

import numpy as np

MAX_LEGEND_LABELS = 20


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def explained_variance_png(
    cumulative: np.ndarray, k: int, threshold: float | None, captured: float | None = None
) -> bytes:
    """The basis's cumulative explained-variance curve (from its fit), with the threshold and its
    k marked, and the share of this day's variance its k components capture."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2))
    axes = figure.subplots()
    components = np.arange(1, len(cumulative) + 1)
    axes.plot(components, cumulative, color="tab:blue", label="cumulative explained variance")
    if threshold is not None:
        axes.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    axes.axvline(k, color="tab:green", linestyle=":", label=f"k = {k}")
    axes.scatter([k], [cumulative[k - 1]], color="tab:green", zorder=3, label="basis, at fit")
    title = f"basis: k = {k} components explain {cumulative[k - 1]:.1%} of the variance at fit"
    if captured is not None:
        axes.scatter(
            [k], [captured], color="tab:orange", marker="D", zorder=4, label="this day"
        )
        title += f"\nthis day: {captured:.1%}"
    axes.set_xlabel("number of components")
    axes.set_ylabel("cumulative explained variance")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _png(figure)


def scatter_png(points: np.ndarray, labels: list[str], total_rows: int) -> bytes:
    """Images on the first two components (the second is 0 when k = 1), coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 6))
    axes = figure.subplots()
    names = sorted(set(labels))
    palette = colormaps["tab20"]
    label_array = np.asarray(labels, dtype=object)
    for index, name in enumerate(names):
        chosen = label_array == name
        axes.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=8,
            alpha=0.7,
            color=palette(index % palette.N),
            label=name,
        )
    axes.set_xlabel("component 1")
    axes.set_ylabel("component 2")
    shown = f"{len(points)} of {total_rows}" if len(points) < total_rows else f"{total_rows}"
    axes.set_title(f"{shown} images on the first two components, {len(names)} labels")
    if len(names) <= MAX_LEGEND_LABELS:
        axes.legend(fontsize="small", markerscale=2, loc="best")
    axes.grid(alpha=0.3)
    return _png(figure)
