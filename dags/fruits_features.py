"""fruits_features: one day of fruit photos in, validated and published reduced features out."""

from __future__ import annotations

from airflow.sdk import DAG, chain
from airflow.timetables.interval import CronDataIntervalTimetable

from fruits_pipeline import tasks
from fruits_pipeline.backends import backend_for
from fruits_pipeline.params import dag_params
from fruits_pipeline.settings import DAG_DEFAULTS, PipelineSettings

settings = PipelineSettings.from_env()
backend = backend_for(settings)

DOC = f"""
### Fruits! image features, one date partition per run

1. **check_uploads**: counts images under `raw/dt=D/`; none: the run skips, no cluster is made.
   **prepare_run** takes the day's lease (one run per day: while another run of the same day
   holds it, this run **fails at once, naming that run**, and touches nothing) and stages the jobs.
   While `fruits_pca_basis` refits the basis, daily runs fail at once the same way.
2. **create_cluster** (setup): a transient `{backend.name}` Spark cluster.
3. **add_steps**: featurize (MobileNetV2, 1280-d per image) then PCA in the lake's current
   basis (the first run fits it on its day), passing Parquet through the run's own
   `staging/dt=D/<run>/` folder.
4. **watch_featurize**, **watch_pca** wait for the steps; **validate** checks every vector has
   the basis's k dimensions, counts add up and errors stay under the threshold; **publish**
   moves the run's outputs into place, writes `reports/dt=D/_SUCCESS` and emits the
   `fruits_reduced_features` asset event. Until then an earlier publication stays as it was.
5. **terminate_cluster**, then **release_partition** (teardowns): always run once the cluster
   exists (the lease is taken), whatever failed.

**Partition**: a scheduled run for the data interval [D, D+1) processes `dt=D` (daily at
{settings.daily_at} UTC). A manual run takes `partition_date` from the form; backfills run by date.

**Parameters**: `partition_date`, `variance` (0.95) or a fixed `k`, `max_error_ratio` (0.05),
`weights` (`imagenet`, `random`, a path, an s3 URI inside the lake).

**Outputs** under `{settings.lake.root}`: `features/dt=D/`, `errors/dt=D/` (bad files and
why), `reduced/dt=D/` (with the basis of every row), `reports/dt=D/` (manifest.json,
explained_variance.png, pca_scatter.png, `_SUCCESS` last); the basis in `models/pca/<id>/`.
"""

with DAG(
    dag_id="fruits_features",
    description="MobileNetV2 features and PCA of one day of fruit photos",
    schedule=CronDataIntervalTimetable(settings.daily_cron, timezone="UTC"),
    max_active_runs=settings.max_active_runs,
    params=dag_params(settings.default_weights),
    doc_md=DOC,
    tags=["fruits", "features", "spark", backend.name],
    **DAG_DEFAULTS,
) as dag:
    run = tasks.check_uploads()
    plan = tasks.prepare_run(run)
    cluster = backend.cluster_tasks(plan, ["watch_featurize", "watch_pca"])
    validated = tasks.validate(run, plan["token"])
    published = tasks.publish(validated)
    released = tasks.release_partition(run, plan["token"]).as_teardown(
        setups=plan, on_failure_fail_dagrun=True
    )

    chain(run, plan, *cluster.until_done, validated, published, cluster.terminate)
    cluster.terminate >> released
