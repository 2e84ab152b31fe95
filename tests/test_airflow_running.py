"""Airflow 3 running as its users run it (`make airflow`), operated through its UI, CLI and API.

One stack for the module (`devtools.stack`: api-server, scheduler, dag-processor
and triggerer on 127.0.0.1, PostgreSQL 15 on 127.0.0.1, LocalExecutor) on a free port, with a
temporary AIRFLOW_HOME, lake and cluster state directory, random weights and
FRUITS_MAX_ACTIVE_RUNS=1. The `airflow` CLI runs as `make airflow` tells its users: plain, in a
shell that sourced `<home>/env`. The tests run in file order:

- a: in headless Chromium, log in, open `fruits_features`, trigger it through the form with a
  partition_date and variance 0.8; the run succeeds and publishes that partition with 0.8;
- b: `airflow backfill create` without `--max-active-runs` over three days, the middle one
  without uploads: the first and last are published, the middle one skips without a cluster,
  no more clusters are alive at once than the DAG's max_active_runs; a second backfill, of the
  last two days, reprocessing completed runs gives identical reduced data; then two backfills
  (both DAGs) and a manual trigger started at once while the scheduler runs: all created,
  no "database is locked", the scheduler still healthy;
- c: the scheduler's daily run processes the previous complete day, and its next run the day
  after;
- d: stopping the stack leaves no process of it, nor of its clusters, nor of its PostgreSQL.

Screenshots of the filled form and of the finished run go to `test-artifacts/`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest

from devtools.samples import make_synthetic_fruits
from devtools.stack import client, components, postgres
from devtools.stack import config as stack_config
from fruits_pipeline import basis, procs
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from tests.support.dag_harness import cluster_ids
from tests.support.processes import is_gone, live_processes
from tests.support.states import ALL_TASKS, SKIPPED_RUN, expected_states

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DAG_ID = "fruits_features"
REFIT_DAG_ID = "fruits_pca_basis"
# One run at a time: a backfill of two days with uploads, which Airflow would otherwise run side
# by side (a backfill's own default limit is 10), shows the limit holding.
MAX_ACTIVE_RUNS = 1
DAILY_AT = (2, 0)  # FRUITS_DAILY_AT's default, 02:00 UTC
D_UI = date(2026, 10, 5)  # the run triggered from the form
D1, D2, D3 = date(2026, 10, 12), date(2026, 10, 13), date(2026, 10, 14)  # the backfill; D2 empty
IMAGES = 6  # per partition: 2 classes x 3
FINISHED = {"success", "failed"}
RUN_TIMEOUT_S = 900


@dataclass
class Running:
    config: stack_config.StackConfig
    stack: stack_config.Stack
    lake: Lake
    token: str

    @property
    def state_dir(self) -> Path:
        return self.stack.state_dir

    @property
    def env(self) -> dict[str, str]:
        return stack_config.airflow_env(self.stack.config)

    def api(self, path: str, **kwargs) -> Any:
        return client.api(self.stack, path, token=self.token, **kwargs)

    def airflow_command(self, *args: str) -> list[str]:
        """The plain `airflow` CLI in a shell that sourced the stack's `<home>/env`, as the
        banner of `make airflow` tells its users (run it with this process's environment)."""
        env_file = self.stack.home / stack_config.ENV_FILE
        return ["bash", "-c", 'source "$0" && exec airflow "$@"', str(env_file), *args]

    def airflow(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.airflow_command(*args),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def runs(self, **query: str) -> dict[str, dict[str, Any]]:
        params = "&".join(f"{k}={v}" for k, v in {"limit": "100", **query}.items())
        answer = self.api(f"/dags/{DAG_ID}/dagRuns?{params}")
        return {run["dag_run_id"]: run for run in answer["dag_runs"]}

    def task_instances(self, run_id: str) -> dict[str, dict[str, Any]]:
        answer = self.api(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in answer["task_instances"]}

    def task_states(self, run_id: str) -> dict[str, str]:
        return {task: ti["state"] for task, ti in self.task_instances(run_id).items()}

    def task_log(self, run_id: str, task_id: str, try_number: int = 1) -> list[str]:
        answer = self.api(
            f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        )
        return [entry.get("event", "") for entry in answer["content"]]

    def xcom(self, run_id: str, task_id: str) -> Any:
        path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        return self.api(path)["value"]

    def unpause(self) -> None:
        assert (
            self.api(f"/dags/{DAG_ID}", data={"is_paused": False}, method="PATCH")["is_paused"]
            is False
        )


def finished_run(running: Running, run_id: str) -> dict[str, Any] | None:
    run = running.api(f"/dags/{DAG_ID}/dagRuns/{run_id}")
    return run if run["state"] in FINISHED else None


def live_clusters(state_dir: Path) -> int:
    """Clusters whose state is not TERMINATED (STARTING, WAITING, RUNNING, TERMINATING)."""
    live = 0
    for cluster_id in cluster_ids(state_dir):
        try:
            state = local_cluster.describe_cluster(state_dir, cluster_id)["state"]
        except (OSError, ValueError):  # being created: counted at the next sample
            continue
        live += state != local_cluster.TERMINATED
    return live


def wait_for(
    running: Running, what: str, done: Callable[[], Any], every: Callable[[], None] | None = None
) -> Any:
    """Poll `done` (and call `every`) each half second until it returns something truthy;
    fail at once when a component of the stack exited."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        if dead := client.dead_components(running.stack):
            raise AssertionError(f"{what}: Airflow's {dead} exited; see {running.stack.log_dir}")
        if every:
            every()
        result = done()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {RUN_TIMEOUT_S} s")
        time.sleep(0.5)


def day_bounds(dt: date) -> tuple[str, str]:
    """The first and last second of a UTC day: a backfill from D1's first to D3's last second
    creates the runs whose data interval starts on D1, D2 and D3, whatever FRUITS_DAILY_AT."""
    return f"{dt.isoformat()}T00:00:00+00:00", f"{dt.isoformat()}T23:59:59+00:00"


def interval_start(dt: date) -> str:
    return f"{dt.isoformat()}T{DAILY_AT[0]:02d}:{DAILY_AT[1]:02d}:00Z"


def reduced_rows(lake: Lake, dt: date) -> list[dict[str, Any]]:
    rows = pq.read_table(lake.reduced(dt)).to_pylist()
    return sorted(rows, key=lambda row: row["path"])


def dataset_files(lake: Lake, dt: date) -> set[str]:
    """The reduced data's file names (Spark puts a new write id in them at each write)."""
    return {path.name for path in Path(lake.reduced(dt)).iterdir()}


def try_numbers(running: Running, run_id: str) -> dict[str, int]:
    return {task: ti["try_number"] for task, ti in running.task_instances(run_id).items()}


def explain(running: Running, run_ids: list[str]) -> str:
    """Context for a failed assertion: the states of the runs' tasks."""
    return "\n".join(f"{run_id}: {running.task_states(run_id)}" for run_id in run_ids)


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[Running]:
    """The stack, with uploads for D_UI, D1 and D3 and an empty upload folder for D2.

    Its home is in a temporary folder of its own that others may cross: run by root, the
    stack's PostgreSQL runs as the `postgres` user, which cannot enter pytest's tmp_path.
    """
    tmp = tmp_path_factory.mktemp("airflow-running")
    home_parent = Path(tempfile.mkdtemp(prefix="fruits-airflow-running-"))
    home_parent.chmod(0o711)
    lake = Lake(str(tmp / "lake"))
    for seed, dt in enumerate((D_UI, D1, D3)):
        counts = make_synthetic_fruits(Path(lake.raw(dt)), n_classes=2, per_class=3, seed=seed)
        assert sum(counts.values()) == IMAGES
    Path(lake.raw(D2)).mkdir(parents=True)
    config = stack_config.StackConfig(
        home=home_parent / "airflow-home",
        lake=Path(lake.root),
        port=procs.free_port(),
        state_dir=tmp / "clusters",
        weights="random",
        env={
            "FRUITS_MAX_ACTIVE_RUNS": str(MAX_ACTIVE_RUNS),
            "FRUITS_DAILY_AT": f"{DAILY_AT[0]:02d}:{DAILY_AT[1]:02d}",
            # The refit DAG's default: weekly, hence a DAG that can be backfilled.
            "FRUITS_REFIT_SCHEDULE": "0 6 * * 0",
            # A safety net: a cluster nobody terminates stops by itself.
            "FRUITS_LOCAL_IDLE_TIMEOUT_S": "600",
        },
    )
    try:
        stack = components.start(config)
        yield Running(config, stack, lake, client.api_token(stack))
    finally:
        # Whatever failed: nothing of the stack, nor of its clusters, keeps running.
        try:
            components.stop(config.home)
        finally:
            shutil.rmtree(home_parent, ignore_errors=True)


def test_a_a_run_triggered_from_the_ui_form_publishes_its_partition(running):
    if not CHROMIUM.is_file():
        pytest.skip(f"needs Debian's Chromium at {CHROMIUM}: run scripts/install-chromium.sh")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright: pip install -r requirements-dev.txt"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    stack = running.stack
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1700})
            page.set_default_timeout(60_000)
            page.goto(stack.url)
            page.wait_for_url("**/auth/login**")
            page.get_by_label("Username").fill(stack.user)
            page.get_by_label("Password").fill(stack.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{stack.url}/")

            page.goto(f"{stack.url}/dags/{DAG_ID}")
            page.get_by_role("button", name="Trigger Dag").click()
            form = page.get_by_role("dialog")
            sync_api.expect(form.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
            # The DAG starts paused; the form unpauses it, as a user leaves it.
            unpause = form.get_by_role("checkbox", name=f"Unpause {DAG_ID} on trigger")
            sync_api.expect(unpause).to_be_checked()
            form.locator("#element_partition_date").fill(D_UI.isoformat())
            form.locator("input[name=element_variance]").fill("0.8")
            sync_api.expect(form.locator("input[name=element_variance]")).to_have_value("0.8")
            sync_api.expect(form.locator("input[name=element_weights]")).to_have_value("random")
            form.screenshot(path=ARTIFACTS / "airflow-trigger-form.png")
            form.get_by_role("button", name="Trigger", exact=True).click()

            page.wait_for_url(f"**/dags/{DAG_ID}/runs/**")
            run_id = unquote(page.url.split("/runs/", 1)[1])
            run = wait_for(running, f"run {run_id}", lambda: finished_run(running, run_id))
            page.reload()
            # The run's badge and each of its task instances.
            sync_api.expect(page.get_by_text("Success", exact=True)).to_have_count(
                1 + len(ALL_TASKS)
            )
            page.screenshot(path=ARTIFACTS / "airflow-run-success.png", full_page=True)
        finally:
            browser.close()

    assert run["state"] == "success", explain(running, [run_id])
    assert (run["run_type"], run["triggered_by"], run["triggering_user_name"]) == (
        "manual",
        "ui",
        stack.user,
    )
    assert run["conf"] == {
        "partition_date": D_UI.isoformat(),
        "variance": 0.8,
        "k": None,
        "max_error_ratio": 0.05,
        "weights": "random",
    }
    assert running.task_states(run_id) == expected_states()
    assert running.api(f"/dags/{DAG_ID}")["is_paused"] is False

    lake = running.lake
    manifest = json.loads(Path(lake.manifest(D_UI)).read_text())
    # The lake's first run: it fits the basis, with the variance given in the form.
    assert manifest["mode"] == "fit"
    fitted = basis.manifest(LocalLakeStorage(), lake, manifest["basis"])
    assert (fitted["variance_threshold"], fitted["fixed_k"]) == (0.8, None)
    assert fitted["fit_on"] == {"days": [D_UI.isoformat()], "rows": IMAGES}
    assert manifest["rows"] == IMAGES
    k = manifest["k"]
    assert 1 <= k < IMAGES
    assert manifest["explained_variance"] >= 0.8
    assert json.loads(Path(lake.success_marker(D_UI)).read_text()) == {
        "partition": D_UI.isoformat(),
        "images_found": IMAGES,
        "featurized": IMAGES,
        "errors": 0,
        "reduced": IMAGES,
        "basis": manifest["basis"],
        "k": k,
        "explained_variance": manifest["explained_variance"],
        "error_ratio": 0.0,
    }
    assert [len(row["pca_features"]) for row in reduced_rows(lake, D_UI)] == [k] * IMAGES
    assert len(cluster_ids(running.state_dir)) == 1


def backfill(
    running: Running, first: date, last: date, *extra: str
) -> tuple[dict[date, dict[str, Any]], int, list[str]]:
    """Create a backfill of the days first..last with the CLI, as a user would (without
    `--max-active-runs`), and wait until the scheduler completes it.

    Returns its runs by the day their data interval starts, the most clusters alive at once
    while it ran, and the clusters it created.
    """
    before = set(cluster_ids(running.state_dir))
    from_date, _ = day_bounds(first)
    _, to_date = day_bounds(last)
    command = [
        "backfill", "create", "--dag-id", DAG_ID, "--from-date", from_date, "--to-date", to_date,
        *extra,
    ]  # fmt: skip
    created = running.airflow(*command)
    assert created.returncode == 0, (created.stdout + created.stderr)[-6000:]
    backfills = running.api(f"/backfills?dag_id={DAG_ID}")["backfills"]
    backfill_id = max(b["id"] for b in backfills)
    # Not Airflow's default of 10: the DAG's limit, which the stack's local settings give a
    # backfill created without one.
    assert running.api(f"/backfills/{backfill_id}")["max_active_runs"] == MAX_ACTIVE_RUNS
    peak = 0

    def sample() -> None:
        nonlocal peak
        peak = max(peak, live_clusters(running.state_dir))

    wait_for(
        running,
        f"backfill {backfill_id}",
        lambda: running.api(f"/backfills/{backfill_id}")["completed_at"],
        every=sample,
    )
    days = {interval_start(first + timedelta(days=n)) for n in range((last - first).days + 1)}
    runs = {
        date.fromisoformat(run["logical_date"][:10]): run
        for run in running.runs(run_type="backfill").values()
        if run["logical_date"] in days
    }
    return runs, peak, sorted(set(cluster_ids(running.state_dir)) - before)


@pytest.fixture(scope="module")
def backfilled(running) -> dict[str, Any]:
    """A backfill of D1..D3, then one of D2..D3 reprocessing completed runs (the skipped D2 and
    the published D3; D1 is left out to save a run: D3 shows the same)."""
    running.unpause()
    first, first_peak, first_clusters = backfill(running, D1, D3)
    first_rows = {dt: reduced_rows(running.lake, dt) for dt in (D1, D3)}
    first_files = {dt: dataset_files(running.lake, dt) for dt in (D1, D3)}
    first_tries = {dt: try_numbers(running, run["dag_run_id"]) for dt, run in first.items()}
    second = backfill(running, D2, D3, "--reprocess-behavior", "completed")
    return {
        "first": (first, first_peak, first_clusters),
        "before_second": (first_rows, first_files, first_tries),
        "second": second,
    }


def test_b_a_backfill_publishes_each_day_and_skips_the_empty_one(running, backfilled):
    by_day, peak, clusters = backfilled["first"]
    lake = running.lake
    ids = [run["dag_run_id"] for run in by_day.values()]
    assert sorted(by_day) == [D1, D2, D3], by_day
    for dt, run in by_day.items():
        # The run for the interval [D, D+1) processes dt=D.
        assert run["data_interval_start"] == interval_start(dt)
        assert run["data_interval_end"] == interval_start(dt + timedelta(days=1))
        assert run["state"] == "success", explain(running, ids)
        assert run["conf"] == {}
    for dt in (D1, D3):
        run_id = by_day[dt]["dag_run_id"]
        assert running.task_states(run_id) == expected_states()
        assert running.xcom(run_id, "check_uploads")["partition"] == dt.isoformat()
        marker = json.loads(Path(lake.success_marker(dt)).read_text())
        assert (marker["partition"], marker["images_found"], marker["reduced"]) == (
            dt.isoformat(),
            IMAGES,
            IMAGES,
        )
        # Every day in the lake's one basis, with its k.
        manifest = json.loads(Path(lake.manifest(dt)).read_text())
        current = basis.current(LocalLakeStorage(), lake)[1]["basis"]
        assert (manifest["basis"], marker["basis"]) == (current, current)
        assert manifest["k"] == basis.manifest(LocalLakeStorage(), lake, current)["k"]

    empty = by_day[D2]["dag_run_id"]
    assert running.task_states(empty) == SKIPPED_RUN
    assert f"Partition dt={D2}: 0 images under {lake.raw(D2)}" in running.task_log(
        empty, "check_uploads"
    )
    for dataset in ("features", "errors", "reduced", "reports"):
        assert not (Path(lake.root) / dataset / f"dt={D2}").exists(), dataset

    # One cluster per day with uploads, none for the empty day; all terminated.
    assert len(clusters) == 2, clusters
    for cluster_id in clusters:
        cluster = local_cluster.describe_cluster(running.state_dir, cluster_id)
        assert (cluster["state"], cluster["reason"]) == ("TERMINATED", "user request")
    # Two days to process and one cluster at a time: never both clusters alive.
    assert peak == MAX_ACTIVE_RUNS == 1
    assert running.api(f"/dags/{DAG_ID}")["max_active_runs"] == MAX_ACTIVE_RUNS


def test_b_reprocessing_completed_runs_gives_identical_reduced_data(running, backfilled):
    first, _, _ = backfilled["first"]
    first_rows, first_files, first_tries = backfilled["before_second"]
    second, peak, clusters = backfilled["second"]
    lake = running.lake
    # The same runs, cleared and run again: every task that ran runs once more.
    assert sorted(second) == [D2, D3], second
    for dt, run in second.items():
        assert run["dag_run_id"] == first[dt]["dag_run_id"]
        assert run["state"] == "success", explain(running, [run["dag_run_id"]])
        ran = {task for task, tries in first_tries[dt].items() if tries}
        tries = try_numbers(running, run["dag_run_id"])
        assert {task: tries[task] - first_tries[dt][task] for task in ran} == dict.fromkeys(ran, 1)
    assert running.task_states(second[D2]["dag_run_id"]) == SKIPPED_RUN
    assert running.task_states(second[D3]["dag_run_id"]) == expected_states()
    assert len(clusters) == 1, clusters
    assert peak == 1
    # D3 rewritten (Spark names each write's files anew) with the same rows; D1 untouched.
    assert dataset_files(lake, D3) != first_files[D3]
    assert reduced_rows(lake, D3) == first_rows[D3]
    assert len(first_rows[D3]) == IMAGES
    assert dataset_files(lake, D1) == first_files[D1]
    assert reduced_rows(lake, D1) == first_rows[D1]
    assert Path(lake.success_marker(D3)).is_file()
    assert not (Path(lake.root) / "reports" / f"dt={D2}").exists()


# Days without uploads (their runs skip without a cluster) for the commands started at once.
E1, E2, E_TRIGGER = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 5)
# Two Sundays of the refit DAG's weekly schedule, at or after its start_date.
REFIT_FROM, REFIT_TO = date(2026, 1, 4), date(2026, 1, 11)


def test_b_backfills_and_a_trigger_at_once_through_the_plain_cli(running, backfilled):
    """Two backfills (one per DAG: Airflow allows one running backfill per DAG) and a manual
    trigger, three plain `airflow` processes started together while the scheduler schedules:
    on PostgreSQL every one succeeds, none meets "database is locked", the scheduler stays
    up, and the runs are there. The refit DAG stays paused (unpausing it would schedule a
    refit of the last days): its backfill's runs wait, queued, and the backfill is cancelled.
    """
    running.unpause()
    run_id = "cli_at_once"
    conf = {"partition_date": E_TRIGGER.isoformat()}
    refit_conf = {"from_date": "2025-01-01", "to_date": "2025-01-02"}  # no published day
    commands = {
        "backfill": [
            "backfill", "create", "--dag-id", DAG_ID,
            "--from-date", day_bounds(E1)[0], "--to-date", day_bounds(E2)[1],
        ],
        "refit backfill": [
            "backfill", "create", "--dag-id", REFIT_DAG_ID, "--dag-run-conf",
            json.dumps(refit_conf), "--from-date", day_bounds(REFIT_FROM)[0],
            "--to-date", day_bounds(REFIT_TO)[1],
        ],
        "trigger": ["dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf)],
    }  # fmt: skip
    started = {
        name: subprocess.Popen(
            running.airflow_command(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in commands.items()
    }
    outputs, codes = {}, {}
    for name, proc in started.items():
        outputs[name] = proc.communicate(timeout=300)[0]
        codes[name] = proc.returncode
    report = "\n".join(
        f"--- {name} ({codes[name]}):\n{out[-3000:]}"
        for name, out in outputs.items()
    )
    assert codes == dict.fromkeys(commands, 0), report
    assert not [name for name, out in outputs.items() if "database is locked" in out], report

    # The scheduler and the other components are still up, and say so.
    assert client.dead_components(running.stack) == []
    assert client.health(running.stack) == dict.fromkeys(client.HEALTH_KEYS, "healthy")

    backfills = running.api(f"/backfills?dag_id={DAG_ID}")["backfills"]
    refits = running.api(f"/backfills?dag_id={REFIT_DAG_ID}")["backfills"]
    assert len(refits) == 1, refits
    features, refit = max(backfills, key=lambda b: b["id"]), refits[0]
    assert features["from_date"][:10] == E1.isoformat(), features
    # Neither names a limit: each gets its DAG's (fruits_pca_basis: 1).
    assert (features["max_active_runs"], refit["max_active_runs"]) == (MAX_ACTIVE_RUNS, 1)

    refit_runs = running.api(f"/dags/{REFIT_DAG_ID}/dagRuns?run_type=backfill")["dag_runs"]
    assert sorted(run["logical_date"][:10] for run in refit_runs) == [
        REFIT_FROM.isoformat(),
        REFIT_TO.isoformat(),
    ]
    assert {run["state"] for run in refit_runs} == {"queued"}
    assert all(run["conf"] == refit_conf for run in refit_runs)
    cancelled = running.api(f"/backfills/{refit['id']}/cancel", method="PUT")
    assert cancelled["completed_at"]

    # The runs of fruits_features run to the end (days without uploads: they skip).
    wait_for(
        running,
        f"backfill {features['id']}",
        lambda: running.api(f"/backfills/{features['id']}")["completed_at"],
    )
    triggered = wait_for(running, f"run {run_id}", lambda: finished_run(running, run_id))
    assert (triggered["run_type"], triggered["conf"]) == ("manual", conf)
    days = {interval_start(E1), interval_start(E2)}
    backfilled_runs = [
        run for run in running.runs(run_type="backfill").values() if run["logical_date"] in days
    ]
    assert len(backfilled_runs) == 2, backfilled_runs
    for run in [*backfilled_runs, triggered]:
        assert run["state"] == "success", explain(running, [run["dag_run_id"]])
        assert running.task_states(run["dag_run_id"]) == SKIPPED_RUN
    assert client.dead_components(running.stack) == []


def test_c_the_daily_run_processes_the_previous_complete_day(running):
    running.unpause()
    scheduled = wait_for(
        running,
        "a scheduled run",
        lambda: [r for r in running.runs(run_type="scheduled").values() if r["state"] in FINISHED],
    )
    now = datetime.now(UTC)
    dag = running.api(f"/dags/{DAG_ID}")
    run = max(scheduled, key=lambda r: r["data_interval_start"])
    start = datetime.fromisoformat(run["data_interval_start"])
    end = datetime.fromisoformat(run["data_interval_end"])
    # The last complete day interval [D 02:00, D+1 02:00), fired at its end: the next
    # one is still to come.
    assert (start.hour, start.minute) == DAILY_AT
    assert end == start + timedelta(days=1)
    assert end <= now < datetime.fromisoformat(dag["next_dagrun_run_after"])
    assert datetime.fromisoformat(run["run_after"]) == end
    assert run["logical_date"] == run["data_interval_start"]
    # No uploads for that day in this lake: the run looks at dt=<start day> and skips.
    day = start.date()
    assert run["state"] == "success"
    assert running.task_states(run["dag_run_id"]) == SKIPPED_RUN
    assert f"Partition dt={day}: 0 images under {running.lake.raw(day)}" in running.task_log(
        run["dag_run_id"], "check_uploads"
    )
    # The next one: the following day, once it is over.
    next_start = datetime.fromisoformat(dag["next_dagrun_data_interval_start"])
    assert next_start == end
    assert datetime.fromisoformat(dag["next_dagrun_data_interval_end"]) == end + timedelta(days=1)
    assert datetime.fromisoformat(dag["next_dagrun_run_after"]) == end + timedelta(days=1)
    assert dag["timetable_summary"] == f"{DAILY_AT[1]} {DAILY_AT[0]} * * *"


def test_d_stopping_leaves_no_process(running):
    home, state_dir = Path(running.config.home).resolve(), running.state_dir
    server = postgres.postmaster(home)
    assert server is not None and server.pid == running.stack.postgres["pid"]
    # The server, its background processes and the backends of Airflow's connections.
    database = [server, *server.children(recursive=True)]
    assert len(database) > 3
    stopped = components.stop(home)
    print(f"\nstopped: {stopped}")
    assert f"process group {running.stack.pgid}" in stopped
    assert stopped[-1] == "postgres"  # last, after Airflow
    assert components.leftover_processes(home) == []
    assert processes_naming(home, state_dir) == []
    assert [proc.pid for proc in database if not is_gone(proc.pid)] == []
    assert postgres.postmaster(home) is None
    assert not (home / stack_config.ENV_FILE).exists()
    for cluster_id in cluster_ids(state_dir):
        assert local_cluster.cluster_processes_alive(state_dir, cluster_id) == []
        assert local_cluster.describe_cluster(state_dir, cluster_id)["state"] == "TERMINATED"
    assert not (home / stack_config.STACK_FILE).exists()
    assert client.health(running.stack) is None


def processes_naming(*paths: Path) -> list[str]:
    """Processes (not zombies, not this one) with one of the paths as AIRFLOW_HOME,
    FRUITS_LOCAL_STATE_DIR or FRUITS_AIRFLOW_STACK, or in their command line."""
    texts = {str(path) for path in paths}
    names = ("AIRFLOW_HOME", "FRUITS_LOCAL_STATE_DIR", stack_config.STACK_ENV)

    def naming(cmdline: str, environ: dict[str, str]) -> bool:
        return bool({environ.get(name) for name in names} & texts) or any(
            t in cmdline for t in texts
        )

    return live_processes(naming)
