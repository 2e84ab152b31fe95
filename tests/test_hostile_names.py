"""Every legal file name works; symbolic links are never followed (issue #17).

The listing of `spark_jobs.inputs` and the reading of `spark_jobs.reading` on the hostile-name
and link corpora, the count Airflow makes with it, the real featurize job on local Spark, and S3
keys (moto) through pyarrow.fs.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fruits_pipeline import validation
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage, S3LakeStorage
from spark_jobs import inputs, reading
from tests.support.corpora import NameCase, make_hostile_name_corpus, make_link_corpus

D = date(2026, 3, 4)
SYMLINK = "symbolic link, not followed"


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[Lake, list[NameCase], Path]:
    """One day of uploads: the hostile names and the links, with `outside` beside the lake."""
    base = tmp_path_factory.mktemp("hostile")
    lake = Lake(str(base / "lake"))
    raw = Path(lake.raw(D))
    outside = base / "outside"
    cases = make_hostile_name_corpus(raw) + make_link_corpus(raw, outside)
    return lake, cases, outside


def expected_outcomes(lake: Lake, cases: list[NameCase]) -> dict[str, tuple]:
    """{path as the outputs show it: (outcome, label, reason part)} of every accounted file."""
    prefix = f"file:{lake.raw(D)}/"
    return {
        prefix + case.shown: (case.expected, case.label, case.reason_contains)
        for case in cases
        if case.expected != "ignored"
    }


# --- the listing, without Spark ----------------------------------------------------------------


def test_corpus_has_what_the_issue_names(lake):
    _, cases, _ = lake
    processed = " ".join(c.relpath for c in cases if c.expected == "processed")
    for part in ("#", "?", "%20", "%", ":", "\\", "\n", "\t", "[", "{", "*", "🍎", "水", " -"):
        assert part in processed, part
    assert any(len(c.relpath.rsplit("/", 1)[-1].encode()) == 255 for c in cases)
    errors = [c for c in cases if c.expected == "error"]
    assert sum(c.reason_contains == SYMLINK for c in errors) == 9
    assert sum("utf-8" in c.reason_contains for c in errors) == 3


def test_listing_classifies_every_name_exactly(lake):
    lake_, cases, _ = lake
    listed = inputs.list_inputs(lake_.raw(D))
    got = {
        entry.path: ("error" if entry.error else "processed", entry.label, entry.error)
        for entry in listed
    }
    expected = expected_outcomes(lake_, cases)
    assert set(got) == set(expected)
    for path, (outcome, label, reason) in expected.items():
        assert got[path][:2] == (outcome, label), path
        if reason is not None:
            assert reason in got[path][2].lower(), (path, got[path])
    assert len(listed) == len(expected)


def test_airflow_count_is_the_listing(lake):
    lake_, cases, _ = lake
    found = validation.count_images(LocalLakeStorage(), lake_, D)
    assert found == len(expected_outcomes(lake_, cases))
    assert validation.count_images(LocalLakeStorage(), lake_, date(2026, 3, 5)) == 0


def test_undecodable_names_are_errors_with_readable_escaped_names(lake):
    lake_, _, _ = lake
    by_path = {e.path: e for e in inputs.list_inputs(lake_.raw(D))}
    root = f"file:{lake_.raw(D)}"
    file_entry = by_path[f"{root}/Kiwi/\\xff\\xfe.jpg"]
    assert file_entry.label == "Kiwi"
    assert file_entry.error.startswith("file name is not valid UTF-8")
    folder_entry = by_path[f"{root}/Bad \\xe9 label/ok.jpg"]
    assert folder_entry.label == "Bad \\xe9 label"
    assert folder_entry.error.startswith("folder name is not valid UTF-8")
    for entry in by_path.values():  # every shown string can be written to Parquet
        entry.path.encode("utf-8")
        (entry.label or "").encode("utf-8")


def test_reader_reads_exact_bytes_under_every_hostile_name(lake):
    lake_, cases, _ = lake
    read = reading.file_reader(lake_.raw(D))
    raw = Path(lake_.raw(D))
    for case in cases:
        if case.expected == "processed":
            assert read(case.relpath) == (raw / case.relpath).read_bytes(), case.relpath


def test_reader_never_follows_a_link_even_one_made_after_the_listing(tmp_path):
    root, outside = tmp_path / "raw", tmp_path / "outside"
    make_link_corpus(root, outside)
    listed = {e.relpath: e for e in inputs.list_inputs(str(root))}
    assert listed["Linked/real.jpg"].error is None
    read = reading.file_reader(str(root))
    for relpath in ("Linked/evil.jpg", "Linked/passwd.jpg", "Linked/loop.jpg",
                    "Linked again/real.jpg", "Linked/up/Linked/real.jpg",
                    "Folder link/inside.jpg"):  # fmt: skip
        with pytest.raises(reading.UnreadableFile, match=f"^{SYMLINK}$"):
            read(relpath)
    with pytest.raises(reading.UnreadableFile, match="^not a regular file$"):
        read("Linked/pipe.jpg")  # never blocks on a fifo
    # Swapped for a link between the listing and the read: refused, the target not read.
    os.replace(root / "Linked/real.jpg", tmp_path / "moved.jpg")
    (root / "Linked/real.jpg").symlink_to(outside / "secret.jpg")
    with pytest.raises(reading.UnreadableFile, match=f"^{SYMLINK}$"):
        read("Linked/real.jpg")
    (root / "Labelled").mkdir()
    (root / "Labelled/x.jpg").write_bytes(b"x")
    assert read("Labelled/x.jpg") == b"x"
    os.rename(root / "Labelled", tmp_path / "away")
    (root / "Labelled").symlink_to(outside / "folder")
    with pytest.raises(reading.UnreadableFile, match=f"^{SYMLINK}$"):
        read("Labelled/inside.jpg")


def test_unlistable_folder_is_one_error_row(tmp_path, monkeypatch):
    locked = tmp_path / "raw" / "Locked"
    locked.mkdir(parents=True)
    (locked / "x.jpg").write_bytes(b"x")
    scandir = os.scandir

    def refusing(path):  # as chmod 000 would, for a user other than root
        if os.fsdecode(path).endswith("Locked"):
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    (entry,) = inputs.list_inputs(str(tmp_path / "raw"))
    assert (entry.relpath, entry.label) == ("Locked", None)
    assert entry.error == "cannot list folder: Permission denied"


@pytest.mark.parametrize(
    ("given", "uri", "local"),
    [
        ("/tmp/raw/dt=D", "file:/tmp/raw/dt=D", "/tmp/raw/dt=D"),
        ("/tmp/raw/dt=D/", "file:/tmp/raw/dt=D", "/tmp/raw/dt=D"),
        ("file:/tmp/a%20b#c?d", "file:/tmp/a%20b#c?d", "/tmp/a%20b#c?d"),  # never decoded
        ("file:///tmp/x", "file:/tmp/x", "/tmp/x"),
        ("file://localhost/tmp/x", "file:/tmp/x", "/tmp/x"),
        ("/tmp/a:b", "file:/tmp/a:b", "/tmp/a:b"),
    ],
)
def test_local_roots_are_taken_literally(given, uri, local):
    root = inputs.InputRoot.parse(given)
    assert (root.uri, root.local, root.s3) == (uri, local, None)


def test_relative_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert inputs.InputRoot.parse("raw:1/x").local == str(tmp_path / "raw:1" / "x")


@pytest.mark.parametrize(
    ("given", "uri", "s3"),
    [
        ("s3://bucket/lake/raw/dt=D/", "s3://bucket/lake/raw/dt=D", "bucket/lake/raw/dt=D"),
        ("s3a://fruits-lake/lake/raw", "s3a://fruits-lake/lake/raw", "fruits-lake/lake/raw"),
    ],
)
def test_s3_roots(given, uri, s3):
    root = inputs.InputRoot.parse(given)
    assert (root.uri, root.s3, root.local) == (uri, s3, None)


@pytest.mark.parametrize("given", ["hdfs://nn/x", "file://otherhost/x", "s3://"])
def test_other_roots_are_refused(given):
    with pytest.raises(ValueError, match="--input"):
        inputs.InputRoot.parse(given)


def test_missing_root_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="--input .*nowhere"):
        inputs.list_inputs(str(tmp_path / "nowhere"))


# --- S3 keys through pyarrow.fs (moto) ---------------------------------------------------------

S3_KEYS = {
    # key below the root: (outcome, label); the body of each object is its key.
    "Kiwi/a#b.jpg": ("processed", "Kiwi"),
    "Kiwi/q?x.jpg": ("processed", "Kiwi"),
    "Kiwi/percent%20x.jpg": ("processed", "Kiwi"),
    "Kiwi/%41.jpg": ("processed", "Kiwi"),
    "Kiwi/a%2Fb.jpg": ("processed", "Kiwi"),
    "Kiwi/a:b.jpg": ("processed", "Kiwi"),
    "Kiwi/plus+x.jpg": ("processed", "Kiwi"),
    "Kiwi/back\\slash.jpg": ("processed", "Kiwi"),
    "Kiwi/tab\t.jpg": ("processed", "Kiwi"),
    "Kiwi/*[x]{a,b}?.jpg": ("processed", "Kiwi"),
    "Kiwi/-dash.PNG": ("processed", "Kiwi"),
    "100%20 Juice/ x .jpg": ("processed", "100%20 Juice"),
    "Ünïcødé 🍎 水果/é.jpeg": ("processed", "Ünïcødé 🍎 水果"),
    "C:D/x.jpg": ("processed", "C:D"),
    "a#b?c/deep%/x.jpg": ("processed", "deep%"),
    "Kiwi/" + "L" * 251 + ".jpg": ("processed", "Kiwi"),
    "#orphan?.jpg": ("error", None),  # no label folder
    "Kiwi/a#b.txt": ("ignored", None),
    "Kiwi/.a:b.jpg.crc": ("ignored", None),
    "_temporary/0/Kiwi/x.jpg": ("ignored", None),
    "Kiwi/./dot.jpg": ("ignored", None),  # '.' segments are hidden names
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with the keys above; yields (boto3 client, pyarrow options)."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        client = boto3.client(
            "s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1", **credentials
        )
        client.create_bucket(Bucket="fruits-lake")
        for key in S3_KEYS:
            full = f"lake/raw/dt={D.isoformat()}/{key}"
            client.put_object(Bucket="fruits-lake", Key=full, Body=key.encode())
        # A console "folder": a 0-byte key ending in '/', which is no file.
        client.put_object(Bucket="fruits-lake", Key=f"lake/raw/dt={D.isoformat()}/Empty/", Body=b"")
        options = {
            "endpoint_override": f"{host}:{port}",
            "scheme": "http",
            "region": "us-east-1",
            "access_key": "testing",
            "secret_key": "testing",  # pragma: allowlist secret
        }
        yield client, options
    finally:
        server.stop()


def test_s3_listing_agrees_with_airflow_and_reads_exact_keys(s3):
    client, options = s3
    lake = Lake("s3a://fruits-lake/lake")
    root = lake.raw(D)
    listed = inputs.list_inputs(root, options)
    expected = {
        f"{root}/{key}": (outcome, label)
        for key, (outcome, label) in S3_KEYS.items()
        if outcome != "ignored"
    }
    got = {e.path: ("error" if e.error else "processed", e.label) for e in listed}
    assert got == expected
    assert validation.count_images(S3LakeStorage(lake, client), lake, D) == len(listed)
    read = reading.file_reader(root, options)
    for entry in listed:
        if entry.error is None:
            assert read(entry.relpath) == entry.relpath.encode(), entry.relpath
    with pytest.raises(reading.UnreadableFile, match="cannot read object"):
        read("Kiwi/missing.jpg")
    with pytest.raises(FileNotFoundError, match="--input"):
        inputs.list_inputs(lake.raw(date(2026, 3, 5)), options)


class _HadoopConf:
    def __init__(self, values: dict):
        self.values = values

    def get(self, name):
        return self.values.get(name)


class _FakeSpark:
    def __init__(self, values: dict):
        conf = _HadoopConf(values)
        jsc = type("Jsc", (), {"hadoopConfiguration": lambda self: conf})()
        self.sparkContext = type("Sc", (), {"_jsc": jsc})()


@pytest.mark.parametrize(
    ("root", "conf", "options"),
    [
        ("s3://b/lake/raw", {"fs.s3a.endpoint": "http://minio:9000"}, None),
        ("s3a://b/lake/raw", {}, None),
        (
            "s3a://b/lake/raw",
            {
                "fs.s3a.endpoint": "http://minio:9000",
                "fs.s3a.endpoint.region": "us-east-1",
                "fs.s3a.path.style.access": "true",
                "fs.s3a.connection.ssl.enabled": "false",
            },
            {"endpoint_override": "minio:9000", "scheme": "http", "region": "us-east-1"},
        ),
        (
            "s3a://b/lake/raw",
            {"fs.s3a.endpoint": "s3.eu-west-3.amazonaws.com"},
            {
                "endpoint_override": "s3.eu-west-3.amazonaws.com",
                "scheme": "https",
                "force_virtual_addressing": True,
            },
        ),
    ],
)
def test_s3a_settings_become_pyarrow_options(root, conf, options):
    from spark_jobs import featurize

    assert featurize.s3_options(_FakeSpark(conf), inputs.InputRoot.parse(root)) == options


# --- the real featurize job --------------------------------------------------------------------


@pytest.fixture(scope="module")
def featurized(spark, lake, tmp_path_factory):
    from spark_jobs import featurize

    lake_, _, _ = lake
    args = featurize.parse_args(
        ["--input", lake_.raw(D), "--output", lake_.features(D), "--errors", lake_.errors(D),
         "--weights", "random", "--batch-size", "8"]
    )  # fmt: skip
    manifest = featurize.run(spark, args)
    features = pq.read_table(lake_.features(D)).to_pandas()
    errors = pq.read_table(lake_.errors(D)).to_pandas()
    return manifest, features, errors


@pytest.mark.slow
def test_job_featurizes_every_hostile_name_under_its_exact_label(lake, featurized):
    lake_, cases, _ = lake
    _, features, _ = featurized
    expected = {
        path: label
        for path, (outcome, label, _) in expected_outcomes(lake_, cases).items()
        if outcome == "processed"
    }
    assert dict(zip(features["path"], features["label"], strict=True)) == expected
    assert any(p.endswith("/a:b.jpg") for p in features["path"])
    assert any("/C:D/" in p for p in features["path"])
    assert {len(v) for v in features["features"]} == {1280}


@pytest.mark.slow
def test_job_records_every_link_and_undecodable_name_as_one_error(lake, featurized):
    lake_, cases, outside = lake
    _, features, errors = featurized
    expected = {
        path: (label, reason)
        for path, (outcome, label, reason) in expected_outcomes(lake_, cases).items()
        if outcome == "error"
    }
    assert sorted(errors["path"]) == sorted(expected)
    for path, label, error in zip(errors["path"], errors["label"], errors["error"], strict=True):
        assert label == expected[path][0], path
        assert expected[path][1] in error.lower(), (path, error)
    links = errors[errors["error"] == SYMLINK]
    assert len(links) == 9
    # Nothing outside the input was featurized, nor reached through a link.
    prefix = f"file:{lake_.raw(D)}/"
    assert all(p.startswith(prefix) for p in [*features["path"], *errors["path"]])
    assert not any(str(outside) in p or "secret" in p or "inside.jpg" in p
                   for p in features["path"])  # fmt: skip


@pytest.mark.slow
def test_job_counts_agree_with_airflow(lake, featurized):
    lake_, _, _ = lake
    manifest, features, errors = featurized
    found = validation.count_images(LocalLakeStorage(), lake_, D)
    assert found == manifest["images_found"] == len(features) + len(errors)
    assert (manifest["featurized"], manifest["errors"]) == (len(features), len(errors))


@pytest.mark.slow
def test_colon_in_a_name_featurizes(spark, tmp_path):
    """Hadoop's checksum file system failed the whole step on `a:b.jpg` (URISyntaxException)."""
    from devtools.samples import make_synthetic_fruits
    from spark_jobs import featurize

    root = tmp_path / "raw"
    make_synthetic_fruits(root, n_classes=1, per_class=1, size=64)
    (label,) = [p for p in root.iterdir()]
    (label / "a:b.jpg").write_bytes(next(label.iterdir()).read_bytes())
    args = featurize.parse_args(
        ["--input", str(root), "--output", str(tmp_path / "f"), "--errors", str(tmp_path / "e"),
         "--weights", "random"]
    )  # fmt: skip
    manifest = featurize.run(spark, args)
    assert (manifest["featurized"], manifest["errors"]) == (2, 0)
    paths = set(pq.read_table(tmp_path / "f").column("path").to_pylist())
    assert f"file:{label}/a:b.jpg" in paths


@pytest.mark.slow
def test_a_day_of_links_only_writes_empty_features_and_the_errors(spark, tmp_path):
    from spark_jobs import featurize

    lake = Lake(str(tmp_path / "lake"))
    raw = Path(lake.raw(D))
    (raw / "Kiwi").mkdir(parents=True)
    (tmp_path / "target.jpg").write_bytes(b"not read")
    (raw / "Kiwi" / "link.jpg").symlink_to(tmp_path / "target.jpg")
    (raw / "Kiwi" / ".hidden.jpg").write_bytes(b"")
    args = featurize.parse_args(
        ["--input", lake.raw(D), "--output", lake.features(D), "--errors", lake.errors(D),
         "--weights", "random"]
    )  # fmt: skip
    manifest = featurize.run(spark, args)
    assert (manifest["images_found"], manifest["featurized"], manifest["errors"]) == (1, 0, 1)
    assert validation.count_images(LocalLakeStorage(), lake, D) == 1
    features = pq.read_table(lake.features(D))
    assert features.num_rows == 0 and features.column_names == ["path", "label", "features"]
    assert pq.read_table(lake.errors(D)).to_pylist() == [
        {"path": f"file:{raw}/Kiwi/link.jpg", "label": "Kiwi", "error": SYMLINK}
    ]
