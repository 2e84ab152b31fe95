"""Fixtures shared by the suite: local Spark, the shared real data, a hermetic model cache."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRUITS_SHARED", REPO.parent / "shared"))
SHARED_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"
SHARED_SAMPLE = SHARED / "data" / "fruits360-sample"

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# py4j logs at INFO when its connections are garbage-collected at exit, after pytest closed the
# streams: a traceback of "Logging error" at the end of every run, about nothing.
logging.getLogger("py4j").setLevel(logging.WARNING)


def require_shared() -> None:
    """Skip, saying why, when the real photos and weights of ../shared are not beside the repo."""
    if not (SHARED_WEIGHTS.is_file() and SHARED_SAMPLE.is_dir()):
        pytest.skip(
            f"needs the real Fruits-360 photos and ImageNet weights of ../shared ({SHARED}); "
            "absent here"
        )


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
