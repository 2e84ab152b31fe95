from datetime import date, datetime

import pytest

from fruits_pipeline.lake import Lake

D = date(2026, 1, 2)


def test_s3_lake_paths():
    lake = Lake("s3://fruits-lake/prod")
    assert lake.raw(D) == "s3://fruits-lake/prod/raw/dt=2026-01-02"
    assert lake.features(D) == "s3://fruits-lake/prod/features/dt=2026-01-02"
    assert lake.errors(D) == "s3://fruits-lake/prod/errors/dt=2026-01-02"
    assert lake.reduced(D) == "s3://fruits-lake/prod/reduced/dt=2026-01-02"
    assert lake.basis("basis-20260102T020000Z-0123abcd") == (
        "s3://fruits-lake/prod/models/pca/basis-20260102T020000Z-0123abcd"
    )
    assert lake.current_basis() == "s3://fruits-lake/prod/models/current-basis"
    assert lake.report(D) == "s3://fruits-lake/prod/reports/dt=2026-01-02"
    assert lake.manifest(D) == "s3://fruits-lake/prod/reports/dt=2026-01-02/manifest.json"
    assert lake.success_marker(D) == "s3://fruits-lake/prod/reports/dt=2026-01-02/_SUCCESS"
    assert lake.artifacts("0123456789abcdef") == "s3://fruits-lake/prod/artifacts/0123456789abcdef"
    assert lake.emr_logs() == "s3://fruits-lake/prod/logs/emr/"


def test_local_lake_paths():
    lake = Lake("/srv/lake")
    assert lake.raw(D) == "/srv/lake/raw/dt=2026-01-02"
    assert lake.basis("basis-20260102T020000Z-0123abcd") == (
        "/srv/lake/models/pca/basis-20260102T020000Z-0123abcd"
    )
    for bad in ("../x", "dt=2026-01-02", "basis-x"):
        with pytest.raises(ValueError, match="not a basis id"):
            lake.basis(bad)
    assert lake.success_marker(D) == "/srv/lake/reports/dt=2026-01-02/_SUCCESS"
    assert not lake.is_s3


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("s3://fruits-lake/prod/", "s3://fruits-lake/prod"),
        ("s3://fruits-lake/", "s3://fruits-lake"),
        ("s3a://fruits-lake/prod//", "s3a://fruits-lake/prod"),
        ("/srv/lake/", "/srv/lake"),
    ],
)
def test_trailing_slashes_are_dropped(given, root):
    assert Lake(given).root == root
    assert Lake(given) == Lake(root)


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("", "location is empty"),
        ("lake", "'lake' is neither an absolute local path nor an s3:// or s3a:// URI"),
        ("file:///srv/lake", "neither an absolute local path"),
        ("s3://", "'s3://' does not name a valid S3 bucket"),
        ("s3://Fruits_Lake/prod", "does not name a valid S3 bucket (got 'Fruits_Lake')"),
        ("s3://fruits-lake/prod/../other", "'s3://fruits-lake/prod/../other' has an empty, '.'"),
        ("/srv/../etc", "'/srv/../etc' has an empty, '.' or '..' path segment"),
        ("/srv//lake", "'/srv//lake' has an empty"),
        ("/srv/./lake", "'/srv/./lake' has an empty"),
        ("/", "cannot be the filesystem root"),
    ],
)
def test_invalid_roots_are_rejected(root, message):
    with pytest.raises(ValueError) as raised:
        Lake(root)
    assert message in str(raised.value)


def test_bucket_and_key_prefix():
    assert Lake("s3://fruits-lake/prod/v2").bucket == "fruits-lake"
    assert Lake("s3://fruits-lake/prod/v2").key_prefix == "prod/v2"
    assert Lake("s3a://fruits-lake").key_prefix == ""
    with pytest.raises(ValueError, match="is a local folder, not S3"):
        _ = Lake("/srv/lake").bucket


@pytest.mark.parametrize(
    ("uri", "within"),
    [
        ("s3://fruits-lake/prod/models/w.h5", True),
        ("s3://fruits-lake/prod", True),
        ("s3a://fruits-lake/prod/raw/", True),
        ("s3://fruits-lake/prod-old/w.h5", False),
        ("s3://fruits-lake/w.h5", False),
        ("s3://other-bucket/prod/w.h5", False),
        ("s3://fruits-lake/prod/../w.h5", False),
        ("/prod/w.h5", False),
        ("prod/w.h5", False),
        ("", False),
    ],
)
def test_is_within_s3_lake(uri, within):
    assert Lake("s3://fruits-lake/prod").is_within(uri) is within


def test_is_within_local_lake():
    lake = Lake("/srv/lake")
    assert lake.is_within("/srv/lake/models/w.h5")
    assert not lake.is_within("/srv/lake2/w.h5")
    assert not lake.is_within("/srv/lake/../w.h5")
    assert not lake.is_within("s3://srv/lake/w.h5")


def test_s3_key():
    lake = Lake("s3://fruits-lake/prod")
    assert lake.s3_key(lake.manifest(D)) == "prod/reports/dt=2026-01-02/manifest.json"
    with pytest.raises(ValueError, match="'s3://other-bucket/x' is outside the lake"):
        lake.s3_key("s3://other-bucket/x")


def test_partition_must_be_a_date_not_a_datetime():
    with pytest.raises(TypeError, match="partition must be a datetime.date"):
        Lake("/srv/lake").raw(datetime(2026, 1, 2, 10, 30))


@pytest.mark.parametrize("digest", ["", "../x", "ABCDEF", "abc/def"])
def test_artifact_digest_must_be_lower_hex(digest):
    with pytest.raises(ValueError, match=f"got {digest!r}"):
        Lake("/srv/lake").artifacts(digest)
