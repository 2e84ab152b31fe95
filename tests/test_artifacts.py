import io
import os
import subprocess
import zipfile
from pathlib import Path

import boto3
import pytest

from fruits_pipeline.artifacts import (
    artifact_digest,
    artifact_files,
    build_jobs_zip,
    stage_to_s3,
)
from fruits_pipeline.lake import Lake
from tests.support.s3 import mocked_bucket

BOOTSTRAP = Path(__file__).parents[1] / "plugins/fruits_pipeline/backends/emr/bootstrap.sh"
REGION = "eu-west-3"
LAKE = Lake("s3://fruits-lake/prod")


@pytest.fixture
def repo(tmp_path):
    jobs = tmp_path / "spark_jobs"
    (jobs / "common").mkdir(parents=True)
    (jobs / "__init__.py").write_text("")
    (jobs / "featurize.py").write_text("print('featurize')\n")
    (jobs / "pca.py").write_text("print('pca')\n")
    (jobs / "reproject.py").write_text("print('reproject')\n")
    (jobs / "common" / "__init__.py").write_text("")
    (jobs / "common" / "io.py").write_text("X = 1\n")
    (tmp_path / "requirements-jobs.txt").write_text("numpy==2.4.6\n")
    return tmp_path


@pytest.fixture
def s3(monkeypatch):
    with mocked_bucket(monkeypatch, LAKE.bucket, REGION) as client:
        yield client


def count_puts(client) -> list[str]:
    """Keys of the PutObject calls made by ``client`` from now on."""
    keys: list[str] = []
    client.meta.events.register(
        "provide-client-params.s3.PutObject", lambda params, **_: keys.append(params["Key"])
    )
    return keys


def test_jobs_zip_holds_the_package_sorted(repo):
    archive = zipfile.ZipFile(io.BytesIO(build_jobs_zip(repo)))
    assert archive.namelist() == [
        "spark_jobs/__init__.py",
        "spark_jobs/common/__init__.py",
        "spark_jobs/common/io.py",
        "spark_jobs/featurize.py",
        "spark_jobs/pca.py",
        "spark_jobs/reproject.py",
    ]
    assert archive.read("spark_jobs/pca.py") == b"print('pca')\n"


def test_jobs_zip_depends_on_the_code_only(repo):
    first = build_jobs_zip(repo)
    os.utime(repo / "spark_jobs" / "pca.py", (1_000_000_000, 1_000_000_000))
    assert build_jobs_zip(repo) == first
    (repo / "spark_jobs" / "pca.py").write_text("print('pca v2')\n")
    assert build_jobs_zip(repo) != first


def test_jobs_zip_needs_code(tmp_path):
    (tmp_path / "spark_jobs").mkdir()
    with pytest.raises(FileNotFoundError, match="no Python file under"):
        build_jobs_zip(tmp_path)


def test_digest_is_16_hex_and_ignores_insertion_order():
    digest = artifact_digest({"a.py": b"1", "b.py": b"2"})
    assert len(digest) == 16
    assert int(digest, 16) >= 0
    assert artifact_digest({"b.py": b"2", "a.py": b"1"}) == digest


def test_digest_covers_names_and_contents():
    digests = {
        artifact_digest({"a.py": b"1"}),
        artifact_digest({"a.py": b"2"}),
        artifact_digest({"b.py": b"1"}),
        artifact_digest({"ab": b"c"}),
        artifact_digest({"a": b"bc"}),
    }
    assert len(digests) == 5


def test_artifact_files_without_local_weights(repo):
    files = artifact_files(repo, "imagenet")
    assert sorted(files) == [
        "bootstrap.sh",
        "featurize.py",
        "pca.py",
        "reproject.py",
        "requirements-jobs.txt",
        "spark_jobs.zip",
    ]
    assert files["featurize.py"] == b"print('featurize')\n"
    assert files["bootstrap.sh"] == BOOTSTRAP.read_bytes()
    assert files["requirements-jobs.txt"] == b"numpy==2.4.6\n"
    assert files["spark_jobs.zip"] == build_jobs_zip(repo)


def test_artifact_files_with_local_weights(repo, tmp_path):
    weights = tmp_path / "mobilenet_v2.h5"
    weights.write_bytes(b"\x89HDF")
    files = artifact_files(repo, str(weights))
    assert files["weights/mobilenet_v2.h5"] == b"\x89HDF"
    assert "weights/mobilenet_v2.h5" not in artifact_files(repo, None)


def test_staging_uploads_every_file_encrypted(repo, s3):
    files = artifact_files(repo, None)
    prefix = stage_to_s3(s3, LAKE, files)
    assert prefix == f"s3://fruits-lake/prod/artifacts/{artifact_digest(files)}"
    listed = s3.list_objects_v2(Bucket="fruits-lake", Prefix="prod/artifacts/")["Contents"]
    key_prefix = LAKE.s3_key(prefix)
    assert sorted(item["Key"] for item in listed) == [f"{key_prefix}/{n}" for n in sorted(files)]
    for name, content in files.items():
        head = s3.head_object(Bucket="fruits-lake", Key=f"{key_prefix}/{name}")
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentLength"] == len(content)


def test_staging_twice_uploads_nothing(repo, s3):
    files = artifact_files(repo, None)
    prefix = stage_to_s3(s3, LAKE, files)
    puts = count_puts(s3)
    assert stage_to_s3(s3, LAKE, files) == prefix
    assert puts == []


def test_staging_replaces_a_truncated_upload(repo, s3):
    files = artifact_files(repo, None)
    prefix = stage_to_s3(s3, LAKE, files)
    zip_key = f"{LAKE.s3_key(prefix)}/spark_jobs.zip"
    s3.put_object(Bucket="fruits-lake", Key=zip_key, Body=b"partial")
    puts = count_puts(s3)
    stage_to_s3(s3, LAKE, files)
    assert puts == [zip_key]
    body = s3.get_object(Bucket="fruits-lake", Key=zip_key)["Body"].read()
    assert body == files["spark_jobs.zip"]


def test_staging_with_a_kms_key(repo, s3):
    key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
    prefix = stage_to_s3(s3, LAKE, artifact_files(repo, None), kms_key_id=key_id)
    head = s3.head_object(Bucket="fruits-lake", Key=f"{LAKE.s3_key(prefix)}/pca.py")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def test_staging_needs_an_s3_lake(repo, s3):
    with pytest.raises(ValueError, match="is a local folder, not S3"):
        stage_to_s3(s3, Lake("/srv/lake"), artifact_files(repo, None))


def write_stub(folder: Path, name: str, body: str) -> None:
    stub = folder / name
    stub.write_text(f"#!/usr/bin/env bash\n{body}\n")
    stub.chmod(0o755)


def test_bootstrap_installs_the_staged_requirements(tmp_path):
    """Run bootstrap.sh with aws, sudo and python3.11 replaced by recording stubs."""
    calls = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_stub(bin_dir, "aws", f'echo "aws $*" >> {calls}; cp /dev/null "${{@: -1}}"')
    write_stub(bin_dir, "sudo", '"$@"')
    write_stub(bin_dir, "python3.11", f'echo "python3.11 $*" >> {calls}')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    prefix = "s3://fruits-lake/prod/artifacts/0123456789abcdef"
    subprocess.run(["bash", str(BOOTSTRAP), prefix], env=env, check=True)
    lines = calls.read_text().splitlines()
    copy, install = lines[-2].split(), lines[-1].split()
    assert copy[:4] == ["aws", "s3", "cp", f"{prefix}/requirements-jobs.txt"]
    assert install[:-1] == ["python3.11", "-m", "pip", "install", "--no-cache-dir", "-r"]
    assert install[-1] == copy[-1]
    assert "dnf" not in calls.read_text()


def test_bootstrap_needs_the_artifacts_prefix():
    result = subprocess.run(["bash", str(BOOTSTRAP)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "usage: bootstrap.sh <s3 artifacts prefix>" in result.stderr
