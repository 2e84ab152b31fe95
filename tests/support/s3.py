"""A bucket of moto's S3, with fake credentials, for the tests that write to a lake on S3."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from moto import mock_aws


@contextmanager
def mocked_bucket(monkeypatch: pytest.MonkeyPatch, bucket: str, region: str) -> Iterator[Any]:
    """An S3 client of `region` in which `bucket` exists, while the block runs."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        client = boto3.client("s3", region_name=region)
        location = {"LocationConstraint": region}
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration=location)
        yield client
