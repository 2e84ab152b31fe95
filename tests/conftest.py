"""Fixtures shared by the suite: local Spark, a hermetic model cache, lakes, the Airflow metadata
DB and the EMR world. Helpers live in `tests/support/`."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

# The Airflow metadata DB (one per module): defined with the harness, registered here for all.
from tests.support.dag_harness import airflow_db  # noqa: F401
from tests.support.emr_world import Pipeline, emr_pipeline

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# py4j logs at INFO when its connections are garbage-collected at exit, after pytest closed the
# streams: a traceback of "Logging error" at the end of every run, about nothing.
logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """TFLite conversions of this run only, shared by the tests and the jobs they start."""
    cache = tmp_path_factory.mktemp("model-cache")
    os.environ["FRUITS_MODEL_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def spark():
    from spark_jobs.session import spark_session

    session = spark_session("fruits-tests", "local[2]")
    yield session
    session.stop()


_CONDITIONAL_PUT = threading.Lock()


@pytest.fixture(params=["local", "s3"])
def lake_and_storage(request, tmp_path, monkeypatch):
    """A lake and its storage: a local folder, or a bucket of moto's S3."""
    if request.param == "local":
        from fruits_pipeline.lake import Lake
        from fruits_pipeline.lake_io import LocalLakeStorage

        yield Lake(str(tmp_path / "lake")), LocalLakeStorage()
        return
    import boto3
    from moto import mock_aws
    from moto.s3.responses import S3Response

    from fruits_pipeline.lake import Lake
    from fruits_pipeline.lake_io import S3LakeStorage

    # moto checks If-None-Match, then stores: threads can interleave the two and both win.
    # S3 makes a conditional PUT atomic; so does this lock.
    put_object = S3Response.put_object

    def atomic_put_object(self):
        with _CONDITIONAL_PUT:
            return put_object(self)

    monkeypatch.setattr(S3Response, "put_object", atomic_put_object)
    with mock_aws():
        client = boto3.client("s3", region_name="eu-west-3")
        client.create_bucket(
            Bucket="fruits-lake-test",
            CreateBucketConfiguration={"LocationConstraint": "eu-west-3"},
        )
        lake = Lake("s3://fruits-lake-test/prod")
        yield lake, S3LakeStorage(lake, client)


@pytest.fixture
def pipeline(airflow_db, monkeypatch) -> Iterator[Pipeline]:  # noqa: F811
    """The EMR world of one test (`tests/support/emr_world.py`)."""
    with emr_pipeline(monkeypatch) as world:
        yield world
