"""Reading and writing lake files from Airflow tasks: a local folder or S3 through boto3.

S3 goes through the Airflow AWS connection (`S3Hook`), so credentials live in Airflow's
connection store, never in code. Only small files are written from here (markers); Parquet parts
are read one at a time into a temporary file, so memory does not grow with the partition.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from fruits_pipeline.lake import Lake


class LakeStorage(Protocol):
    def list_files(self, uri: str) -> list[str]:
        """Paths of every file below `uri`, relative to it, with `/` separators."""

    def read_bytes(self, uri: str) -> bytes: ...

    def write_bytes(self, uri: str, data: bytes) -> None: ...

    def delete(self, uri: str) -> None:
        """Delete one file; no error when it does not exist."""

    def exists(self, uri: str) -> bool: ...

    def local_copy(self, uri: str) -> Any:
        """A context manager giving a local path holding the file's bytes."""

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """Create the file with `data` unless it exists, atomically; False when it existed."""

    def replace_folder(self, source: str, target: str) -> None:
        """Make `target` hold exactly what `source` holds, then remove `source`.

        Readers of `target` may find it empty for a moment, never a mix of the two."""

    def copy_folder(self, source: str, target: str) -> None:
        """Copy every file below `source` to the same place below `target`, bytes unchanged."""

    def delete_folder(self, uri: str) -> None:
        """Delete everything below `uri`; no error when there is nothing."""


def _checksum_of(path: Path) -> Path:
    """The checksum file Hadoop's local file system keeps beside a file it wrote."""
    return path.with_name(f".{path.name}.crc")


class LocalLakeStorage:
    def list_files(self, uri: str) -> list[str]:
        root = Path(uri)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def read_bytes(self, uri: str) -> bytes:
        return Path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        # Hadoop's checksum of a file Spark wrote no longer matches: a later Spark read of it
        # would fail (ChecksumException). Without one, Hadoop reads it unchecked.
        _checksum_of(path).unlink(missing_ok=True)

    def delete(self, uri: str) -> None:
        Path(uri).unlink(missing_ok=True)
        _checksum_of(Path(uri)).unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[str]:
        yield uri

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        # Written whole under a private name, then hard-linked: the link fails when the name
        # exists, and a reader never sees the file half written.
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(data)
        try:
            os.link(partial, path)
            return True
        except FileExistsError:
            return False
        finally:
            partial.unlink()

    def replace_folder(self, source: str, target: str) -> None:
        # Two renames: the old folder steps aside under a hidden name, the new one takes its
        # place. Each rename is atomic; between them the target is briefly absent.
        source_path, target_path = Path(source), Path(target)
        target_path.parent.mkdir(parents=True, exist_ok=True)
        trash = target_path.with_name(f".{target_path.name}.replaced-{uuid.uuid4().hex}")
        if target_path.exists():
            os.rename(target_path, trash)
        if source_path.exists():
            os.rename(source_path, target_path)
        shutil.rmtree(trash, ignore_errors=True)

    def copy_folder(self, source: str, target: str) -> None:
        if Path(source).is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)

    def delete_folder(self, uri: str) -> None:
        shutil.rmtree(uri, ignore_errors=True)


def s3_encryption(kms_key_id: str | None) -> dict[str, str]:
    """The server-side-encryption arguments of every S3 write: SSE-KMS with the key, or SSE-S3."""
    if kms_key_id:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
    return {"ServerSideEncryption": "AES256"}


class S3LakeStorage:
    """Lake files on S3; writes are encrypted at rest (SSE-S3, or SSE-KMS with a key id)."""

    def __init__(self, lake: Lake, client: Any, *, kms_key_id: str | None = None):
        self.lake = lake
        self.client = client
        self.encryption = s3_encryption(kms_key_id)

    def _key(self, uri: str) -> str:
        return self.lake.s3_key(uri)

    def list_files(self, uri: str) -> list[str]:
        prefix = self._key(uri).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        for page in paginator.paginate(Bucket=self.lake.bucket, Prefix=prefix):
            names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
        return sorted(name for name in names if name and not name.endswith("/"))

    def read_bytes(self, uri: str) -> bytes:
        return self.client.get_object(Bucket=self.lake.bucket, Key=self._key(uri))["Body"].read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        self.client.put_object(
            Bucket=self.lake.bucket, Key=self._key(uri), Body=data, **self.encryption
        )

    def delete(self, uri: str) -> None:
        self.client.delete_object(Bucket=self.lake.bucket, Key=self._key(uri))

    def exists(self, uri: str) -> bool:
        listing = self.client.list_objects_v2(
            Bucket=self.lake.bucket, Prefix=self._key(uri), MaxKeys=1
        )
        return listing.get("KeyCount", 0) > 0

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[str]:
        folder = tempfile.mkdtemp(prefix="fruits-lake-")
        try:
            path = os.path.join(folder, "part")
            self.client.download_file(self.lake.bucket, self._key(uri), path)
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        # S3's conditional write: the PUT fails with 412 when the key exists.
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.lake.bucket,
                Key=self._key(uri),
                Body=data,
                IfNoneMatch="*",
                **self.encryption,
            )
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise

    def replace_folder(self, source: str, target: str) -> None:
        # S3 has no rename: the old objects go first, so readers never see two runs' rows mixed;
        # then the new ones are copied in (server-side) and the staged ones removed.
        self.delete_folder(target)
        self.copy_folder(source, target)
        self.delete_folder(source)

    def copy_folder(self, source: str, target: str) -> None:
        source_prefix = self._key(source).rstrip("/") + "/"
        target_prefix = self._key(target).rstrip("/") + "/"
        for name in self.list_files(source):
            self.client.copy(
                {"Bucket": self.lake.bucket, "Key": source_prefix + name},
                self.lake.bucket,
                target_prefix + name,
                ExtraArgs=self.encryption,
            )

    def delete_folder(self, uri: str) -> None:
        prefix = self._key(uri).rstrip("/") + "/"
        keys = [prefix + name for name in self.list_files(uri)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a call
            self.client.delete_objects(
                Bucket=self.lake.bucket,
                Delete={"Objects": [{"Key": key} for key in keys[start : start + 1000]]},
            )


def lake_storage(
    lake: Lake,
    *,
    aws_conn_id: str = "aws_default",
    region: str | None = None,
    kms_key_id: str | None = None,
) -> LakeStorage:
    """The storage behind `lake`: S3 through the Airflow connection, or the local filesystem."""
    if not lake.is_s3:
        return LocalLakeStorage()
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id=aws_conn_id, region_name=region).get_conn()
    return S3LakeStorage(lake, client, kms_key_id=kms_key_id)
