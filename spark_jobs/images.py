"""Image decoding and preprocessing: the one place that turns uploaded bytes into model input.

Pillow and numpy only (no TensorFlow), so decoding can run in threads beside inference and tests
stay light. The steps follow the seeds: Pillow decode, any mode to RGB, resize to 224x224 with
bicubic resampling, MobileNetV2's `preprocess_input` scaling to [-1, 1].
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MODEL_INPUT_SIZE = (224, 224)

# Large JPEGs are decoded at a reduced DCT scale (Pillow's draft mode) down to no less than this
# side, twice the model input, before the bicubic resize: a 4000 px phone photo never has its
# full-resolution pixels in memory. Fruits-360's 100 px photos are far below it and decode
# exactly as in the seeds.
DRAFT_MIN_SIDE = 2 * MODEL_INPUT_SIZE[0]

WHITE = (255, 255, 255)


class BadImage(ValueError):
    """An upload that cannot become model input; the message is the reason users read."""


def open_image(data: bytes) -> Image.Image:
    """Decode `data` into a loaded Pillow image, or raise BadImage with the reason."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("not an image: Pillow cannot identify the file's format") from exc
    except Exception as exc:
        raise BadImage(f"unreadable image header: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    # Image.open only warns between 1x and 2x the limit; refuse before any pixel is allocated.
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise BadImage(
            f"decompression bomb: {width}x{height} = {width * height} pixels exceeds Pillow's "
            f"limit of {Image.MAX_IMAGE_PIXELS}"
        )
    if image.format == "JPEG" and min(width, height) >= 2 * DRAFT_MIN_SIDE:
        image.draft(image.mode, (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE))
    try:
        image.load()
    except OSError as exc:
        if "truncated" in str(exc):
            raise BadImage(f"truncated image: {exc}") from exc
        raise BadImage(f"corrupt image data: {exc}") from exc
    except Exception as exc:
        raise BadImage(f"corrupt image data: {type(exc).__name__}: {exc}") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, the way a person would see the photo.

    Transparent pixels become white (Fruits-360's background) rather than whatever colour hides
    under alpha 0; 16-bit greyscale is scaled down instead of clipped to white.
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def preprocess(image: Image.Image) -> np.ndarray:
    """Model input for one decoded image: float32 (224, 224, 3) in [-1, 1]."""
    return to_model_scale(pixels(image))


def pixels(image: Image.Image) -> np.ndarray:
    """The 224x224 RGB pixels the model sees, uint8 (224, 224, 3): upright, RGB, resized.

    A C-contiguous copy (`np.asarray`): scaling a strided view of Pillow's RGBX memory into the
    model's input would make numpy step through 3 of every 4 bytes element by element, which
    costs more than the copy and the contiguous scaling together (`make bench-batch` measures
    both).
    """
    upright = ImageOps.exif_transpose(image)
    resized = to_rgb(upright).resize(MODEL_INPUT_SIZE, Image.Resampling.BICUBIC)
    return np.asarray(resized)


def to_model_scale(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels (..., 224, 224, 3) to float32 in [-1, 1], one image or a batch at once.

    Equal to `keras.applications.mobilenet_v2.preprocess_input` (x / 127.5 - 1), written out
    here so that decoding does not import TensorFlow; a test checks the equality. `out` (float32,
    the same shape) receives the result: the model's input tensor, with no array in between.
    """
    scaled = np.divide(pixels, np.float32(127.5), out=out, dtype=np.float32)
    scaled -= np.float32(1.0)
    return scaled


def load_pixels(data: bytes) -> np.ndarray:
    """Bytes of an uploaded file to uint8 model pixels, or BadImage with the reason."""
    image = open_image(data)
    try:
        return pixels(image)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage(f"cannot convert image ({image.mode}): {type(exc).__name__}: {exc}") from exc
    finally:
        image.close()


def load_model_input(data: bytes) -> np.ndarray:
    """Bytes of an uploaded file to model input, or BadImage with the reason."""
    return to_model_scale(load_pixels(data))
