"""The `fruits_pca_basis` DAG as Airflow parses it: no Spark, no run, no metadata database.

Import errors, no TensorFlow nor PySpark at parse time, the task graph with its setups and
teardowns, the schedule from FRUITS_REFIT_SCHEDULE (or none), and the trigger form.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.timetables.trigger import CronTriggerTimetable

from devtools.airflow_env import base_env
from tests.support.graph import edges_from, parse_dag_file, task_edges

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "fruits_pca_basis.py"
DAG_ID = "fruits_pca_basis"

# Every arrow of the graph, upstream -> downstream, by upstream task.
EDGES = edges_from(
    [
        ("check_window", "take_leases"),
        ("take_leases", "create_cluster"),
        ("take_leases", "add_steps"),
        ("take_leases", "validate_refit"),
        ("take_leases", "switch_basis"),
        ("take_leases", "restore_and_release"),
        ("create_cluster", "add_steps"),
        ("create_cluster", "watch_fit"),
        ("create_cluster", "watch_reproject"),
        ("create_cluster", "terminate_cluster"),
        ("add_steps", "watch_fit"),
        ("watch_fit", "watch_reproject"),
        ("watch_reproject", "validate_refit"),
        ("validate_refit", "switch_basis"),
        ("switch_basis", "terminate_cluster"),
        ("terminate_cluster", "restore_and_release"),
    ]
)


def env_for(tmp_path: Path, backend: str, **extra: str) -> dict[str, str]:
    lake = "s3://fruits-test-lake/prod" if backend == "emr" else str(tmp_path / "lake")
    return {"FRUITS_BACKEND": backend, "FRUITS_LAKE_ROOT": lake,
            "FRUITS_LOCAL_STATE_DIR": str(tmp_path / "clusters"), "FRUITS_WEIGHTS": "random",
            **extra}  # fmt: skip


def parse(env: dict[str, str]):
    return parse_dag_file(DAG_FILE, DAG_ID, env)


@pytest.mark.parametrize("backend", ["local", "emr"])
def test_the_refit_dag_is_its_steps_with_setups_and_teardowns(tmp_path, backend):
    bag, dag = parse(env_for(tmp_path, backend))
    assert (bag.import_errors, bag.captured_warnings, bag.dag_ids) == ({}, {}, [DAG_ID])
    assert task_edges(dag) == EDGES
    assert {t.task_id for t in dag.tasks if t.is_setup} == {"take_leases", "create_cluster"}
    teardowns = {t.task_id for t in dag.tasks if t.is_teardown}
    assert teardowns == {"terminate_cluster", "restore_and_release"}
    release = dag.get_task("restore_and_release")
    assert release.trigger_rule == "all_done_setup_success" and release.on_failure_fail_dagrun
    assert {task.task_id for task in dag.leaves} == {"restore_and_release"}
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert set(dag.tags) == {"fruits", "pca", "spark", backend}
    assert dag.params.dump() == {
        "from_date": None, "to_date": None, "last_days": 30, "variance": 0.95, "k": None,
    }  # fmt: skip
    for name in dag.params:
        assert dag.params.get_param(name).description.strip(), name


@pytest.mark.parametrize(
    ("schedule", "timetable"),
    [
        (None, CronTriggerTimetable("0 6 * * 0", timezone="UTC")),
        ("30 4 1 * *", CronTriggerTimetable("30 4 1 * *", timezone="UTC")),
        ("off", None),
    ],
)
def test_the_refit_runs_weekly_unless_told_otherwise(tmp_path, schedule, timetable):
    extra = {} if schedule is None else {"FRUITS_REFIT_SCHEDULE": schedule}
    _, dag = parse(env_for(tmp_path, "local", **extra))
    if timetable is None:
        assert type(dag.timetable).__name__ == "NullTimetable"  # manual runs only
    else:
        assert dag.timetable == timetable


def test_a_bad_refit_schedule_is_refused_naming_it():
    from fruits_pipeline.settings import PipelineSettings

    with pytest.raises(ValueError, match="FRUITS_REFIT_SCHEDULE must be a cron expression"):
        PipelineSettings.from_env({"FRUITS_REFIT_SCHEDULE": "weekly"})


def test_parsing_the_refit_dag_imports_neither_tensorflow_nor_pyspark(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FRUITS_", "AIRFLOW", "PYSPARK", "SPARK"))
    }
    env |= env_for(tmp_path, "emr") | base_env(tmp_path / "airflow")
    probe = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('refit_dag', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "names = {n.split('.')[0] for n in sys.modules}\n"
        "heavy = sorted(names & {'tensorflow', 'pyspark', 'keras'})\n"
        "print(json.dumps({'heavy': heavy, 'dag_id': module.dag.dag_id}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(DAG_FILE)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"heavy": [], "dag_id": DAG_ID}
