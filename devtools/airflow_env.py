"""What every local Airflow of the project runs with: the environment naming its home, the
repository's DAGs and plugins and its metadata database, and the default weights.

`make airflow` (devtools.stack), `make demo` and `make refit` (devtools.throwaway) and the tests
that migrate or parse under an Airflow home all start from `base_env`, each adding only what is
its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from fruits_pipeline.settings import REPO_ROOT, default_weights

# The repository's packages (spark_jobs, devtools) and plugins/ (fruits_pipeline) importable.
REPO_PYTHONPATH = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")])


def base_env(home: Path, db_url: str | None = None) -> dict[str, str]:
    """AIRFLOW_HOME=home, the repository's DAGs and plugins (also importable: PYTHONPATH), no
    example DAGs, the metadata database `db_url` (default: SQLite in the home) and the task
    logs in `<home>/logs`."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url or f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "PYTHONPATH": REPO_PYTHONPATH,
    }


def choose_weights(asked: str | None) -> str:
    """The weights asked for, else the settings' default (../shared's file, else ImageNet); when
    that is ImageNet but Keras neither has nor can download its weights, random ones."""
    if asked:
        return asked
    weights = default_weights()
    if weights != "imagenet":
        return weights
    try:  # ImageNet weights Keras already has, or can download.
        from spark_jobs.model import resolve_weights

        resolve_weights("imagenet")
        return "imagenet"
    except Exception:
        return "random"
