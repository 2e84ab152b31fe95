"""Which files count as images and which label they carry, as Spark reports their paths."""

import fnmatch
import os
import re

import pytest

from fruits_pipeline.samples import make_bad_input_corpus
from spark_jobs.inputs import (
    IMAGE_NAME_GLOB,
    NoLabelFolder,
    display_path,
    is_hidden_name,
    is_image_relpath,
    label_for,
    uri_path,
)

ROOT = "file:/tmp/raw/dt=2026-01-02"
S3_ROOT = "s3://bucket/lake/raw/dt=D/"


@pytest.mark.parametrize(
    ("image_uri", "root", "label"),
    [
        (f"{ROOT}/Apple%20Braeburn/x.jpg", ROOT, "Apple Braeburn"),
        (f"{ROOT}/Pomme%20d'%C3%A9t%C3%A9/x.jpg", ROOT, "Pomme d'été"),
        # java.net.URI.toString leaves non-ASCII letters unescaped: both spellings decode alike.
        (f"{ROOT}/Pomme%20d'été/x.jpg", ROOT, "Pomme d'été"),
        (f"{ROOT}/Pomme%20d%27%C3%A9t%C3%A9/x.jpg", ROOT, "Pomme d'été"),
        (f'{ROOT}/Label%20"quoted"%20&%20more/q.jpg', ROOT, 'Label "quoted" & more'),
        (f"{ROOT}/Label%20%22quoted%22%20%26%20more/q.jpg", ROOT, 'Label "quoted" & more'),
        (f"{ROOT}/100%25%20Juice/x.png", ROOT, "100% Juice"),
        (f"{ROOT}/Kiwi/a%2Bb.jpg", ROOT, "Kiwi"),
        (f"{ROOT}/A+B/x.jpg", ROOT, "A+B"),  # '+' is not a space in a path
        ("file:///tmp/raw/dt=2026-01-02/Kiwi/x.jpg", ROOT, "Kiwi"),
        (f"{ROOT}/Kiwi/x.jpg", "file:///tmp/raw/dt=2026-01-02/", "Kiwi"),
        ("s3://bucket/lake/raw/dt=D/Banana/a.jpg", S3_ROOT, "Banana"),
        ("s3://bucket/lake/raw/dt=D/Banana/a.jpg", "s3://bucket/lake/raw/dt=D", "Banana"),
        ("s3://bucket/lake/raw/dt=D/Lemon%20Meyer/a.JPG", S3_ROOT, "Lemon Meyer"),
        # A plain path root against the file: URIs Spark reports.
        (f"{ROOT}/Apple%20Braeburn/x.jpg", "/tmp/raw/dt=2026-01-02", "Apple Braeburn"),
        (f"{ROOT}/Apple%20Braeburn/x.jpg", "/tmp/raw/dt=2026-01-02/", "Apple Braeburn"),
        ("/tmp/raw/dt=2026-01-02/Kiwi/x.jpg", "/tmp/raw/dt=2026-01-02", "Kiwi"),
        # Deeper folders: the label is the image's parent folder.
        (f"{ROOT}/Fruit/Apple%20Braeburn/x.jpg", ROOT, "Apple Braeburn"),
        (f"{ROOT}/a/b/c/Cherry/x.jpg", ROOT, "Cherry"),
        ("s3://bucket/lake/raw/dt=D/batch%201/Banana/a.jpg", S3_ROOT, "Banana"),
    ],
)
def test_label_for(image_uri, root, label):
    assert label_for(image_uri, root) == label


@pytest.mark.parametrize(
    ("image_uri", "root"),
    [
        (f"{ROOT}/x.jpg", ROOT),
        (f"{ROOT}/Pomme%20d'%C3%A9t%C3%A9.jpg", ROOT),
        (f"{ROOT}/x.jpg", "/tmp/raw/dt=2026-01-02/"),
        ("s3://bucket/lake/raw/dt=D/a.jpg", S3_ROOT),
        ("s3://bucket/lake/raw/dt=D/a.jpg", "s3://bucket/lake/raw/dt=D"),
    ],
)
def test_image_directly_in_the_root_has_no_label_folder(image_uri, root):
    with pytest.raises(NoLabelFolder, match="no label folder") as caught:
        label_for(image_uri, root)
    assert isinstance(caught.value, ValueError)
    assert root in str(caught.value)


@pytest.mark.parametrize(
    ("image_uri", "root"),
    [
        ("file:/tmp/raw/dt=2026-01-03/Kiwi/x.jpg", ROOT),
        ("file:/tmp/raw/Kiwi/x.jpg", ROOT),
        # A sibling folder whose name starts with the root's name is not below the root.
        ("file:/tmp/raw/dt=2026-01-02x/Kiwi/x.jpg", ROOT),
        ("file:/tmp/raw/dt=2026-01-02", ROOT),
        ("s3://bucket/lake/raw/dt=E/Banana/a.jpg", S3_ROOT),
        ("s3://other-bucket/lake/raw/dt=D/Banana/a.jpg", S3_ROOT),
    ],
)
def test_image_outside_the_root_raises(image_uri, root):
    with pytest.raises(NoLabelFolder, match="is not below the input root") as caught:
        label_for(image_uri, root)
    assert display_path(image_uri) in str(caught.value)


def test_outside_root_message_shows_the_decoded_path():
    with pytest.raises(NoLabelFolder) as caught:
        label_for("file:/elsewhere/Pomme%20d'%C3%A9t%C3%A9/x.jpg", ROOT)
    assert str(caught.value) == (
        f"file:/elsewhere/Pomme d'été/x.jpg is not below the input root {ROOT}"
    )


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:/tmp/a%20b/c", "/tmp/a b/c"),
        ("file:///tmp/a%20b/c/", "/tmp/a b/c"),
        ("s3://bucket/x/%C3%A9t%C3%A9", "/x/été"),
        ("/plain/a%20b", "/plain/a%20b"),  # a plain path is taken as it is
        ("/plain/dir/", "/plain/dir"),
    ],
)
def test_uri_path(uri, path):
    assert uri_path(uri) == path


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("file:/tmp/raw/Apple%20Braeburn/x.jpg", "file:/tmp/raw/Apple Braeburn/x.jpg"),
        # One spelling for file: URIs, so paths from Spark's scans and listings compare equal.
        ("file:///tmp/raw/Pomme%20d'%C3%A9t%C3%A9/x.jpg", "file:/tmp/raw/Pomme d'été/x.jpg"),
        ("file:/tmp/raw/Pomme%20d'%C3%A9t%C3%A9/x.jpg", "file:/tmp/raw/Pomme d'été/x.jpg"),
        ("file:/tmp/raw/Pomme%20d'été/x.jpg", "file:/tmp/raw/Pomme d'été/x.jpg"),
        (
            "s3://bucket/raw/Label%20%22quoted%22%20%26%20more/q.jpg",
            's3://bucket/raw/Label "quoted" & more/q.jpg',
        ),
        ("s3://bucket/raw/100%25/x.jpg", "s3://bucket/raw/100%/x.jpg"),
        ("/plain/path/a b.jpg", "/plain/path/a b.jpg"),
        ("/plain/path/a%20b.jpg", "/plain/path/a%20b.jpg"),
    ],
)
def test_display_path_decodes(uri, shown):
    assert display_path(uri) == shown


@pytest.mark.parametrize(
    ("name", "hidden"),
    [
        ("x.jpg", False),
        ("Apple Braeburn", False),
        ("a_b.jpg", False),
        ("a.b", False),
        (".x.jpg", True),
        (".hidden_dir", True),
        (".", True),
        ("_x.jpg", True),
        ("_tmp", True),
        ("_", True),
        ("_a=b", False),  # a partition folder: Spark lists it
        ("_a=b.jpg", False),
        ("x.jpg._COPYING_", True),
        # Spark keeps Parquet's summary files (`shouldFilterOutPathName`).
        ("_metadata", False),
        ("_metadata.jpg", False),
        ("_common_metadata", False),
        ("_metadat.jpg", True),
    ],
)
def test_is_hidden_name(name, hidden):
    assert is_hidden_name(name) is hidden


@pytest.mark.parametrize(
    ("relpath", "image"),
    [
        ("Banana/a.jpg", True),
        ("Banana/a.jpeg", True),
        ("Banana/a.png", True),
        ("Banana/a.JPG", True),
        ("Banana/a.JpEg", True),
        ("Banana/a.PNG", True),
        ("Banana/a.Png", True),
        ("Pomme d'été/large 4000px.jpg", True),
        ("a.jpg", True),  # in the root: an image, which then fails for want of a label folder
        ("deep/er/Banana/a.jpg", True),
        ("Banana//a.jpg", True),
        ("_a=b/Banana/x.jpg", True),  # '_' with '=' is a partition folder, not hidden
        ("Banana/a.gif", False),
        ("Banana/a.GIF", False),
        ("Banana/a.txt", False),
        ("Banana/a.csv", False),
        ("Banana/a.webp", False),
        ("Banana/a.jpg.txt", False),
        ("Banana/a.jpgx", False),
        ("Banana/jpg", False),
        ("Banana/a", False),
        ("Banana/.x.jpg", False),
        ("Banana/_x.jpg", False),
        ("Banana/a.jpg._COPYING_", False),
        (".hidden_dir/x.jpg", False),
        ("Banana/.thumbs/x.jpg", False),
        ("_temporary/0/Banana/x.jpg", False),
        ("Banana", False),
        ("", False),
        ("/", False),
    ],
)
def test_is_image_relpath(relpath, image):
    assert is_image_relpath(relpath) is image


def _expand_alternation(glob: str) -> list[str]:
    """`a{x,y}b` -> [`axb`, `ayb`]: the one Hadoop glob feature fnmatch lacks (no nesting)."""
    match = re.fullmatch(r"([^{}]*)\{([^{}]*)\}([^{}]*)", glob)
    assert match is not None, glob
    head, options, tail = match.groups()
    return [head + option + tail for option in options.split(",")]


def test_glob_expansion_in_this_test():
    assert _expand_alternation(IMAGE_NAME_GLOB) == [
        "*.[jJ][pP][gG]",
        "*.[jJ][pP][eE][gG]",
        "*.[pP][nN][gG]",
    ]


NAMES = [
    "a.jpg",
    "a.JPG",
    "a.Jpg",
    "a.jPg",
    "a.jpG",
    "a.jpeg",
    "a.JPEG",
    "a.JpEg",
    "a.png",
    "a.PNG",
    "a.pNg",
    "with space.jpg",
    "Pomme d'été.png",
    "a.b.c.jpeg",
    "x.jpg.png",
    "a.gif",
    "a.GIF",
    "a.txt",
    "a.csv",
    "a.jpe",
    "a.jpgg",
    "a.jpg.txt",
    "a.jpg ",
    "a.pn",
    "a.tiff",
    "jpg",
    "png",
    "a_jpg",
    "a-png",
    "a",
    "noextension",
]


def test_image_name_glob_matches_exactly_what_is_image_relpath_accepts():
    patterns = _expand_alternation(IMAGE_NAME_GLOB)
    accepted = 0
    for name in NAMES:
        assert not is_hidden_name(name), name  # hidden names are the listing's job, not the glob's
        by_glob = any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        assert by_glob is is_image_relpath(f"Banana/{name}"), name
        accepted += by_glob
    assert accepted == 15


def test_bad_input_corpus_files_are_counted_and_labelled(tmp_path):
    """Walk the corpus as Airflow counts uploads; label each image as the Spark job does."""
    cases = make_bad_input_corpus(tmp_path)
    by_relpath = {case.relpath: case for case in cases}

    found = set()
    for folder, _, files in os.walk(tmp_path):
        for name in files:
            relpath = os.path.relpath(os.path.join(folder, name), tmp_path).replace(os.sep, "/")
            if is_image_relpath(relpath):
                found.add(relpath)
    assert found == {case.relpath for case in cases if case.expected != "ignored"}

    root_uri = tmp_path.as_uri()  # percent-encoded, as Spark reports paths
    for relpath in sorted(found):
        case = by_relpath[relpath]
        image_uri = (tmp_path / relpath).as_uri()
        assert "%" in image_uri or relpath.isascii()
        if case.reason_contains == "no label folder":
            with pytest.raises(NoLabelFolder, match=case.reason_contains):
                label_for(image_uri, root_uri)
            with pytest.raises(NoLabelFolder, match=case.reason_contains):
                label_for(image_uri, str(tmp_path))
        else:
            assert label_for(image_uri, root_uri) == case.label
            assert label_for(image_uri, str(tmp_path)) == case.label
