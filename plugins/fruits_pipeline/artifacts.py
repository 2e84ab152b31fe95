"""Content-addressed staging of the job code for EMR.

The code goes to ``<lake>/artifacts/<digest>/``, where the digest covers every staged byte:
a run uses exactly the code it staged, and staging the same code twice uploads nothing.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import s3_encryption
from fruits_pipeline.params import is_local_path
from fruits_pipeline.steps import FEATURIZE_SCRIPT, PCA_SCRIPT, REPROJECT_SCRIPT

JOBS_ZIP = "spark_jobs.zip"
BOOTSTRAP_SCRIPT = "bootstrap.sh"
JOB_REQUIREMENTS = "requirements-jobs.txt"
DIGEST_LENGTH = 16
# Zip entries carry a timestamp; a fixed one makes the archive depend on the code only.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def build_jobs_zip(repo_root: str | Path) -> bytes:
    """The ``spark_jobs`` package as a zip for ``--py-files``, byte-for-byte reproducible.

    Entries are stored uncompressed: deflate output may differ between zlib builds.
    """
    package = Path(repo_root) / "spark_jobs"
    sources = sorted(package.rglob("*.py"), key=lambda path: path.relative_to(package).as_posix())
    if not sources:
        raise FileNotFoundError(f"no Python file under {package}")
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for source in sources:
            entry = zipfile.ZipInfo(
                f"spark_jobs/{source.relative_to(package).as_posix()}", _ZIP_EPOCH
            )
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, source.read_bytes())
    return sink.getvalue()


def artifact_digest(files: dict[str, bytes]) -> str:
    """sha256 over names and contents, length-prefixed so that no two file sets collide."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode(), files[name]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()[:DIGEST_LENGTH]


def weights_artifact_name(weights: str) -> str | None:
    """Name under which local weights are staged; None for weights that need no staging."""
    return f"weights/{PurePosixPath(weights).name}" if is_local_path(weights) else None


def artifact_files(repo_root: str | Path, weights: str | None) -> dict[str, bytes]:
    """Everything an EMR run needs from this repository, by artifact name."""
    root = Path(repo_root)
    files = {
        JOBS_ZIP: build_jobs_zip(root),
        FEATURIZE_SCRIPT: (root / "spark_jobs" / FEATURIZE_SCRIPT).read_bytes(),
        PCA_SCRIPT: (root / "spark_jobs" / PCA_SCRIPT).read_bytes(),
        REPROJECT_SCRIPT: (root / "spark_jobs" / REPROJECT_SCRIPT).read_bytes(),
        BOOTSTRAP_SCRIPT: (Path(__file__).parent / "backends/emr" / BOOTSTRAP_SCRIPT).read_bytes(),
        JOB_REQUIREMENTS: (root / JOB_REQUIREMENTS).read_bytes(),
    }
    weights_name = weights_artifact_name(weights) if weights else None
    if weights_name is not None:
        files[weights_name] = Path(weights).read_bytes()
    return files


def stage_to_s3(
    s3_client: Any, lake: Lake, files: dict[str, bytes], *, kms_key_id: str | None = None
) -> str:
    """Upload ``files`` under ``lake.artifacts(digest)`` and return that prefix.

    Objects already there with the same size are skipped: the prefix is content-addressed, so
    only an interrupted upload can leave a different object behind.
    """
    prefix = lake.artifacts(artifact_digest(files))
    prefix_key = lake.s3_key(prefix) + "/"
    listing = s3_client.list_objects_v2(Bucket=lake.bucket, Prefix=prefix_key)
    existing = {item["Key"]: item["Size"] for item in listing.get("Contents", [])}
    encryption = s3_encryption(kms_key_id)
    for name in sorted(files):
        key = prefix_key + name
        if existing.get(key) != len(files[name]):
            s3_client.put_object(Bucket=lake.bucket, Key=key, Body=files[name], **encryption)
    return prefix
