"""Bytes of an upload to MobileNetV2 input: decoding, colour modes, resizing and refusals."""

import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageDraw

from spark_jobs.images import (
    DRAFT_MIN_SIDE,
    MODEL_INPUT_SIZE,
    BadImage,
    load_model_input,
    open_image,
    pixels,
    preprocess,
    to_model_scale,
    to_rgb,
)
from spark_jobs.inputs import NoLabelFolder, label_for
from tests.support.corpora import CorpusCase, decompression_bomb_png, make_bad_input_corpus

REPO = Path(__file__).resolve().parents[1]
ONE_LEVEL = 1 / 127.5  # one 8-bit step after scaling to [-1, 1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[CorpusCase]]:
    root = tmp_path_factory.mktemp("raw") / "dt=2026-01-02"
    return root, make_bad_input_corpus(root)


def _bytes(corpus, relpath: str) -> bytes:
    root, cases = corpus
    assert relpath in {case.relpath for case in cases}, relpath
    return (root / relpath).read_bytes()


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _scaled(rgb: Image.Image) -> np.ndarray:
    """What preprocess must give for an RGB image already 224 x 224."""
    assert rgb.mode == "RGB" and rgb.size == MODEL_INPUT_SIZE
    return np.asarray(rgb, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def _noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _assert_model_input(array: np.ndarray) -> None:
    assert array.dtype == np.float32
    assert array.shape == (224, 224, 3)
    assert np.isfinite(array).all()
    assert array.min() >= -1.0
    assert array.max() <= 1.0


# The corpus: every file with the outcome it promises.


def test_corpus_has_the_cases_these_tests_walk(corpus):
    _, cases = corpus
    processed = [case for case in cases if case.expected == "processed"]
    errors = [case for case in cases if case.expected == "error"]
    assert len(processed) == 12
    assert {case.reason_contains for case in errors} == {
        "empty",
        "truncated",
        "not an image",
        "decompression bomb",
        "no label folder",
    }


def test_every_processed_case_becomes_model_input(corpus):
    root, cases = corpus
    processed = [case for case in cases if case.expected == "processed"]
    for case in processed:
        array = load_model_input((root / case.relpath).read_bytes())
        _assert_model_input(array)
        assert array.std() > 0.05, case.relpath  # a picture, not a flat fill


def test_every_error_case_decided_by_bytes_raises_bad_image_with_its_reason(corpus):
    root, cases = corpus
    errors = [
        case
        for case in cases
        if case.expected == "error" and case.reason_contains != "no label folder"
    ]
    assert len(errors) == 4
    for case in errors:
        with pytest.raises(BadImage) as caught:
            load_model_input((root / case.relpath).read_bytes())
        assert case.reason_contains in str(caught.value).lower(), (case.relpath, caught.value)


def test_no_label_folder_is_decided_by_the_path_not_the_bytes(corpus):
    root, cases = corpus
    (orphan,) = [case for case in cases if case.reason_contains == "no label folder"]
    _assert_model_input(load_model_input((root / orphan.relpath).read_bytes()))
    with pytest.raises(NoLabelFolder, match="no label folder"):
        label_for((root / orphan.relpath).as_uri(), root.as_uri())


# Refusals and their reasons.


def test_empty_file():
    with pytest.raises(BadImage, match=r"^empty file \(0 bytes\)$"):
        load_model_input(b"")


@pytest.mark.parametrize(
    "data",
    [b"Ceci n'est pas une pomme.\n", b"label,count\nBanana,1\n", b"\x00" * 64, b"\xff\xd8"],
)
def test_not_an_image(data):
    with pytest.raises(BadImage, match="^not an image: "):
        load_model_input(data)


def test_truncated_jpeg():
    data = _encode(_noise_rgb(100, 100), "JPEG", quality=95)
    assert isinstance(open_image(data), Image.Image)  # the whole file decodes
    with pytest.raises(BadImage, match="^truncated image: "):
        load_model_input(data[: len(data) // 2])


def test_corpus_truncated_file_header_still_opens(corpus):
    data = _bytes(corpus, "Apple Braeburn/truncated.jpg")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("JPEG", (100, 100))
    with pytest.raises(BadImage, match="^truncated image: "):
        open_image(data)


def test_decompression_bomb_is_refused(corpus):
    data = _bytes(corpus, "Banana/decompression_bomb.png")
    assert len(data) < 10_000
    with pytest.raises(BadImage, match="^decompression bomb: "):
        load_model_input(data)


# Run in a fresh interpreter: Pillow allocates pixels with its own malloc, which tracemalloc does
# not see, so the peak resident set size is what shows an allocation. VmHWM, not ru_maxrss: the
# latter starts at the parent's peak after vfork + exec, and pytest's process is large.
_PEAK_MEMORY_PROBE = """
import json, warnings
from PIL import Image
from tests.support.corpora import decompression_bomb_png
from spark_jobs.images import BadImage, load_model_input

warnings.simplefilter("ignore")
def peak():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

result = {}
for side in (40_000, 10_000):
    data = decompression_bomb_png(side, side)
    before = peak()
    try:
        load_model_input(data)
        reason = None
    except BadImage as exc:
        reason = str(exc)
    result[side] = {"reason": reason, "growth": peak() - before}
before = peak()
control = Image.new("L", (10_000, 10_000), 1)  # 100 MB of pixels, really written
result["control"] = {"growth": peak() - before}
print(json.dumps(result))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_decompression_bombs_allocate_no_pixels():
    """40000^2 (Pillow refuses in open) and 10000^2 (Pillow only warns; we refuse)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'plugins'}"}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["40000"]["reason"].startswith("decompression bomb: ")
    assert result["10000"]["reason"] == (
        "decompression bomb: 10000x10000 = 100000000 pixels exceeds Pillow's limit of "
        f"{Image.MAX_IMAGE_PIXELS}"
    )
    assert result["40000"]["growth"] < 10_000_000  # full decode: 1.6 GB
    assert result["10000"]["growth"] < 10_000_000  # full decode: 100 MB
    assert result["control"]["growth"] > 90_000_000  # the probe does see Pillow's pixels


def test_image_between_one_and_two_times_the_pixel_limit_is_refused_before_decoding():
    data = decompression_bomb_png(10_000, 10_000)  # a header and one row: no pixels needed
    assert len(data) < 1_000
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(data)).close()  # Pillow alone would go on to decode
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(BadImage, match="^decompression bomb: 10000x10000 = 100000000 pixels"),
    ):
        open_image(data)


# Scaling and resizing.


def test_preprocess_equals_keras_mobilenet_v2_preprocess_input():
    from keras.applications.mobilenet_v2 import preprocess_input

    image = _noise_rgb(173, 131, seed=1)
    resized = np.asarray(image.resize(MODEL_INPUT_SIZE, Image.Resampling.BICUBIC))
    assert resized.dtype == np.uint8
    expected = np.asarray(preprocess_input(resized.copy()))
    assert expected.dtype == np.float32
    actual = preprocess(image)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
    # Every 8-bit level maps as keras maps it, the ends exactly.
    levels = np.arange(256, dtype=np.uint8)
    ramp = Image.fromarray(np.tile(levels, (224, 1)), "L").convert("RGB")
    assert ramp.size == (256, 224)
    keras_levels = np.asarray(preprocess_input(np.stack([levels] * 3, axis=-1).copy()))
    ours = to_model_scale(levels)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, keras_levels[:, 0], rtol=0, atol=1e-6)
    assert (ours[0], ours[255]) == (-1.0, 1.0)


def test_a_batch_is_scaled_as_each_of_its_images():
    # The featurize job scales a whole decoded batch at once; the results must not depend on it.
    images = [_noise_rgb(100 + 10 * i, 90, seed=i) for i in range(3)]
    batch = to_model_scale(np.stack([pixels(image) for image in images]))
    assert batch.shape == (3, *MODEL_INPUT_SIZE, 3) and batch.dtype == np.float32
    for scaled, image in zip(batch, images, strict=True):
        np.testing.assert_array_equal(scaled, preprocess(image))


def test_pixels_are_the_resized_image_contiguous_and_outlive_it():
    # Contiguous, so scaling reads them in one sweep; and valid once the image is freed.
    images = [_noise_rgb(100 + 7 * i, 100, seed=i) for i in range(8)]
    expected = [np.asarray(im.resize(MODEL_INPUT_SIZE, Image.Resampling.BICUBIC)) for im in images]
    arrays = [pixels(image) for image in images]
    del images
    gc.collect()
    churn = [np.full((224, 224, 4), 7, np.uint8) for _ in range(64)]  # reuse freed memory
    assert len(churn) == 64
    for array, want in zip(arrays, expected, strict=True):
        assert array.shape == (*MODEL_INPUT_SIZE, 3) and array.dtype == np.uint8
        assert array.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(array, want)


def test_scaling_into_a_given_array_equals_scaling_into_a_new_one():
    levels = np.asarray(_noise_rgb(224, 224, seed=3))
    target = np.full((*MODEL_INPUT_SIZE, 3), np.nan, np.float32)
    returned = to_model_scale(levels, out=target)
    assert returned is target
    np.testing.assert_array_equal(target, to_model_scale(levels))


@pytest.mark.parametrize("size", [(100, 100), (173, 131), (224, 224), (640, 480), (31, 500)])
def test_resize_is_bicubic_to_224(size):
    image = _noise_rgb(*size, seed=size[0])
    expected = _scaled(image.resize((224, 224), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(preprocess(image), expected)
    if size != (224, 224):
        bilinear = _scaled(image.resize((224, 224), Image.Resampling.BILINEAR))
        assert not np.array_equal(preprocess(image), bilinear)


def test_load_model_input_of_png_equals_preprocess_of_the_image():
    image = _noise_rgb(150, 90, seed=3)
    np.testing.assert_array_equal(
        load_model_input(_encode(image, "PNG")),
        _scaled(image.resize((224, 224), Image.Resampling.BICUBIC)),
    )


# Colour modes.


def test_sixteen_bit_gradient_stays_a_gradient(corpus):
    data = _bytes(corpus, "Banana/sixteen_bit.png")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "I;16"
        assert np.asarray(image).max() == 65535
    array = load_model_input(data)
    _assert_model_input(array)
    assert abs(float(array.mean())) < 0.01  # 0..65535 evenly: mid-grey on average, not white
    assert (array == array[:1, :, :1]).all()  # grey, the same in every row
    row = array[0, :, 0]
    assert np.all(np.diff(row) >= 0)
    assert np.count_nonzero(np.diff(row) > 0) > 200
    assert (row[0], row[-1]) == (-1.0, 1.0)


def test_sixteen_bit_levels_scale_by_257():
    wide = np.array([[0, 257, 32896, 65535, 128]], dtype=np.uint16)  # 0, 1, 128, 255, 0.498
    image = Image.fromarray(np.tile(wide, (224, 1)))
    assert image.mode == "I;16"
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 1, 128, 255, 0]


def test_transparent_rgba_background_becomes_white(corpus):
    data = _bytes(corpus, "Banana/rgba.png")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA"
        pixels = np.asarray(image)
        assert pixels[0, 0].tolist() == [0, 0, 0, 0]  # black under alpha 0
    array = load_model_input(data)
    for y, x in [(0, 0), (0, 223), (223, 0), (223, 223)]:
        assert array[y, x].tolist() == [1.0, 1.0, 1.0]
    assert np.count_nonzero(array.min(axis=-1) < 0.5) > 5_000  # the banana itself is there


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_hidden_colour_under_alpha_0_becomes_white(mode):
    image = Image.new("RGBA", (60, 40), (255, 0, 0, 0))  # red, fully transparent
    ImageDraw.Draw(image).rectangle((20, 10, 39, 29), fill=(0, 0, 255, 255))
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "PA":
        image = image.convert("RGBA").convert("PA")
    assert image.mode == mode
    array = preprocess(image)
    assert array[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert array[223, 223].tolist() == [1.0, 1.0, 1.0]
    blue = (0, 0, 255) if mode != "LA" else (29, 29, 29)  # L = 0.114 * 255 for LA
    assert array[112, 112].tolist() == [c / np.float32(127.5) - 1 for c in blue]  # opaque: kept


def test_half_transparent_pixel_is_blended_over_white():
    image = Image.new("RGBA", (224, 224), (255, 0, 0, 128))
    array = preprocess(image)
    blend = round(255 * (1 - 128 / 255))  # Pillow's alpha_composite over white: 127
    assert array[0, 0].tolist() == pytest.approx([1.0, blend / 127.5 - 1, blend / 127.5 - 1])


def test_palette_with_transparent_index_becomes_white(corpus):
    data = _bytes(corpus, "Banana/palette.png")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P"
        assert "transparency" in image.info
    array = load_model_input(data)
    assert array[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert np.count_nonzero(array.min(axis=-1) < 0.5) > 5_000  # the apple is there


def test_palette_transparent_black_becomes_white():
    pixels = np.zeros((50, 50), dtype=np.uint8)  # index 0: black, transparent
    pixels[15:35, 15:35] = 1  # index 1: green, opaque
    image = Image.fromarray(pixels, "P")
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * (254 * 3))
    data = _encode(image, "PNG", transparency=0)
    with Image.open(io.BytesIO(data)) as reopened:
        assert (reopened.mode, reopened.info["transparency"]) == ("P", 0)
    array = load_model_input(data)
    assert array[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert array[112, 112].tolist() == pytest.approx([-1.0, 200 / 127.5 - 1, -1.0])
    # Without transparency the same palette image keeps its black background.
    assert load_model_input(_encode(image, "PNG"))[0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_cmyk_jpeg_decodes_to_the_colours_of_the_photo(corpus):
    cmyk = _bytes(corpus, "Banana/cmyk.jpg")
    with Image.open(io.BytesIO(cmyk)) as image:
        assert (image.format, image.mode) == ("JPEG", "CMYK")
    array = load_model_input(cmyk)
    reference = load_model_input(_bytes(corpus, "Banana/png_named.jpg"))  # same fruit, lossless
    assert float(np.abs(array - reference).mean()) < 0.03
    assert array[0, 0].min() > 0.9  # white background, not inverted
    red, green, blue = array[112, 112]
    assert red > 0.2 and green < -0.5 and blue < -0.5  # a red apple, not a cyan one


def test_cmyk_primaries():
    colours = {
        (255, 255, 255): (0, 0, 0, 0),
        (0, 255, 255): (255, 0, 0, 0),  # cyan ink
        (255, 0, 255): (0, 255, 0, 0),
        (255, 255, 0): (0, 0, 255, 0),
        (0, 0, 0): (0, 0, 0, 255),
    }
    for rgb, ink in colours.items():
        image = Image.new("CMYK", (224, 224), ink)
        assert preprocess(image)[0, 0].tolist() == [c / 127.5 - 1 for c in rgb], ink


def test_grayscale_becomes_three_equal_channels(corpus):
    array = load_model_input(_bytes(corpus, "Banana/grayscale.jpg"))
    _assert_model_input(array)
    assert np.array_equal(array[..., 0], array[..., 1])
    assert np.array_equal(array[..., 0], array[..., 2])


def test_png_bytes_with_a_jpg_name_decode_by_content(corpus):
    np.testing.assert_array_equal(
        load_model_input(_bytes(corpus, "Banana/png_named.jpg")),
        load_model_input(_bytes(corpus, "Banana/upper.PNG")),
    )


# Orientation and large photos.


def _without_exif(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image), image.mode)


def test_exif_orientation_6_is_applied(corpus):
    data = _bytes(corpus, "Pomme d'été/exif_rotated.jpg")
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (160, 100)
        assert stored.getexif()[ExifTags.Base.Orientation] == 6
        rotated = _without_exif(stored).transpose(Image.Transpose.ROTATE_270)  # 90° clockwise
    assert rotated.size == (100, 160)
    array = load_model_input(data)
    np.testing.assert_array_equal(array, preprocess(rotated))
    # The red block on the stored image's left is now at the top.
    assert array[5, 112].tolist() == pytest.approx([0.73, -0.84, -0.84], abs=0.1)
    assert array[218, 112].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [
        (1, None),
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_270),
        (8, Image.Transpose.ROTATE_90),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientations_on_a_lossless_image(orientation, transpose):
    image = Image.new("RGB", (160, 100), "white")
    ImageDraw.Draw(image).rectangle((0, 0, 39, 49), fill=(220, 20, 20))  # top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    data = _encode(image, "PNG", exif=exif)
    upright = image if transpose is None else image.transpose(transpose)
    np.testing.assert_array_equal(load_model_input(data), preprocess(upright))
    if transpose is not None:
        assert not np.array_equal(load_model_input(data), preprocess(image))


def test_large_jpeg_is_decoded_in_draft_mode(corpus):
    data = _bytes(corpus, "Pomme d'été/large_4000px.jpg")
    with Image.open(io.BytesIO(data)) as header:
        assert header.size == (4000, 3000)
    image = open_image(data)
    assert image.size == (1000, 750)  # a 1/4 DCT scale: never 4000 x 3000 pixels in memory
    assert min(image.size) >= DRAFT_MIN_SIDE
    assert image.mode == "RGB"
    # The reduced decode gives the same model input as a full decode, to within JPEG noise.
    with Image.open(io.BytesIO(data)) as full:
        full.load()
        assert full.size == (4000, 3000)
        difference = np.abs(load_model_input(data) - preprocess(full))
    assert float(difference.mean()) < 2 * ONE_LEVEL
    assert float(difference.max()) < 0.05


def test_small_jpeg_is_decoded_at_full_size():
    image = _noise_rgb(2 * DRAFT_MIN_SIDE - 1, 1000, seed=4)
    data = _encode(image, "JPEG", quality=95)
    assert open_image(data).size == (2 * DRAFT_MIN_SIDE - 1, 1000)
