"""Reading and writing lake files from Airflow tasks: a local folder or S3 through boto3.

S3 goes through the Airflow AWS connection (`S3Hook`), so credentials live in Airflow's
connection store, never in code. Only small files are written from here (markers); Parquet parts
are read one at a time into a temporary file, so memory does not grow with the partition.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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

    def delete(self, uri: str) -> None:
        Path(uri).unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    @contextmanager
    def local_copy(self, uri: str) -> Iterator[str]:
        yield uri


class S3LakeStorage:
    """Lake files on S3; writes are encrypted at rest (SSE-S3, or SSE-KMS with a key id)."""

    def __init__(self, lake: Lake, client: Any, *, kms_key_id: str | None = None):
        self.lake = lake
        self.client = client
        self.encryption = (
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
            if kms_key_id
            else {"ServerSideEncryption": "AES256"}
        )

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
