import math
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from airflow.sdk.definitions.param import ParamValidationError

from fruits_pipeline.lake import Lake
from fruits_pipeline.params import (
    RunParams,
    dag_params,
    partition_date_from_context,
    validate_params,
)

LAKE = Lake("s3://fruits-lake/prod")


def test_defaults():
    assert validate_params({}, LAKE) == RunParams(
        partition_date=None, variance=0.95, k=None, max_error_ratio=0.05, weights="imagenet"
    )


def test_values_from_the_trigger_form():
    raw = {
        "partition_date": "2026-01-02",
        "variance": 0.9,
        "k": None,
        "max_error_ratio": 0.1,
        "weights": "random",
    }
    assert validate_params(raw, LAKE) == RunParams(
        partition_date=date(2026, 1, 2),
        variance=0.9,
        k=None,
        max_error_ratio=0.1,
        weights="random",
    )


def test_null_and_empty_values_take_their_default():
    raw = {"partition_date": "", "variance": None, "max_error_ratio": None, "weights": ""}
    assert validate_params(raw, LAKE) == RunParams(partition_date=None)


def test_k_takes_precedence_over_variance():
    params = validate_params({"variance": 0.95, "k": 50}, LAKE)
    assert (params.variance, params.k) == (None, 50)


def test_boundaries_are_accepted():
    params = validate_params({"variance": 1, "k": None, "max_error_ratio": 0}, LAKE)
    assert (params.variance, params.max_error_ratio) == (1.0, 0.0)
    assert validate_params({"k": 1280, "max_error_ratio": 1}, LAKE).k == 1280


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-02-30", "partition_date '2026-02-30' is not a calendar date"),
        ("26-1-1", "partition_date must be a date written YYYY-MM-DD, got '26-1-1'"),
        ("2026-01-01T00:00", "got '2026-01-01T00:00'"),
        ("20260101", "got '20260101'"),
        ("2026/01/01", "got '2026/01/01'"),
        ("../2026-01-01", "got '../2026-01-01'"),
        (20260101, "got 20260101"),
    ],
)
def test_bad_partition_date(value, message):
    with pytest.raises(ValueError) as raised:
        validate_params({"partition_date": value}, LAKE)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"variance": 0}, "variance must be in (0, 1], got 0.0"),
        ({"variance": 1.01}, "variance must be in (0, 1], got 1.01"),
        ({"variance": math.nan}, "variance must be in (0, 1], got nan"),
        ({"variance": "0.9"}, "variance must be a number, got '0.9'"),
        ({"variance": True}, "variance must be a number, got True"),
        ({"k": 0}, "k must be an integer from 1 to 1280, got 0"),
        ({"k": 1281}, "k must be an integer from 1 to 1280, got 1281"),
        ({"k": 2.0}, "k must be an integer from 1 to 1280, got 2.0"),
        ({"k": True}, "k must be an integer from 1 to 1280, got True"),
        ({"max_error_ratio": -0.01}, "max_error_ratio must be in [0, 1], got -0.01"),
        ({"max_error_ratio": 1.5}, "max_error_ratio must be in [0, 1], got 1.5"),
        ({"varience": 0.9}, "unknown params: ['varience']"),
    ],
)
def test_bad_numbers_and_unknown_params(raw, message):
    with pytest.raises(ValueError) as raised:
        validate_params(raw, LAKE)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "weights",
    ["imagenet", "random", "{tmp}/weights/mobilenet_v2.h5", "s3://fruits-lake/prod/models/w.h5"],
)
def test_accepted_weights(weights, tmp_path):
    weights = weights.format(tmp=tmp_path)
    if weights.startswith("/"):  # a local weights file must exist on the worker
        Path(weights).parent.mkdir()
        Path(weights).write_bytes(b"\x89HDF")
    assert validate_params({"weights": weights}, LAKE).weights == weights


def test_a_local_weights_file_that_does_not_exist_is_refused_by_name(tmp_path):
    missing = str(tmp_path / "nonexistent.h5")
    with pytest.raises(ValueError) as raised:
        validate_params({"weights": missing}, LAKE)
    assert str(raised.value) == f"the weights file {missing!r} does not exist"


def test_a_local_weights_path_that_is_a_folder_is_refused_by_name(tmp_path):
    folder = tmp_path / "w.h5"
    folder.mkdir()
    with pytest.raises(ValueError) as raised:
        validate_params({"weights": str(folder)}, LAKE)
    assert str(raised.value) == f"the weights path {str(folder)!r} is not a file"


def test_the_default_weights_file_must_exist_too(tmp_path):
    missing = str(tmp_path / "w.h5")
    with pytest.raises(ValueError, match="does not exist"):
        validate_params({}, LAKE, default_weights=missing)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("s3://other-bucket/w.h5", "weights URI 's3://other-bucket/w.h5' is outside the lake"),
        ("s3://fruits-lake/prod-old/w.h5", "is outside the lake 's3://fruits-lake/prod'"),
        ("s3://fruits-lake/prod/../w.h5", "must not contain a '..' segment"),
        ("/opt/../etc/passwd", "must not contain a '..' segment, got '/opt/../etc/passwd'"),
        ("weights/w.h5", "an absolute path or an s3:// URI inside the lake, got 'weights/w.h5'"),
        ("https://example.org/w.h5", "got 'https://example.org/w.h5'"),
        ("ImageNet", "must be one of imagenet, random"),
        (42, "weights must be a string, got 42"),
    ],
)
def test_rejected_weights(weights, message):
    with pytest.raises(ValueError) as raised:
        validate_params({"weights": weights}, LAKE)
    assert message in str(raised.value)


def test_s3_weights_are_rejected_for_a_local_lake():
    with pytest.raises(ValueError, match="is outside the lake '/srv/lake'"):
        validate_params({"weights": "s3://fruits-lake/prod/w.h5"}, Lake("/srv/lake"))


def test_default_weights_come_from_the_caller(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF")
    params = validate_params({}, LAKE, default_weights=str(weights))
    assert params.weights == str(weights)


def test_partition_date_param_wins():
    start = datetime(2026, 1, 2, tzinfo=UTC)
    assert partition_date_from_context("2025-12-31", start, start) == date(2025, 12, 31)
    assert partition_date_from_context(date(2025, 12, 31), start, start) == date(2025, 12, 31)


def test_scheduled_run_processes_the_day_its_data_interval_starts():
    start, logical = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
    assert partition_date_from_context(None, start, logical) == date(2026, 1, 2)


def test_partitions_are_utc_days():
    paris_midnight = datetime(2026, 1, 2, tzinfo=ZoneInfo("Europe/Paris"))
    assert partition_date_from_context("", paris_midnight, None) == date(2026, 1, 1)


def test_logical_date_is_the_fallback():
    logical = datetime(2026, 1, 2, 5, tzinfo=UTC)
    assert partition_date_from_context(None, None, logical) == date(2026, 1, 2)


def test_manual_run_without_dates_needs_partition_date():
    with pytest.raises(ValueError, match="give partition_date"):
        partition_date_from_context(None, None, None)


def test_bad_partition_date_param_from_context():
    with pytest.raises(ValueError, match="'2026-02-30' is not a calendar date"):
        partition_date_from_context("2026-02-30", None, None)


def test_form_fields_have_title_and_description():
    form = dag_params()
    assert list(form) == ["partition_date", "variance", "k", "max_error_ratio", "weights"]
    for name, param in form.items():
        assert param.schema["title"], name
        assert param.description, name


def test_form_defaults_are_valid_params():
    form = dag_params(default_weights="random")
    raw = {name: param.value for name, param in form.items()}
    assert validate_params(raw, LAKE) == RunParams(partition_date=None, weights="random")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("partition_date", "2026-02-30"),
        ("variance", 0),
        ("variance", 1.5),
        ("k", 0),
        ("k", 1281),
        ("max_error_ratio", -0.1),
        ("weights", ""),
    ],
)
def test_form_rejects_out_of_range_values(name, value):
    with pytest.raises(ParamValidationError):
        dag_params()[name].resolve(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("partition_date", None), ("partition_date", "2026-01-02"), ("k", None), ("k", 1280)],
)
def test_form_accepts_valid_values(name, value):
    assert dag_params()[name].resolve(value) == value
