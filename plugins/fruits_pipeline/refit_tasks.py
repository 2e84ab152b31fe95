"""The Airflow-side tasks of `fruits_pca_basis`: thin wrappers over refit.py.

`check_window` skips the run when no published day falls in the window; `take_leases` takes the
refit lease and every day's, and plans the cluster's two steps (fit, reproject); `switch_basis`
moves every day into the new basis, then makes it current; `restore_and_release` (the last
teardown) puts the days back if the basis did not become current, then releases the leases.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from airflow.sdk import Asset, get_current_context, task

from fruits_pipeline import basis, lease, refit, steps, waits
from fruits_pipeline.settings import PipelineSettings
from fruits_pipeline.tasks import lease_terms, new_run, run_storage, wait_until_cluster_gone

SETTINGS = PipelineSettings.from_env()
PCA_BASIS = Asset(
    name="fruits_pca_basis",
    uri=SETTINGS.lake.current_basis()
    if SETTINGS.lake.is_s3
    else f"file://{SETTINGS.lake.current_basis()}",
)


def _window(params: refit.RefitParams, days: list[date]) -> list[date]:
    return [dt for dt in days if params.first <= dt <= params.last]


def _params() -> refit.RefitParams:
    context = get_current_context()
    moment = context.get("logical_date") or datetime.now(UTC)
    return refit.validate_refit_params(dict(context["params"]), moment.astimezone(UTC).date())


@task.short_circuit
def check_window() -> dict[str, Any] | None:
    """Validate the form; none of the window's days published: skip, no cluster."""
    params = _params()
    settings = PipelineSettings.from_env()
    days = _window(params, refit.published_days(run_storage(settings), settings.lake))
    print(f"Fit window {params.first} .. {params.last}: {len(days)} published days")
    if not days:
        print("No published day in the window: every later task is skipped.")
        return None
    return {"first": params.first.isoformat(), "last": params.last.isoformat()}


@task(multiple_outputs=True)
def take_leases(window: dict[str, Any]) -> dict[str, Any]:
    """Take the refit lease and every day's, then plan the fit and reprojection steps."""
    from fruits_pipeline.backends import backend_for

    context = get_current_context()
    params = _params()
    settings = PipelineSettings.from_env()
    storage, backend = run_storage(settings), backend_for(settings)
    this_run = new_run(context)
    token = this_run.token
    leased = refit.take_leases(storage, settings.lake, this_run, lease_terms(settings, backend))
    try:
        moved = refit.published_days(storage, settings.lake)
        fitted = _window(params, moved)
        if not fitted:
            raise ValueError(f"no published day left in {params.first} .. {params.last}")
        found = basis.current(storage, settings.lake)
        new_basis = refit.basis_files.new_basis_id()
        jobs = refit.refit_jobs(
            settings.lake, token, basis_id=new_basis, fit_days=fitted, moved_days=moved,
            variance=params.variance, k=params.k,
        )  # fmt: skip
        plan = backend.plan_refit(jobs, this_run)
        # How long each step's sensor waits: from the rows and days it reads (waits.py).
        rows = refit.published_rows(storage, settings.lake, moved)
        plan[steps.STEP_WAITS_KEY] = waits.refit_step_waits(
            settings.backend, fit_rows=sum(rows[dt] for dt in fitted),
            moved_rows=sum(rows.values()), moved_days=len(moved), max_wait_s=settings.lease_ttl_s,
        )  # fmt: skip
    except BaseException:
        refit.release_leases(storage, settings.lake, token, [lease.REFIT, *leased])
        raise
    print(f"Refit {new_basis}: fit on {len(fitted)} days, {len(moved)} days to move")
    print(f"Step waits (s), fit and reprojection: {plan[steps.STEP_WAITS_KEY]}")
    return {
        **plan,
        "token": token,
        "basis": new_basis,
        "after": found[0] if found else None,
        "fitted": [dt.isoformat() for dt in fitted],
        "moved": [dt.isoformat() for dt in moved],
        "leased": [dt.isoformat() for dt in leased],
    }


def _days(values: list[str]) -> list[date]:
    return [date.fromisoformat(value) for value in values]


@task
def validate_refit(token: str, new_basis: str, moved: list[str]) -> dict[str, Any]:
    settings = PipelineSettings.from_env()
    summary = refit.validate_refit(
        run_storage(settings), settings.lake, token, new_basis, _days(moved)
    )
    print(f"Refit valid: {summary}")
    return summary


@task(outlets=[PCA_BASIS])
def switch_basis(token: str, new_basis: str, moved: list[str], after: int | None, summary):
    """Move every day into the new basis, then make it current."""
    context = get_current_context()
    settings = PipelineSettings.from_env()
    generation = refit.switch(
        run_storage(settings), settings.lake, token, basis_id=new_basis, days=_days(moved),
        after=after,
    )  # fmt: skip
    context["outlet_events"][PCA_BASIS].extra = {
        "basis": new_basis,
        "generation": generation,
        "k": summary["k"],
        "days": len(moved),
    }
    print(f"Basis {new_basis} is current (generation {generation}); {len(moved)} days moved")


@task
def restore_and_release(token: str, new_basis: str, leased: list[str], moved: list[str]):
    """The last teardown: once the cluster is gone, put the days back unless the new basis is
    current, then release every lease."""
    from fruits_pipeline.backends import backend_for

    settings = PipelineSettings.from_env()
    storage, backend = run_storage(settings), backend_for(settings)
    wait_until_cluster_gone(backend, token, lease.REFIT, "every lease of the refit")
    restored = refit.restore_unless_current(
        storage, settings.lake, token, basis_id=new_basis, days=_days(moved)
    )
    if restored:
        print(f"The refit did not complete: {len(restored)} days restored in their old basis")
    refit.release_leases(storage, settings.lake, token, [lease.REFIT, *_days(leased)])
    print("Released the refit's leases")
