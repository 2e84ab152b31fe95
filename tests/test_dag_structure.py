"""The `fruits_features` DAG as Airflow parses it: no Spark, no run, no metadata database.

Import errors, what the DAG file imports (never TensorFlow nor PySpark: the scheduler parses it
every few seconds), the task graph with its setup and teardown, settings flowing into the
schedule and `max_active_runs`, the trigger form, and the partition a scheduled run processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pendulum
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
from airflow.timetables.base import DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable

from devtools.airflow_env import base_env
from fruits_pipeline.params import partition_date_from_context
from fruits_pipeline.settings import PipelineSettings
from tests.support.graph import parse_dag_file, task_edges

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "fruits_features.py"
DAG_ID = "fruits_features"
S3_LAKE = "s3://fruits-test-lake/prod"

# task id -> (upstream task ids, downstream task ids). Besides the chain, the XComs the tasks
# pass add edges: add_steps and the sensors take the cluster id, validate and release_partition
# take check_uploads' and prepare_run's (the run's token).
EDGES = {
    "check_uploads": (set(), {"prepare_run", "validate", "release_partition"}),
    "prepare_run": (
        {"check_uploads"},
        {"create_cluster", "add_steps", "validate", "release_partition"},
    ),
    "create_cluster": (
        {"prepare_run"},
        {"add_steps", "watch_featurize", "watch_pca", "terminate_cluster"},
    ),
    "add_steps": ({"prepare_run", "create_cluster"}, {"watch_featurize"}),
    "watch_featurize": ({"add_steps", "create_cluster"}, {"watch_pca"}),
    "watch_pca": ({"watch_featurize", "create_cluster"}, {"validate"}),
    "validate": ({"watch_pca", "check_uploads", "prepare_run"}, {"publish"}),
    "publish": ({"validate"}, {"terminate_cluster"}),
    "terminate_cluster": ({"create_cluster", "publish"}, {"release_partition"}),
    "release_partition": ({"check_uploads", "prepare_run", "terminate_cluster"}, set()),
}
OPERATORS = {
    "local": {
        "create_cluster": "LocalCreateClusterOperator",
        "add_steps": "LocalAddStepsOperator",
        "watch_featurize": "LocalStepSensor",
        "watch_pca": "LocalStepSensor",
        "terminate_cluster": "LocalTerminateClusterOperator",
    },
    "emr": {
        "create_cluster": "EmrCreateJobFlowOperator",
        "add_steps": "EmrAddStepsOperator",
        "watch_featurize": "CancellingEmrStepSensor",
        "watch_pca": "CancellingEmrStepSensor",
        "terminate_cluster": "EmrTerminateJobFlowOperator",
    },
}


def settings_env(tmp_path: Path, backend: str, **extra: str) -> dict[str, str]:
    """FRUITS_* variables of one deployment; every other FRUITS_* variable is unset."""
    env = {
        "FRUITS_BACKEND": backend,
        "FRUITS_LAKE_ROOT": S3_LAKE if backend == "emr" else str(tmp_path / "lake"),
        "FRUITS_LOCAL_STATE_DIR": str(tmp_path / "clusters"),
        "FRUITS_WEIGHTS": "random",
    }
    return env | extra


def parse_dag(env: dict[str, str]) -> tuple[DagBag, object]:
    """Parse the DAG file through a DagBag (as the DAG processor does) under `env`."""
    return parse_dag_file(DAG_FILE, DAG_ID, env)


@pytest.fixture(scope="module", params=["local", "emr"])
def parsed(request, tmp_path_factory) -> Iterator[tuple[str, DagBag, object]]:
    backend = request.param
    bag, dag = parse_dag(settings_env(tmp_path_factory.mktemp(backend), backend))
    yield backend, bag, dag


def test_dag_file_parses_without_errors_or_warnings(parsed):
    _, bag, dag = parsed
    assert bag.import_errors == {}
    assert bag.captured_warnings == {}
    assert bag.dag_ids == [DAG_ID]
    assert dag is not None
    assert [(stat.dag_num, stat.task_num) for stat in bag.dagbag_stats] == [(1, 10)]


def test_tasks_and_dependencies_are_exactly_the_pipeline(parsed):
    backend, _, dag = parsed
    assert set(dag.task_dict) == set(EDGES)
    assert task_edges(dag) == EDGES
    assert {
        task_id: type(dag.get_task(task_id)).__name__ for task_id in OPERATORS[backend]
    } == OPERATORS[backend]


def test_cluster_and_lease_are_setups_and_their_teardowns_always_end_them(parsed):
    _, _, dag = parsed
    setups = {task.task_id for task in dag.tasks if task.is_setup}
    teardowns = {task.task_id for task in dag.tasks if task.is_teardown}
    assert setups == {"prepare_run", "create_cluster"}
    assert teardowns == {"terminate_cluster", "release_partition"}
    teardown = dag.get_task("terminate_cluster")
    assert {task.task_id for task in teardown.upstream_list if task.is_setup} == {"create_cluster"}
    assert teardown.trigger_rule == "all_done_setup_success"
    # The lease is given back last: after the cluster, whose steps could still write, is gone.
    release = dag.get_task("release_partition")
    assert {task.task_id for task in release.upstream_list if task.is_setup} == {"prepare_run"}
    assert "terminate_cluster" in release.upstream_task_ids
    assert release.trigger_rule == "all_done_setup_success"
    assert {task.task_id for task in dag.leaves} == {"release_partition"}
    # The run's state: publish, and the release (which fails while the cluster still lives).
    assert (teardown.on_failure_fail_dagrun, release.on_failure_fail_dagrun) == (False, True)


def test_serializes_as_the_scheduler_stores_it(parsed):
    _, _, dag = parsed
    back = DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))
    assert task_edges(back) == EDGES
    assert back.get_task("create_cluster").is_setup is True
    assert back.get_task("terminate_cluster").is_teardown is True
    assert back.get_task("release_partition").is_teardown is True
    assert back.max_active_runs == dag.max_active_runs
    assert back.timetable == dag.timetable


def test_documentation_tags_and_owner(parsed):
    backend, _, dag = parsed
    assert dag.description == "MobileNetV2 features and PCA of one day of fruit photos"
    documented = set(re.findall(r"\*\*(\w+)\*\*", dag.doc_md)) & set(EDGES)
    # prepare_run (staging and planning) is the one task the overview does not name.
    assert set(EDGES) - documented <= {"prepare_run"}
    assert "`_SUCCESS`" in dag.doc_md
    assert set(dag.tags) == {"fruits", "features", "spark", backend}
    assert {task.owner for task in dag.tasks} == {"data-platform"}
    assert {task.retries for task in dag.tasks} == {0}
    assert dag.catchup is False
    assert dag.start_date == pendulum.datetime(2026, 1, 1, tz="UTC")


def test_trigger_form_titles_descriptions_and_defaults(parsed):
    _, _, dag = parsed
    params = dag.params
    assert set(params) == {"partition_date", "variance", "k", "max_error_ratio", "weights"}
    assert params.dump() == {
        "partition_date": None,
        "variance": 0.95,
        "k": None,
        "max_error_ratio": 0.05,
        "weights": "random",  # FRUITS_WEIGHTS
    }
    for name in params:
        param = params.get_param(name)
        assert param.schema["title"].strip(), name
        assert param.description and param.description.strip(), name


def test_default_schedule_and_concurrency(parsed):
    _, _, dag = parsed
    assert dag.timetable == CronDataIntervalTimetable("0 2 * * *", timezone="UTC")
    assert dag.timetable.serialize() == {"expression": "0 2 * * *", "timezone": "UTC"}
    assert dag.max_active_runs == 2


@pytest.mark.parametrize(
    ("daily_at", "max_runs", "cron"),
    [("23:30", "1", "30 23 * * *"), ("00:05", "5", "5 0 * * *"), ("07:00", "3", "0 7 * * *")],
)
def test_schedule_and_max_active_runs_come_from_settings(tmp_path, daily_at, max_runs, cron):
    env = settings_env(tmp_path, "local", FRUITS_DAILY_AT=daily_at, FRUITS_MAX_ACTIVE_RUNS=max_runs)
    bag, dag = parse_dag(env)
    assert bag.import_errors == {}
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.serialize() == {"expression": cron, "timezone": "UTC"}
    assert dag.max_active_runs == int(max_runs)
    assert f"daily at\n{daily_at} UTC" in dag.doc_md


@pytest.mark.parametrize("daily_at", ["02:00", "23:30", "00:00"])
def test_a_scheduled_run_processes_the_previous_complete_day(tmp_path, daily_at):
    _, dag = parse_dag(settings_env(tmp_path, "local", FRUITS_DAILY_AT=daily_at))
    hour, minute = map(int, daily_at.split(":"))
    restriction = TimeRestriction(earliest=dag.start_date, latest=None, catchup=True)

    first = dag.timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=restriction
    )
    assert first.data_interval.start == pendulum.datetime(2026, 1, 1, hour, minute, tz="UTC")
    assert partition_date_from_context(None, first.data_interval.start, None) == date(2026, 1, 1)

    last = DataInterval(
        pendulum.datetime(2026, 3, 1, hour, minute, tz="UTC"),
        pendulum.datetime(2026, 3, 2, hour, minute, tz="UTC"),
    )
    info = dag.timetable.next_dagrun_info(
        last_automated_data_interval=last, restriction=restriction
    )
    assert info.data_interval == DataInterval(
        pendulum.datetime(2026, 3, 2, hour, minute, tz="UTC"),
        pendulum.datetime(2026, 3, 3, hour, minute, tz="UTC"),
    )
    # It runs on 2026-03-03 at the daily time, once 2026-03-02 is over, and processes that day.
    assert info.run_after == pendulum.datetime(2026, 3, 3, hour, minute, tz="UTC")
    dt = partition_date_from_context(None, info.data_interval.start, info.logical_date)
    assert dt == date(2026, 3, 2)
    assert dt == info.run_after.date() - pendulum.duration(days=1)
    # A manual run's partition_date wins over its data interval.
    assert partition_date_from_context("2025-12-31", info.data_interval.start, None) == date(
        2025, 12, 31
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FRUITS_BACKEND": "aws"},
            "FRUITS_BACKEND must be one of ('local', 'emr'), got 'aws'",
        ),
        ({"FRUITS_BACKEND": ""}, "FRUITS_BACKEND must be one of ('local', 'emr'), got ''"),
        ({"FRUITS_DAILY_AT": "2:00"}, "FRUITS_DAILY_AT must be HH:MM (UTC), got '2:00'"),
        ({"FRUITS_DAILY_AT": "24:00"}, "FRUITS_DAILY_AT must be HH:MM (UTC), got '24:00'"),
        ({"FRUITS_DAILY_AT": "02:60"}, "FRUITS_DAILY_AT must be HH:MM (UTC), got '02:60'"),
        ({"FRUITS_DAILY_AT": "02:00 "}, "FRUITS_DAILY_AT must be HH:MM (UTC), got '02:00 '"),
        (
            {"FRUITS_MAX_ACTIVE_RUNS": "0"},
            "FRUITS_MAX_ACTIVE_RUNS must be at least 1, got 0",
        ),
        (
            {"FRUITS_MAX_ACTIVE_RUNS": "-3"},
            "FRUITS_MAX_ACTIVE_RUNS must be at least 1, got -3",
        ),
        (
            {"FRUITS_MAX_ACTIVE_RUNS": "two"},
            "FRUITS_MAX_ACTIVE_RUNS must be an integer, got 'two'",
        ),
        (
            {"FRUITS_LOCAL_IDLE_TIMEOUT_S": "soon"},
            "FRUITS_LOCAL_IDLE_TIMEOUT_S must be a number, got 'soon'",
        ),
        (
            {"FRUITS_LOCAL_IDLE_TIMEOUT_S": "0"},
            "FRUITS_LOCAL_IDLE_TIMEOUT_S must be a positive number of seconds, got 0.0",
        ),
        (
            {"FRUITS_DEFERRABLE_WAITS": "yes"},
            "FRUITS_DEFERRABLE_WAITS must be true or false, got 'yes'",
        ),
    ],
)
def test_settings_reject_bad_values_with_a_clear_message(env, message):
    with pytest.raises(ValueError) as raised:
        PipelineSettings.from_env(env)
    assert str(raised.value) == message


def test_settings_defaults_and_values():
    default = PipelineSettings.from_env({})
    assert (default.backend, default.daily_at) == ("local", "02:00")
    assert default.daily_cron == "0 2 * * *"
    assert (default.max_active_runs, default.local_idle_timeout_s) == (2, 1800.0)
    assert default.lake.root == str(REPO / ".lake")
    assert default.deferrable_waits is True
    assert PipelineSettings.from_env({"FRUITS_DEFERRABLE_WAITS": "False"}).deferrable_waits is False
    custom = PipelineSettings.from_env(
        {
            "FRUITS_BACKEND": "emr",
            "FRUITS_LAKE_ROOT": S3_LAKE + "/",
            "FRUITS_DAILY_AT": "23:05",
            "FRUITS_MAX_ACTIVE_RUNS": "4",
            "FRUITS_WEIGHTS": "random",
        }
    )
    assert (custom.backend, custom.lake.root, custom.default_weights) == ("emr", S3_LAKE, "random")
    assert (custom.daily_cron, custom.max_active_runs) == ("5 23 * * *", 4)


# Runs in a fresh interpreter: what importing the DAG file pulls in, and how long it takes.
IMPORT_PROBE = """
import importlib.util, json, sys, time
started = time.perf_counter()
import airflow.sdk  # what every DAG file pays; measured apart from the DAG file's own cost
airflow_s = time.perf_counter() - started
started = time.perf_counter()
spec = importlib.util.spec_from_file_location("fruits_features_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag_s = time.perf_counter() - started
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"tensorflow", "pyspark", "keras"})
print(json.dumps({"airflow_s": airflow_s, "dag_s": dag_s, "heavy": heavy,
                  "dag_id": module.dag.dag_id, "tags": sorted(module.dag.tags)}))
"""


@pytest.mark.parametrize("backend", ["local", "emr"])
def test_importing_the_dag_imports_neither_tensorflow_nor_pyspark(tmp_path, backend):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FRUITS_", "AIRFLOW", "PYSPARK", "SPARK"))
    }
    env |= settings_env(tmp_path, backend) | base_env(tmp_path / "airflow")
    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(DAG_FILE)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["dag_id"] == DAG_ID
    assert result["tags"] == sorted({"fruits", "features", "spark", backend})
    # Reported, not asserted: timings depend on the machine.
    print(
        f"\n[{backend}] import airflow.sdk: {result['airflow_s']:.2f} s; "
        f"then the DAG file: {result['dag_s']:.2f} s"
    )


def test_step_sensors_wait_as_the_plan_says_deferred_on_emr(parsed):
    """Each sensor renders its wait from prepare_run's `step_waits_s` (waits.py); on EMR it
    defers to the triggerer (README, Waits), locally it pokes."""
    backend, _, dag = parsed
    for index, task_id in enumerate(("watch_featurize", "watch_pca")):
        sensor = dag.get_task(task_id)
        assert "wait_s" in sensor.template_fields
        pulled = "ti.xcom_pull(task_ids='prepare_run', key='step_waits_s')"
        assert sensor.wait_s == "{{ " + pulled + f"[{index}] " + "}}"
        assert getattr(sensor, "deferrable", False) is (backend == "emr")
    # On EMR the teardown also waits for TERMINATED in the triggerer.
    assert getattr(dag.get_task("terminate_cluster"), "deferrable", False) is (backend == "emr")


def test_emr_waits_are_in_workers_when_deferrable_waits_are_off(tmp_path):
    _, dag = parse_dag(settings_env(tmp_path, "emr", FRUITS_DEFERRABLE_WAITS="false"))
    waits = ("watch_featurize", "watch_pca", "terminate_cluster")
    assert [dag.get_task(t).deferrable for t in waits] == [False] * 3
