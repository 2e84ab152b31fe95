"""The Airflow-side tasks of `fruits_features`: thin wrappers over the pure functions."""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import Any

from airflow.sdk import Asset, get_current_context, task

from fruits_pipeline import validation
from fruits_pipeline.lake_io import lake_storage
from fruits_pipeline.params import RunParams, partition_date_from_context, validate_params
from fruits_pipeline.settings import PipelineSettings

SETTINGS = PipelineSettings.from_env()
REDUCED_FEATURES = Asset(
    name="fruits_reduced_features",
    uri=SETTINGS.lake.root + "/reduced"
    if SETTINGS.lake.is_s3
    else f"file://{SETTINGS.lake.root}/reduced",
)


def _storage(settings: PipelineSettings):
    region = kms_key_id = None
    if settings.backend == "emr":
        from fruits_pipeline.emr_config import EmrSettings

        emr = EmrSettings.from_env()
        # Markers are encrypted with the key of the staged artifacts (SSE-S3 when none is set).
        region, kms_key_id = emr.region, emr.kms_key_id
    return lake_storage(
        settings.lake, aws_conn_id=settings.aws_conn_id, region=region, kms_key_id=kms_key_id
    )


def _run_params(run: dict[str, Any]) -> RunParams:
    values = dict(run["params"])
    values["partition_date"] = date.fromisoformat(run["partition"])
    return RunParams(**values)


@task.short_circuit
def check_uploads() -> dict[str, Any] | None:
    """Validate the params, find the partition and count its uploads; none: skip the run."""
    context = get_current_context()
    settings = PipelineSettings.from_env()
    params = validate_params(
        dict(context["params"]), settings.lake, default_weights=settings.default_weights
    )
    dt = partition_date_from_context(
        params.partition_date, context.get("data_interval_start"), context.get("logical_date")
    )
    images = validation.count_images(_storage(settings), settings.lake, dt)
    print(f"Partition dt={dt.isoformat()}: {images} images under {settings.lake.raw(dt)}")
    if images == 0:
        print("No uploads for this day: every later task is skipped and no cluster is created.")
        return None
    run_params = dataclasses.asdict(params) | {"partition_date": None}
    return {"partition": dt.isoformat(), "images_found": images, "params": run_params}


@task(multiple_outputs=True)
def prepare_run(run: dict[str, Any]) -> dict[str, Any]:
    """Mark the partition unpublished, stage the code, plan the cluster and its two steps."""
    from fruits_pipeline.backends import backend_for

    context = get_current_context()
    settings = PipelineSettings.from_env()
    dt = date.fromisoformat(run["partition"])
    validation.unpublish_partition(_storage(settings), settings.lake, dt)
    return backend_for(settings).plan(
        dt, _run_params(run), dag_id=context["dag"].dag_id, run_id=context["run_id"]
    )


@task
def validate(run: dict[str, Any]) -> dict[str, Any]:
    """Every vector has k dimensions and is finite; counts add up; few enough errors."""
    settings = PipelineSettings.from_env()
    summary = validation.validate_partition(
        _storage(settings),
        settings.lake,
        date.fromisoformat(run["partition"]),
        images_found=run["images_found"],
        max_error_ratio=run["params"]["max_error_ratio"],
    )
    print(f"Partition valid: {summary}")
    return dataclasses.asdict(summary)


@task(outlets=[REDUCED_FEATURES])
def publish(summary: dict[str, Any]) -> str:
    """Write `_SUCCESS` and emit an asset event for the reduced features of the partition."""
    context = get_current_context()
    settings = PipelineSettings.from_env()
    marker = validation.publish_partition(
        _storage(settings), settings.lake, validation.PartitionSummary(**summary)
    )
    dt = date.fromisoformat(summary["partition"])
    context["outlet_events"][REDUCED_FEATURES].extra = {
        "partition": summary["partition"],
        "uri": settings.lake.reduced(dt),
        "rows": summary["reduced"],
        "k": summary["k"],
    }
    print(f"Published dt={summary['partition']}: {marker}")
    return marker
