"""The generated images are what every other test stands on: check they are what they claim."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from devtools.samples import FRUIT_STYLES, label_slug, make_synthetic_fruits
from tests.support.corpora import (
    BAD_INPUT_OUTCOMES,
    IMAGE_CASES_FOUND,
    CorpusCase,
    make_bad_input_corpus,
)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_synthetic_fruits_are_byte_identical_for_one_seed(tmp_path):
    make_synthetic_fruits(tmp_path / "a", n_classes=3, per_class=2, seed=7)
    make_synthetic_fruits(tmp_path / "b", n_classes=3, per_class=2, seed=7)
    make_synthetic_fruits(tmp_path / "c", n_classes=3, per_class=2, seed=8)

    first = _tree_bytes(tmp_path / "a")
    assert first == _tree_bytes(tmp_path / "b")
    other_seed = _tree_bytes(tmp_path / "c")
    assert other_seed.keys() == first.keys()
    assert all(other_seed[name] != first[name] for name in first)


def test_synthetic_fruits_counts_labels_and_files(tmp_path):
    counts = make_synthetic_fruits(tmp_path, n_classes=3, per_class=4, size=64)

    assert counts == {"Apple Braeburn": 4, "Banana": 4, "Pomme d'été": 4}
    assert any(" " in label for label in counts)
    assert any(not label.isascii() for label in counts)
    for label, count in counts.items():
        files = sorted((tmp_path / label).iterdir())
        assert [f.name for f in files] == [f"{label_slug(label)}_{i}.jpg" for i in range(count)]
        with Image.open(files[0]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
            assert min(image.getpixel((0, 0))) >= 240  # white background


def test_more_images_leave_earlier_ones_unchanged(tmp_path):
    make_synthetic_fruits(tmp_path / "few", n_classes=2, per_class=2)
    make_synthetic_fruits(tmp_path / "many", n_classes=4, per_class=5)

    few, many = _tree_bytes(tmp_path / "few"), _tree_bytes(tmp_path / "many")
    assert few == {name: many[name] for name in few}


def test_label_slug_is_ascii_file_stem():
    assert label_slug("Pomme d'été") == "pomme_d_ete"
    assert label_slug("Physalis with Husk") == "physalis_with_husk"


@pytest.mark.parametrize("n_classes", [0, len(FRUIT_STYLES) + 1])
def test_n_classes_out_of_range_is_refused(tmp_path, n_classes):
    with pytest.raises(ValueError, match="n_classes"):
        make_synthetic_fruits(tmp_path, n_classes=n_classes)


def _mean_fruit_colour(fruit: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    return pixels[fruit].mean(axis=0)


def _silhouette(fruit: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The fruit mask in a square around its bounding box, 16x16: keeps shape, drops position."""
    ys, xs = np.nonzero(fruit)
    half = max(np.ptp(ys), np.ptp(xs)) / 2 + 1
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    mask = Image.fromarray(fruit.astype(np.uint8) * 255).crop(box).resize((16, 16))
    return np.asarray(mask, dtype=float).ravel()


@pytest.mark.parametrize("describe", [_mean_fruit_colour, _silhouette])
def test_every_class_differs_in_colour_and_in_shape(tmp_path, describe):
    """Leave-one-out nearest centroid never confuses classes on colour alone or shape alone."""
    make_synthetic_fruits(tmp_path, n_classes=len(FRUIT_STYLES), per_class=8, size=64)
    labels, vectors = [], []
    for path in sorted(tmp_path.rglob("*.jpg")):
        with Image.open(path) as image:
            pixels = np.asarray(image, dtype=float)
        vectors.append(describe(pixels.min(axis=2) < 200, pixels))
        labels.append(path.parent.name)
    labels, vectors = np.array(labels), np.array(vectors)
    names = np.unique(labels)

    for i, label in enumerate(labels):
        others = np.arange(len(labels)) != i
        centroids = np.array([vectors[others & (labels == name)].mean(axis=0) for name in names])
        nearest = names[np.argmin(np.linalg.norm(centroids - vectors[i], axis=1))]
        assert nearest == label, f"{label} image {i} looks like {nearest}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[CorpusCase]]:
    root = tmp_path_factory.mktemp("raw") / "dt=2024-06-01"
    return root, make_bad_input_corpus(root)


def _case_path(corpus, relpath: str) -> Path:
    return corpus[0] / relpath


def test_corpus_outcomes_are_the_contract(corpus):
    _, cases = corpus
    assert {c.relpath: (c.expected, c.reason_contains) for c in cases} == {
        relpath: (outcome, reason) for relpath, (outcome, _, reason) in BAD_INPUT_OUTCOMES.items()
    }


def test_every_case_file_exists_and_nothing_else(corpus):
    root, cases = corpus
    written = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert written == {c.relpath for c in cases}


def test_labels_are_the_folder_the_pipeline_sees(corpus):
    _, cases = corpus
    labels = {c.relpath: c.label for c in cases}
    assert labels["Banana/png_named.jpg"] == "Banana"
    assert labels["Pomme d'été/large_4000px.jpg"] == "Pomme d'été"
    assert labels['Label "quoted" & more/quoted.jpg'] == 'Label "quoted" & more'
    assert labels["Apple Braeburn/truncated.jpg"] == "Apple Braeburn"
    assert labels["orphan_no_label.jpg"] is None
    assert all(c.label is None for c in cases if c.expected == "ignored")


def test_broken_files_fail_the_way_their_reason_says(corpus):
    assert _case_path(corpus, "Apple Braeburn/zero_bytes.jpg").stat().st_size == 0

    truncated = _case_path(corpus, "Apple Braeburn/truncated.jpg")
    original_size = _case_path(corpus, "Banana/UPPER_CASE.JPG").stat().st_size
    assert truncated.stat().st_size == original_size // 2
    with Image.open(truncated) as image, pytest.raises(OSError, match="truncated"):
        image.load()

    text_file = _case_path(corpus, "Apple Braeburn/not_an_image.jpg")
    assert text_file.read_bytes().decode("utf-8")
    with pytest.raises(UnidentifiedImageError):
        Image.open(text_file)


def test_decompression_bomb_is_tiny_and_refused_on_open(corpus):
    bomb = _case_path(corpus, "Banana/decompression_bomb.png")
    assert bomb.stat().st_size < 1024
    assert Image.MAX_IMAGE_PIXELS is not None, "another test disabled Pillow's bomb check"
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


@pytest.mark.parametrize(
    ("relpath", "fmt", "mode"),
    [
        ("Banana/png_named.jpg", "PNG", "RGB"),
        ("Banana/cmyk.jpg", "JPEG", "CMYK"),
        ("Banana/grayscale.jpg", "JPEG", "L"),
        ("Banana/sixteen_bit.png", "PNG", "I;16"),
        ("Banana/rgba.png", "PNG", "RGBA"),
        ("Banana/palette.png", "PNG", "P"),
        ("Banana/UPPER_CASE.JPG", "JPEG", "RGB"),
        ("Banana/mixed_case.JpEg", "JPEG", "RGB"),
        ("Banana/upper.PNG", "PNG", "RGB"),
        ("Pomme d'été/large_4000px.jpg", "JPEG", "RGB"),
        ("Pomme d'été/exif_rotated.jpg", "JPEG", "RGB"),
        ('Label "quoted" & more/quoted.jpg', "JPEG", "RGB"),
        ("orphan_no_label.jpg", "JPEG", "RGB"),
        ("Banana/picture.gif", "GIF", "P"),
    ],
)
def test_valid_images_have_the_intended_format_and_mode(corpus, relpath, fmt, mode):
    with Image.open(_case_path(corpus, relpath)) as image:
        image.load()
        assert (image.format, image.mode) == (fmt, mode)


def test_sixteen_bit_png_uses_the_full_range(corpus):
    with Image.open(_case_path(corpus, "Banana/sixteen_bit.png")) as image:
        assert image.getextrema() == (0, 65535)


def test_transparent_images_have_a_transparent_background(corpus):
    with Image.open(_case_path(corpus, "Banana/rgba.png")) as image:
        assert image.getchannel("A").getextrema() == (0, 255)
        assert image.getpixel((0, 0))[3] == 0
    with Image.open(_case_path(corpus, "Banana/palette.png")) as image:
        assert image.getpixel((0, 0)) == image.info["transparency"]


def test_large_image_is_4000_by_3000_but_under_a_megabyte(corpus):
    path = _case_path(corpus, "Pomme d'été/large_4000px.jpg")
    assert path.stat().st_size < 1_000_000
    with Image.open(path) as image:
        assert image.size == (4000, 3000)


def test_exif_orientation_6_turns_landscape_to_portrait(corpus):
    with Image.open(_case_path(corpus, "Pomme d'été/exif_rotated.jpg")) as image:
        assert image.getexif()[0x0112] == 6
        assert image.size == (160, 100)
        upright = ImageOps.exif_transpose(image)
    assert upright.size == (100, 160)
    assert upright.getpixel((50, 5)) != upright.getpixel((50, 155))  # top and bottom differ


def test_image_cases_found_counts_processed_and_errors(corpus):
    _, cases = corpus
    by_outcome = {o: sum(c.expected == o for c in cases) for o in ("processed", "error", "ignored")}
    assert by_outcome == {"processed": 12, "error": 5, "ignored": 6}
    assert IMAGE_CASES_FOUND(cases) == 17
    assert IMAGE_CASES_FOUND([]) == 0
