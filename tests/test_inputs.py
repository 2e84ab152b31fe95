"""Which files count as images and which label they carry, with names taken literally."""

import os

import pytest

from spark_jobs.inputs import (
    NoLabelFolder,
    is_hidden_name,
    is_image_name,
    is_image_relpath,
    label_for,
    list_inputs,
)
from tests.support.corpora import make_bad_input_corpus

ROOT = "file:/tmp/raw/dt=2026-01-02"
S3_ROOT = "s3://bucket/lake/raw/dt=D/"


@pytest.mark.parametrize(
    ("image_uri", "root", "label"),
    [
        (f"{ROOT}/Apple Braeburn/x.jpg", ROOT, "Apple Braeburn"),
        (f"{ROOT}/Pomme d'été/x.jpg", ROOT, "Pomme d'été"),
        (f'{ROOT}/Label "quoted" & more/q.jpg', ROOT, 'Label "quoted" & more'),
        # Names are never percent-decoded: a '%' in a name is a '%'.
        (f"{ROOT}/Apple%20Braeburn/x.jpg", ROOT, "Apple%20Braeburn"),
        (f"{ROOT}/100% Juice/x.png", ROOT, "100% Juice"),
        (f"{ROOT}/a#b?c/x.jpg", ROOT, "a#b?c"),
        (f"{ROOT}/C:D/x.jpg", ROOT, "C:D"),
        (f"{ROOT}/A+B/x.jpg", ROOT, "A+B"),  # '+' is not a space in a path
        ("file:///tmp/raw/dt=2026-01-02/Kiwi/x.jpg", ROOT, "Kiwi"),
        (f"{ROOT}/Kiwi/x.jpg", "file:///tmp/raw/dt=2026-01-02/", "Kiwi"),
        ("s3://bucket/lake/raw/dt=D/Banana/a.jpg", S3_ROOT, "Banana"),
        ("s3://bucket/lake/raw/dt=D/Banana/a.jpg", "s3://bucket/lake/raw/dt=D", "Banana"),
        ("s3a://bucket/lake/raw/dt=D/Banana/a.jpg", S3_ROOT, "Banana"),
        ("s3://bucket/lake/raw/dt=D/Lemon Meyer/a.JPG", S3_ROOT, "Lemon Meyer"),
        # A plain path root against file: paths.
        (f"{ROOT}/Apple Braeburn/x.jpg", "/tmp/raw/dt=2026-01-02", "Apple Braeburn"),
        (f"{ROOT}/Apple Braeburn/x.jpg", "/tmp/raw/dt=2026-01-02/", "Apple Braeburn"),
        ("/tmp/raw/dt=2026-01-02/Kiwi/x.jpg", "/tmp/raw/dt=2026-01-02", "Kiwi"),
        # Deeper folders: the label is the image's parent folder.
        (f"{ROOT}/Fruit/Apple Braeburn/x.jpg", ROOT, "Apple Braeburn"),
        (f"{ROOT}/a/b/c/Cherry/x.jpg", ROOT, "Cherry"),
        ("s3://bucket/lake/raw/dt=D/batch 1/Banana/a.jpg", S3_ROOT, "Banana"),
    ],
)
def test_label_for(image_uri, root, label):
    assert label_for(image_uri, root) == label


@pytest.mark.parametrize(
    ("image_uri", "root"),
    [
        (f"{ROOT}/x.jpg", ROOT),
        (f"{ROOT}/Pomme d'été.jpg", ROOT),
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
    assert image_uri in str(caught.value)


def test_outside_root_message_shows_the_path_as_it_is():
    with pytest.raises(NoLabelFolder) as caught:
        label_for("file:/elsewhere/Pomme d'été%20x/x.jpg", ROOT)
    assert str(caught.value) == (
        f"file:/elsewhere/Pomme d'été%20x/x.jpg is not below the input root {ROOT}"
    )


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


def test_image_names_are_the_three_extensions_in_any_case():
    accepted = 0
    for name in NAMES:
        assert not is_hidden_name(name), name
        assert is_image_name(name) is is_image_relpath(f"Banana/{name}"), name
        accepted += is_image_name(name)
    assert accepted == 15


def test_bad_input_corpus_files_are_counted_and_labelled(tmp_path):
    """List the corpus as the job and Airflow do; label each image; record the orphan."""
    cases = make_bad_input_corpus(tmp_path)
    by_relpath = {case.relpath: case for case in cases}

    found = set()
    for folder, _, files in os.walk(tmp_path):
        for name in files:
            relpath = os.path.relpath(os.path.join(folder, name), tmp_path).replace(os.sep, "/")
            if is_image_relpath(relpath):
                found.add(relpath)
    assert found == {case.relpath for case in cases if case.expected != "ignored"}

    listed = {entry.relpath: entry for entry in list_inputs(str(tmp_path))}
    assert set(listed) == found
    for relpath, entry in listed.items():
        case = by_relpath[relpath]
        assert entry.path == f"file:{tmp_path}/{relpath}"
        assert entry.label == case.label
        if case.reason_contains == "no label folder":
            assert "no label folder" in entry.error
            with pytest.raises(NoLabelFolder, match=case.reason_contains):
                label_for(entry.path, str(tmp_path))
        else:
            # Decided from the bytes, by the workers: not an error at listing time.
            assert entry.error is None
            assert label_for(entry.path, tmp_path.as_uri()) == case.label
            assert label_for(entry.path, str(tmp_path)) == case.label
