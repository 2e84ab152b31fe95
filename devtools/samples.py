"""Image data the project generates itself, so the demo (and the tests) run on a fresh clone.

`make_synthetic_fruits` draws Fruits-360-like photos (one fruit on a white background) whose
classes differ in hue and shape, so CNN features can separate them. The tests' corpora of odd
inputs (`tests/support/corpora.py`) draw their photos with `fruit_on_white` and `render_fruit`.
"""

from __future__ import annotations

import colorsys
import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Shape test on fruit-local coordinates (u right, v down, fruit within about [-1, 1])."""

_SUPERSAMPLE = 2  # drawn at twice the size and averaged down, for smooth edges
_BACKGROUND = 255.0


def _round(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u**2 + v**2 <= 1


def _apple_with_leaf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A squat apple with a stem and a leaf on top."""
    body = u**2 + ((v - 0.2) / 0.75) ** 2 <= 1
    stem = (np.abs(u - 0.03) <= 0.07) & (v >= -1) & (v <= -0.55)
    leaf = ((u - 0.32) / 0.3) ** 2 + ((v + 0.82) / 0.12) ** 2 <= 1
    return body | stem | leaf


def _oval(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u / 0.68) ** 2 + v**2 <= 1


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u**2 + v**2 <= 1) & (u**2 + (v + 0.55) ** 2 > 0.85**2)


def _lemon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """An ellipse with a pointed tip at each end."""
    return ((u / 0.8) ** 2 + (v / 0.52) ** 2 <= 1) | (np.abs(u) + np.abs(v) / 0.25 <= 1)


def _lantern(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A husk: pointed at the top, widest two thirds down."""
    depth = (v + 1) / 2
    half_width = 2.0 * depth * np.sqrt(np.clip(1 - depth, 0, None))
    return (np.abs(v) <= 1) & (np.abs(u) <= half_width)


def _twin(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Two cherries side by side."""
    return ((u + 0.45) ** 2 + (v - 0.3) ** 2 <= 0.25) | ((u - 0.45) ** 2 + (v - 0.3) ** 2 <= 0.25)


_GRAPE_CENTRES = ((-0.6, -0.6), (0.0, -0.6), (0.6, -0.6), (-0.3, -0.1), (0.3, -0.1), (0.0, 0.4))


def _cluster(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A bunch of grapes: an inverted triangle of berries."""
    inside = np.zeros(u.shape, dtype=bool)
    for cu, cv in _GRAPE_CENTRES:
        inside |= (u - cu) ** 2 + (v - cv) ** 2 <= 0.33**2
    return inside


@dataclass(frozen=True)
class FruitStyle:
    """How one synthetic class looks: a base colour (HSV, 0..1) and a shape."""

    label: str
    hue: float
    saturation: float
    value: float
    shape: Mask


FRUIT_STYLES: tuple[FruitStyle, ...] = (
    FruitStyle("Apple Braeburn", 0.98, 0.85, 0.80, _round),
    FruitStyle("Banana", 0.165, 0.90, 0.95, _crescent),
    FruitStyle("Pomme d'été", 0.26, 0.60, 0.80, _apple_with_leaf),
    FruitStyle("Kiwi", 0.04, 0.65, 0.45, _oval),
    FruitStyle("Lemon Meyer", 0.10, 0.80, 0.95, _lemon),
    FruitStyle("Physalis with Husk", 0.09, 0.40, 0.85, _lantern),
    FruitStyle("Cherry", 0.94, 0.90, 0.55, _twin),
    FruitStyle("Grape Blue", 0.74, 0.60, 0.45, _cluster),
)
"""Synthetic classes in label order; any first three include a space and a non-ASCII letter."""


def label_slug(label: str) -> str:
    """ASCII file-name stem for a label: "Pomme d'été" -> "pomme_d_ete"."""
    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_label.lower()).strip("_")


def render_fruit(
    style: FruitStyle, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one fruit with random jitter, rotation, scale and lighting.

    Returns (premultiplied RGB as float 0..255, coverage 0..1), both `size` x `size`.
    """
    big = size * _SUPERSAMPLE
    centre = big / 2 + rng.uniform(-0.06, 0.06, size=2) * big
    radius = big * 0.42 * rng.uniform(0.8, 1.0)
    angle = rng.uniform(-0.3, 0.3)  # radians; small, so elongated shapes keep their direction
    y, x = np.mgrid[0:big, 0:big] + 0.5
    dx, dy = (x - centre[0]) / radius, (y - centre[1]) / radius
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy

    inside = style.shape(u, v).astype(float)
    # Light from the upper left, as on a rounded surface.
    shading = 0.55 + 0.5 * np.exp(-((u + 0.35) ** 2 + (v + 0.4) ** 2) / 0.7)
    base = np.array(colorsys.hsv_to_rgb(style.hue, style.saturation, style.value)) * 255
    colour = base * (shading * rng.uniform(0.85, 1.1))[..., None]
    premultiplied = np.clip(colour, 0, 255) * inside[..., None]

    def downsample(a: np.ndarray) -> np.ndarray:
        return a.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, *a.shape[2:]).mean(axis=(1, 3))

    return downsample(premultiplied), downsample(inside)


def fruit_on_white(style: FruitStyle, size: int, rng: np.random.Generator) -> Image.Image:
    premultiplied, coverage = render_fruit(style, size, rng)
    noise = rng.normal(0, 4, size=premultiplied.shape) * coverage[..., None]
    rgb = premultiplied + (1 - coverage[..., None]) * _BACKGROUND + noise
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_image(path: Path, image: Image.Image, fmt: str, **params: object) -> None:
    """Save `image` as `fmt` (a Pillow format name), creating parent folders."""
    _write_bytes(path, encode(image, fmt, **params))


def make_synthetic_fruits(
    root: Path, *, n_classes: int = 6, per_class: int = 10, size: int = 100, seed: int = 0
) -> dict[str, int]:
    """Write `root/<Label>/<label-slug>_<i>.jpg` and return {label: images written}.

    Each image draws from its own generator seeded by (seed, class, i), so the same seed gives
    the same bytes, and asking for more images or classes leaves the earlier ones unchanged.
    """
    if not 1 <= n_classes <= len(FRUIT_STYLES):
        raise ValueError(f"n_classes must be between 1 and {len(FRUIT_STYLES)}, got {n_classes}")
    counts = {}
    for class_index, style in enumerate(FRUIT_STYLES[:n_classes]):
        for i in range(per_class):
            rng = np.random.default_rng([seed, class_index, i])
            path = Path(root) / style.label / f"{label_slug(style.label)}_{i}.jpg"
            write_image(path, fruit_on_white(style, size, rng), "JPEG", quality=95)
        counts[style.label] = per_class
    return counts
