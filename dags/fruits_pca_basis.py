"""fruits_pca_basis: refit the lake's PCA basis over many days and move every day into it."""

from __future__ import annotations

from airflow.sdk import DAG, chain
from airflow.timetables.trigger import CronTriggerTimetable

from fruits_pipeline import refit_tasks
from fruits_pipeline.backends import backend_for
from fruits_pipeline.params import refit_dag_params
from fruits_pipeline.settings import DAG_DEFAULTS, PipelineSettings

settings = PipelineSettings.from_env()
backend = backend_for(settings)

DOC = f"""
### Fruits! PCA basis: refit over many days, move the history into it

1. **check_window**: the published days of the window (dates, or the last N days); none: skip.
   **take_leases** takes the refit lease (daily runs starting now fail at once, naming it)
   and every day's lease, waiting for the daily runs already writing.
2. **create_cluster** (setup): a transient `{backend.name}` Spark cluster.
3. **add_steps**: fit (moments of the window's `features/` across executors, then the
   eigendecomposition) writing a new basis under `models/pca/<id>/`, then reproject every
   published day's `features/` in it, into the refit's staging folder.
4. **watch_fit**, **watch_reproject**; **validate_refit** (k, explained variance, no NaN/inf,
   every day's rows as published); **switch_basis** moves each day's `reduced/` and report,
   makes the basis current and emits the `fruits_pca_basis` asset event.
5. **terminate_cluster**, then **restore_and_release** (teardowns): a refit that did not make its
   basis current puts every day back as it was; then the leases are released.

Schedule: `{settings.refit_schedule or "manual runs only"}` (FRUITS_REFIT_SCHEDULE, UTC).
"""

with DAG(
    dag_id="fruits_pca_basis",
    description="Refit the PCA basis over many days and move every published day into it",
    schedule=CronTriggerTimetable(settings.refit_schedule, timezone="UTC")
    if settings.refit_schedule
    else None,
    max_active_runs=1,
    params=refit_dag_params(),
    doc_md=DOC,
    tags=["fruits", "pca", "spark", backend.name],
    **DAG_DEFAULTS,
) as dag:
    window = refit_tasks.check_window()
    plan = refit_tasks.take_leases(window)
    cluster = backend.cluster_tasks(plan, ["watch_fit", "watch_reproject"])
    validated = refit_tasks.validate_refit(plan["token"], plan["basis"], plan["moved"])
    switched = refit_tasks.switch_basis(
        plan["token"], plan["basis"], plan["moved"], plan["after"], validated
    )
    released = refit_tasks.restore_and_release(
        plan["token"], plan["basis"], plan["leased"], plan["moved"]
    ).as_teardown(setups=plan, on_failure_fail_dagrun=True)

    chain(window, plan, *cluster.until_done, validated, switched, cluster.terminate)
    cluster.terminate >> released
