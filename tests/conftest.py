"""Fixtures shared by the suite: local Spark, the shared real data, a hermetic model cache."""

from __future__ import annotations

import logging
import os
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
