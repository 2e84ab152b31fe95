"""Airflow local settings of every deployment of this project (this folder is what Airflow
calls `$AIRFLOW_HOME/config`, put on the PYTHONPATH of `make airflow`'s components and CLI, and
of the compose image): a backfill created without a run limit gets its DAG's.

Airflow 3.3.2 limits a backfill's runs by the backfill's own `max_active_runs` alone: the
scheduler checks neither the DAG's `max_active_runs` nor `[core] max_active_runs_per_dag` for
backfill runs (`SchedulerJobRunner._start_queued_dagruns`), and `airflow backfill create`
without `--max-active-runs` leaves the column to its default, 10 (`models/backfill.py`): ten
runs, so ten Spark clusters, at once. Here, such a backfill takes its DAG's `max_active_runs`
(FRUITS_MAX_ACTIVE_RUNS for fruits_features) as it is inserted, whatever creates it: the plain
CLI, a script. The REST API and the UI's backfill form always give a limit (10 unless told),
which is kept.
"""

from __future__ import annotations

from sqlalchemy import event, text
from sqlalchemy.orm import Mapper

__all__: list[str] = []  # no policy: Airflow registers the module's public names as policies

_DAG_LIMIT = text("SELECT max_active_runs FROM dag WHERE dag_id = :dag_id")


def _backfill_takes_its_dags_limit(mapper, connection, target) -> None:
    if mapper.local_table.name != "backfill" or target.max_active_runs is not None:
        return
    limit = connection.execute(_DAG_LIMIT, {"dag_id": target.dag_id}).scalar()
    if limit is None:  # no DAG row: Airflow's default for every DAG
        from airflow.configuration import conf

        limit = conf.getint("core", "max_active_runs_per_dag")
    target.max_active_runs = limit


# Every mapper (the models are not imported yet when Airflow loads this module).
event.listen(Mapper, "before_insert", _backfill_takes_its_dags_limit)
