"""Test inputs the file system allows, however odd: broken and unusual images, hostile names,
links. Each corpus writes its files and says what the pipeline must do with each.

`make_bad_input_corpus` writes the odd and broken files a real `raw/dt=D/` partition may hold;
`make_hostile_name_corpus` a valid photo under every legal-but-hostile name; `make_link_corpus`
symbolic links (and a fifo) pointing inside, outside, nowhere and in loops.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageDraw

from devtools.samples import FRUIT_STYLES, FruitStyle, encode, fruit_on_white, render_fruit

Outcome = Literal["processed", "error", "ignored"]


@dataclass(frozen=True)
class CorpusCase:
    """One file of the bad-input corpus and what the pipeline must do with it.

    `label` is the label folder the path implies (None for a file outside any label folder
    and for ignored files); `reason_contains` is a lower-case part of the error reason.
    """

    relpath: str
    expected: Outcome
    label: str | None
    reason_contains: str | None
    note: str


def _fruit_on_transparent(style: FruitStyle, size: int, rng: np.random.Generator) -> Image.Image:
    premultiplied, coverage = render_fruit(style, size, rng)
    rgb = premultiplied / np.maximum(coverage, 1e-6)[..., None]
    rgba = np.dstack([rgb, coverage * 255])
    return Image.fromarray(np.clip(rgba, 0, 255).round().astype(np.uint8), "RGBA")


def _sample_fruit() -> Image.Image:
    return fruit_on_white(FRUIT_STYLES[0], 100, np.random.default_rng(0))


def _smooth_large_photo() -> Image.Image:
    """4000x3000 RGB: gradients compress to a small JPEG, yet decoding takes every pixel."""
    width, height = 4000, 3000
    red = np.broadcast_to(np.linspace(40, 250, width), (height, width))
    green = np.broadcast_to(np.linspace(60, 220, height)[:, None], (height, width))
    blue = np.full((height, width), 120.0)
    image = Image.fromarray(np.dstack([red, green, blue]).astype(np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((1200, 700, 2800, 2300), fill=(200, 30, 40))
    return image


def _needs_exif_rotation() -> Image.Image:
    """Landscape with a red block at the left, so a missed rotation is visible."""
    image = Image.new("RGB", (160, 100), "white")
    ImageDraw.Draw(image).rectangle((0, 0, 39, 99), fill=(220, 20, 20))
    return image


def _sixteen_bit_gradient() -> Image.Image:
    """Mode I;16 spanning the whole 0..65535 range, which naive 8-bit conversion clips."""
    row = np.linspace(0, 65535, 256).round().astype(np.uint16)
    return Image.fromarray(np.tile(row, (64, 1)))


def _palette_with_transparency() -> tuple[Image.Image, int]:
    """Mode P image and the palette index of its (white) background."""
    image = _sample_fruit().quantize(colors=64)
    return image, image.getpixel((0, 0))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG declaring `width` x `height` grey pixels, built without allocating them.

    Above 2 * Image.MAX_IMAGE_PIXELS, so `Image.open` refuses it before decoding.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    one_zero_row = zlib.compress(b"\x00" * (width + 1))  # filter byte + pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", one_zero_row)
        + _png_chunk(b"IEND", b"")
    )


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _label_folder(relpath: str) -> str | None:
    folder, _, rest = relpath.partition("/")
    return folder if rest else None


def _processed(relpath: str, note: str) -> CorpusCase:
    return CorpusCase(relpath, "processed", _label_folder(relpath), None, note)


def _error(relpath: str, reason_contains: str, note: str) -> CorpusCase:
    return CorpusCase(relpath, "error", _label_folder(relpath), reason_contains, note)


def _ignored(relpath: str, note: str) -> CorpusCase:
    return CorpusCase(relpath, "ignored", None, None, note)


def make_bad_input_corpus(root: Path) -> list[CorpusCase]:
    """Write odd and broken inputs under `root` (a `raw/dt=D/` folder) and describe each.

    Label folders use a space, non-ASCII letters and quotes; file names use upper-case
    extensions and the hidden-file prefixes that Spark skips ("." and "_").
    """
    fruit = _sample_fruit()
    fruit_jpeg = encode(fruit, "JPEG", quality=95)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    palette, background_index = _palette_with_transparency()

    files = [
        (_error("Apple Braeburn/zero_bytes.jpg", "empty", "0-byte file"), b""),
        (
            _error(
                "Apple Braeburn/truncated.jpg",
                "truncated",
                "valid JPEG cut to half its bytes: the header opens, decoding fails",
            ),
            fruit_jpeg[: len(fruit_jpeg) // 2],
        ),
        (
            _error("Apple Braeburn/not_an_image.jpg", "not an image", "UTF-8 text, .jpg name"),
            b"Ceci n'est pas une pomme.\n",
        ),
        (_processed("Banana/png_named.jpg", "PNG bytes with a .jpg name"), encode(fruit, "PNG")),
        (_processed("Banana/cmyk.jpg", "CMYK JPEG"), encode(fruit.convert("CMYK"), "JPEG")),
        (_processed("Banana/grayscale.jpg", "mode L JPEG"), encode(fruit.convert("L"), "JPEG")),
        (
            _processed("Banana/sixteen_bit.png", "16-bit grey PNG (I;16), gradient 0..65535"),
            encode(_sixteen_bit_gradient(), "PNG"),
        ),
        (
            _processed("Banana/rgba.png", "RGBA with a transparent background"),
            encode(_fruit_on_transparent(FRUIT_STYLES[1], 100, np.random.default_rng(0)), "PNG"),
        ),
        (
            _processed("Banana/palette.png", "mode P with a transparent palette index"),
            encode(palette, "PNG", transparency=background_index),
        ),
        (_processed("Banana/UPPER_CASE.JPG", "upper-case extension"), fruit_jpeg),
        (_processed("Banana/mixed_case.JpEg", "mixed-case .jpeg extension"), fruit_jpeg),
        (_processed("Banana/upper.PNG", "upper-case .PNG extension"), encode(fruit, "PNG")),
        (
            _processed(
                "Pomme d'été/large_4000px.jpg",
                "4000x3000 RGB JPEG under a non-ASCII label with an apostrophe",
            ),
            encode(_smooth_large_photo(), "JPEG", quality=90),
        ),
        (
            _processed("Pomme d'été/exif_rotated.jpg", "EXIF Orientation 6, asymmetric"),
            encode(_needs_exif_rotation(), "JPEG", quality=95, exif=exif),
        ),
        (
            _processed('Label "quoted" & more/quoted.jpg', "label with quotes and an ampersand"),
            fruit_jpeg,
        ),
        (
            _error(
                "Banana/decompression_bomb.png",
                "decompression bomb",
                "tiny PNG declaring 40000x40000 pixels",
            ),
            decompression_bomb_png(),
        ),
        (_ignored("Banana/notes.txt", "text file"), b"picked 2024-06-01\n"),
        (_ignored("Banana/picture.gif", "a real GIF: not .jpg/.png"), encode(fruit, "GIF")),
        (_ignored("Banana/data.csv", "CSV file"), b"label,count\nBanana,1\n"),
        (_ignored("Banana/.hidden.jpg", "hidden file ('.' prefix)"), fruit_jpeg),
        (_ignored("Banana/_underscore.jpg", "hidden file ('_' prefix)"), fruit_jpeg),
        (_ignored(".hidden_dir/x.jpg", "inside a hidden folder"), fruit_jpeg),
        (
            _error("orphan_no_label.jpg", "no label folder", "valid image directly under root"),
            fruit_jpeg,
        ),
    ]
    for case, data in files:
        _write_bytes(Path(root) / case.relpath, data)
    return [case for case, _ in files]


# Every file of the bad-input corpus: (outcome, label, a part of the error reason), as the
# pipeline must treat it; `make_bad_input_corpus` says the same of each file it writes.
_ERRORS = {
    "Apple Braeburn/zero_bytes.jpg": "empty", "Apple Braeburn/truncated.jpg": "truncated",
    "Apple Braeburn/not_an_image.jpg": "not an image",
    "Banana/decompression_bomb.png": "decompression bomb",
    "orphan_no_label.jpg": "no label folder",
}  # fmt: skip
_PROCESSED = (
    "Banana/png_named.jpg", "Banana/cmyk.jpg", "Banana/grayscale.jpg", "Banana/sixteen_bit.png",
    "Banana/rgba.png", "Banana/palette.png", "Banana/UPPER_CASE.JPG", "Banana/mixed_case.JpEg",
    "Banana/upper.PNG", "Pomme d'été/large_4000px.jpg", "Pomme d'été/exif_rotated.jpg",
    'Label "quoted" & more/quoted.jpg',
)  # fmt: skip
_IGNORED = ("Banana/notes.txt", "Banana/picture.gif", "Banana/data.csv", "Banana/.hidden.jpg",
            "Banana/_underscore.jpg", ".hidden_dir/x.jpg")  # fmt: skip
BAD_INPUT_OUTCOMES: dict[str, tuple[Outcome, str | None, str | None]] = {
    **{path: ("error", _label_folder(path), reason) for path, reason in _ERRORS.items()},
    **{path: ("processed", _label_folder(path), None) for path in _PROCESSED},
    **{path: ("ignored", None, None) for path in _IGNORED},
}


def IMAGE_CASES_FOUND(cases: Iterable[CorpusCase]) -> int:
    """Images the pipeline should find: processed plus errors, not ignored files."""
    return sum(case.expected != "ignored" for case in cases)


# --- names and links: what the file system allows, however hostile ------------------------------

# Label folders whose names broke URI-based path handling: '#', '?', a literal '%20', ':', glob
# characters, quotes, backslashes, control characters, non-ASCII letters and emoji.
HOSTILE_LABELS = (
    "Kiwi",
    "a#b?c",
    "100%20 Juice",
    "C:D",
    "Ünïcødé 🍎 水果",
    "-dash label",
    "back\\slash",
    "new\nline",
    "tab\there",
    "[glob]{a,b}*?",
    "quote \"double\" 'single'",
    "  spaces  ",
    "%",
    "+plus+",
)

# File names, each written in one of the label folders above (the i-th name in label i mod n).
HOSTILE_FILE_NAMES = (
    "a#b.jpg",
    "q?x.jpg",
    "percent%20x.jpg",
    "100%.jpg",
    "%41.jpg",  # would decode to "A.jpg"
    "a%2Fb.jpg",  # would decode to a slash
    "a:b.jpg",
    "file:x.jpg",
    "with space.jpg",
    " leading space.jpg",
    "trailing space .jpg",
    'quote".jpg',
    "apos'.jpg",
    "-dash.jpg",
    "--.jpg",
    "back\\slash.jpg",
    "new\nline.jpg",
    "tab\t.jpg",
    "carriage\rreturn.jpg",
    "ctrl\x01\x7f.jpg",
    "é accent.jpg",
    "e\u0301 combining.jpg",  # decomposed (NFD): kept as is, not normalized
    "水果.jpg",
    "🍎.png",
    "[x].jpg",
    "{a,b}.jpg",
    "*.jpg",
    "?.jpg",
    "a+b.jpg",
    "semi;colon&amp=.jpg",
    "$HOME `tick` |pipe| <angle> ~!.jpg",
    "x.JPG.jpg",
    "a..jpg",
    "_a=b.JPEG",  # '_' with '=': a partition-like name, not hidden
    "L" * 251 + ".jpg",  # 255 bytes, the longest name ext4 allows
    "é" * 125 + ".jpeg",  # 255 bytes of two-byte letters
)


@dataclass(frozen=True)
class NameCase:
    """One entry of the hostile-name or link corpus and what the pipeline must do with it.

    `relpath` is the name below the root as listed, '/'-separated; a name that is not UTF-8 is
    held with surrogateescape (`os.fsdecode`), and `shown` is how outputs spell it (\\xNN
    escapes). `label` is the parent folder as shown; `reason_contains` a part of the error.
    """

    relpath: str
    expected: Outcome
    label: str | None
    reason_contains: str | None = None

    @property
    def shown(self) -> str:
        return self.relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _shown_parent(relpath: str) -> str | None:
    parts = relpath.split("/")
    return NameCase(parts[-2], "ignored", None).shown if len(parts) > 1 else None


def _write_at(root: Path, relpath: str, data: bytes) -> None:
    _write_bytes(Path(root) / relpath, data)


def make_hostile_name_corpus(root: Path) -> list[NameCase]:
    """Write a valid photo under every legal-but-hostile name, plus the names no output can hold.

    Every name in HOSTILE_FILE_NAMES is featurized under its exact label and name; a name that
    is not UTF-8 (a file, or the folder holding it) is an error row; hidden and non-image names
    with the same characters are ignored; a hostile name directly in the root has no label.
    """
    photo = encode(_sample_fruit(), "JPEG", quality=90)
    cases: list[NameCase] = []
    for index, name in enumerate(HOSTILE_FILE_NAMES):
        label = HOSTILE_LABELS[index % len(HOSTILE_LABELS)]
        cases.append(NameCase(f"{label}/{name}", "processed", label))
    for label in HOSTILE_LABELS:  # every label folder holds at least one photo
        cases.append(NameCase(f"{label}/photo.jpg", "processed", label))
    # Deeper folders: the label is the image's parent folder, however odd the grandparent.
    cases.append(NameCase("outer#1/inner?2/x%20y.jpg", "processed", "inner?2"))
    undecodable = [
        ("Kiwi/\udcff\udcfe.jpg", "file name is not valid utf-8"),
        ("Kiwi/latin1 caf\udce9.jpg", "file name is not valid utf-8"),
        ("Bad \udce9 label/ok.jpg", "folder name is not valid utf-8"),
    ]
    for relpath, reason in undecodable:
        cases.append(NameCase(relpath, "error", _shown_parent(relpath), reason))
    cases.append(NameCase("#orphan?.jpg", "error", None, "no label folder"))
    for relpath in ("Kiwi/a#b.txt", "Kiwi/\udcff.txt", "Kiwi/.a:b.jpg.crc", "Kiwi/.#x.jpg",
                    "Kiwi/_#x.jpg", ".hidden#dir/x.jpg", "Kiwi/x.jpg._COPYING_"):  # fmt: skip
        cases.append(NameCase(relpath, "ignored", None))
    for case in cases:
        _write_at(root, case.relpath, photo)
    return cases


def make_link_corpus(root: Path, outside: Path) -> list[NameCase]:
    """Symbolic links (and a fifo) under `root`, pointing inside, outside, nowhere and in loops.

    `outside` (not below `root`) receives `secret.jpg`, a valid photo, and `folder/inside.jpg`:
    links point at them, and neither may ever be read. Every non-hidden link is one error row,
    whatever its name; a hidden link is ignored; the real photo beside them is featurized.
    """
    root, outside = Path(root), Path(outside)
    photo = encode(fruit_on_white(FRUIT_STYLES[3], 100, np.random.default_rng(7)), "JPEG")
    secret = outside / "secret.jpg"
    _write_bytes(secret, photo)
    _write_bytes(outside / "folder" / "inside.jpg", photo)
    _write_bytes(root / "Linked" / "real.jpg", photo)
    links = {
        "Linked/evil.jpg": secret,  # a valid photo outside the input
        "Linked/passwd.jpg": Path("/etc/passwd"),
        "Linked/notes.txt": secret,  # a link is an error whatever its name
        "Linked/dangling.jpg": Path("does-not-exist.jpg"),
        "Linked/loop.jpg": Path("loop.jpg"),  # points at itself
        "Linked/up": Path(".."),  # a folder loop
        "Folder link": outside / "folder",  # a folder outside the input
        "Linked again": Path("Linked"),  # a folder inside the input
        "root link.jpg": secret,  # directly in the root
        "Linked/.hidden link.jpg": secret,  # hidden: ignored, not followed
    }
    for relpath, target in links.items():
        (root / relpath).symlink_to(target)
    fifo = root / "Linked" / "pipe.jpg"
    os.mkfifo(fifo)
    cases = [NameCase("Linked/real.jpg", "processed", "Linked")]
    for relpath in links:
        hidden = relpath.rsplit("/", 1)[-1].startswith(".")
        cases.append(
            NameCase(relpath, "ignored", None)
            if hidden
            else NameCase(relpath, "error", _shown_parent(relpath), "symbolic link, not followed")
        )
    cases.append(NameCase("Linked/pipe.jpg", "error", "Linked", "not a regular file"))
    return cases
