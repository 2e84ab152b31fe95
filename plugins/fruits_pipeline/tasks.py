"""The Airflow-side tasks of `fruits_features`: thin wrappers over the pure functions.

A run writes its day under a lease (lease.py): `prepare_run` takes it, the steps write under
the run's staging folder, `validate` checks the staged outputs, `publish` moves them into place
and writes `_SUCCESS`, `release_partition` (the last teardown) gives the lease back.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import date
from typing import Any

from airflow.sdk import Asset, get_current_context, task

from fruits_pipeline import basis, lease, steps, validation, waits
from fruits_pipeline.lake_io import lake_storage
from fruits_pipeline.params import RunParams, partition_date_from_context, validate_params
from fruits_pipeline.settings import PipelineSettings

# An EMR cluster takes a minute or two from TERMINATING to TERMINATED.
RELEASE_WAIT_S, RELEASE_POLL_S = 1200, 10
SETTINGS = PipelineSettings.from_env()
REDUCED_FEATURES = Asset(
    name="fruits_reduced_features",
    uri=SETTINGS.lake.root + "/reduced"
    if SETTINGS.lake.is_s3
    else f"file://{SETTINGS.lake.root}/reduced",
)


def new_run(context) -> lease.RunIdentity:
    """This Airflow run with a new token: the holder of its leases, the owner of its cluster."""
    return lease.RunIdentity(context["dag"].dag_id, context["run_id"], lease.new_run_token())


def lease_terms(settings: PipelineSettings, backend) -> lease.LeaseTerms:
    """The terms this deployment's runs take leases by: a holder lives while its cluster does."""
    return lease.LeaseTerms(backend.run_alive, settings.lease_grace_s, settings.lease_ttl_s)


def run_storage(settings: PipelineSettings):
    """The lake storage a task writes through (S3 with the run's encryption key, or local)."""
    region = kms_key_id = None
    if settings.backend == "emr":
        from fruits_pipeline.backends.emr.config import EmrSettings

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


def wait_until_cluster_gone(backend, token: str, key: str, kept: str) -> None:
    """Before a lease is given back: the run's cluster, whose steps could still write, is gone.
    Raises, naming what is `kept` held, when it outlives its termination by RELEASE_WAIT_S."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while backend.run_alive(token, key):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the cluster of run {token} is still alive {RELEASE_WAIT_S} s after its "
                f"termination: {kept} is kept until it ends"
            )
        time.sleep(RELEASE_POLL_S)


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
    images = validation.count_images(run_storage(settings), settings.lake, dt)
    print(f"Partition dt={dt.isoformat()}: {images} images under {settings.lake.raw(dt)}")
    if images == 0:
        print("No uploads for this day: every later task is skipped and no cluster is created.")
        return None
    run_params = dataclasses.asdict(params) | {"partition_date": None}
    return {"partition": dt.isoformat(), "images_found": images, "params": run_params}


@task(multiple_outputs=True)
def prepare_run(run: dict[str, Any]) -> dict[str, Any]:
    """Take the day's lease, stage the code, plan the cluster and its two steps.

    The published day stays as it is until this run publishes: its steps write to staging.
    """
    from fruits_pipeline.backends import backend_for

    context = get_current_context()
    settings = PipelineSettings.from_env()
    storage = run_storage(settings)
    backend = backend_for(settings)
    dt = date.fromisoformat(run["partition"])
    this_run = new_run(context)
    token = this_run.token
    held = lease.acquire(storage, settings.lake, dt, this_run, lease_terms(settings, backend))
    print(f"Holding the lease of dt={dt.isoformat()}: {held.describe()}")
    try:
        lease.check_no_refit(storage, settings.lake, dt, backend.run_alive)
        # What earlier runs staged and never published: theirs were killed or failed.
        storage.delete_folder(settings.lake.staging(dt))
        params = _run_params(run)
        chosen = basis.plan_for_run(
            storage, settings.lake, dt, token=token, run_id=context["run_id"],
            holder_alive=backend.run_alive,
        )  # fmt: skip
        if not chosen.fit:
            basis.check_run_weights(storage, settings.lake, chosen.basis, params.weights)
        print(
            f"This run {'fits' if chosen.fit else 'applies'} basis {chosen.basis}"
            + ("" if chosen.fit else ": the form's variance and k are not used")
        )
        plan = backend.plan(dt, params, chosen, this_run)
        # How long each step's sensor waits: from the day's image count (waits.py).
        plan[steps.STEP_WAITS_KEY] = waits.daily_step_waits(
            settings.backend, run["images_found"], fit=chosen.fit, max_wait_s=settings.lease_ttl_s
        )
    except BaseException:
        lease.release(storage, settings.lake, dt, token)
        raise
    print(f"Step waits (s), featurize and PCA: {plan[steps.STEP_WAITS_KEY]}")
    return {**plan, "token": token, "basis": chosen.basis}


@task
def validate(run: dict[str, Any], token: str) -> dict[str, Any]:
    """Every staged vector has k dimensions and is finite; counts add up; few enough errors."""
    settings = PipelineSettings.from_env()
    summary = validation.validate_partition(
        run_storage(settings),
        settings.lake,
        date.fromisoformat(run["partition"]),
        images_found=run["images_found"],
        max_error_ratio=run["params"]["max_error_ratio"],
        run=token,
    )
    print(f"Partition valid: {summary}")
    return dataclasses.asdict(summary) | {"token": token}


@task(outlets=[REDUCED_FEATURES])
def publish(summary: dict[str, Any]) -> str:
    """Move the run's outputs into place, write `_SUCCESS`, emit an asset event.

    Only while the run holds the day's lease: a run that lost it publishes nothing.
    """
    context = get_current_context()
    settings = PipelineSettings.from_env()
    storage = run_storage(settings)
    token = summary.pop("token")
    dt = date.fromisoformat(summary["partition"])
    lease.check_held(storage, settings.lake, dt, token)
    marker = validation.publish_partition(
        storage, settings.lake, validation.PartitionSummary(**summary), run=token
    )
    context["outlet_events"][REDUCED_FEATURES].extra = {
        "partition": summary["partition"],
        "uri": settings.lake.reduced(dt),
        "rows": summary["reduced"],
        "basis": summary["basis"],
        "k": summary["k"],
    }
    print(f"Published dt={summary['partition']}: {marker}")
    return marker


@task
def release_partition(run: dict[str, Any], token: str) -> None:
    """Give the day's lease back once the run's cluster is gone (the last teardown).

    A cluster still alive (its termination failed or is slow) could still write: the lease is
    kept and the task fails, which fails the run.
    """
    from fruits_pipeline.backends import backend_for

    settings = PipelineSettings.from_env()
    dt = date.fromisoformat(run["partition"])
    backend = backend_for(settings)
    wait_until_cluster_gone(backend, token, run["partition"], f"the lease of dt={dt}")
    if lease.release(run_storage(settings), settings.lake, dt, token):
        print(f"Released the lease of dt={dt.isoformat()}")
    else:
        print(f"The lease of dt={dt.isoformat()} was not this run's to release")
