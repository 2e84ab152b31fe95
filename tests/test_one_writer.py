"""One writer per day, on real processes (issue R2 1/5, cases 6 and 7).

Real `airflow dags test` processes of the local backend, each with an AIRFLOW_HOME of its own
(as two `make demo`s, or two Airflow workers, would have), on one lake and one date:

1. a second run started while the first holds the day fails at once, naming the first, and
   creates no cluster; the first publishes every row once;
2. a rerun is killed with `kill -9` while its featurize step runs; its cluster runs on (as on
   EMR when an Airflow worker dies). A run started then is refused: the orphan's cluster is
   alive. The orphan's steps finish, writing only their own staging folder: the published day
   stays byte-identical;
3. once the orphan's cluster is gone, the next run takes the lease over, clears the orphan's
   staging and publishes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from devtools import throwaway
from devtools.samples import make_synthetic_fruits
from fruits_pipeline import lease
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.backends.local import runner as local_runner
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from tests.support import dag_harness
from tests.support.dag_harness import ClusterStateDirs, cluster_ids, cluster_leftovers, tree_digest

pytestmark = pytest.mark.slow

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
D = date(2026, 4, 1)
IMAGES = 12
PUBLISHED = ("features", "errors", "reduced", "reports")
GRACE_S = 15


@dataclass
class World(ClusterStateDirs):
    tmp: Path
    lake: Lake
    template_home: Path

    def home(self, name: str) -> Path:
        return self.tmp / f"home-{name}"

    def start(self, name: str) -> subprocess.Popen:
        """`airflow dags test` of D in a new session, with a migrated home of its own."""
        home = self.home(name)
        home.mkdir()
        shutil.copyfile(self.template_home / "airflow.db", home / "airflow.db")
        env = throwaway.airflow_env(home, Path(self.lake.root), "random") | {
            "FRUITS_LOCAL_STATE_DIR": str(self.state_dir(name)),
            "FRUITS_LOCAL_IDLE_TIMEOUT_S": "600",
            "FRUITS_LEASE_GRACE_S": str(GRACE_S),
        }
        # No owner: like a cluster made by an Airflow worker, it outlives whoever started it.
        env.pop("FRUITS_LOCAL_CLUSTER_OWNER", None)
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed by finish)
        return subprocess.Popen(
            [AIRFLOW, "dags", "test", "fruits_features", "--conf",
             json.dumps({"partition_date": D.isoformat()})],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def finish(self, name: str, proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
        code = proc.wait(timeout=timeout)
        return code, (self.tmp / f"{name}.log").read_text(errors="replace")

    def published(self) -> dict[str, dict[str, str]]:
        return {
            dataset: tree_digest(Path(self.lake.root) / dataset / f"dt={D.isoformat()}")
            for dataset in PUBLISHED
        }

    def holder(self) -> lease.Lease:
        found = lease.current(LocalLakeStorage(), self.lake, D)
        assert found is not None and not found[1], found
        return found[0]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def steps_of(state_dir: Path) -> list[dict]:
    """The steps of the (single) cluster under `state_dir`, as describe_step reports them."""
    ids = cluster_ids(state_dir)
    if not ids:
        return []
    steps_file = state_dir / ids[0] / "steps.json"
    if not steps_file.is_file():
        return []
    return [
        local_runner.describe_step(state_dir, ids[0], step["step_id"])
        for step in json.loads(steps_file.read_text())
    ]


def assert_refused(world: World, name: str, holder: lease.Lease) -> None:
    """The run failed at prepare_run naming the holder, and created no cluster."""
    code, output = world.finish(name, world.start(name), timeout=300)
    assert code != 0, output[-4000:]
    assert f"dt={D.isoformat()} is being written by run {holder.run_id!r}" in output, output[-4000:]
    assert holder.token in output
    assert cluster_ids(world.state_dir(name)) == []


def published_rows(world: World) -> list[str]:
    return sorted(pq.read_table(world.lake.features(D)).column("path").to_pylist())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("one-writer")
    lake = Lake(str(tmp / "lake"))
    assert sum(make_synthetic_fruits(Path(lake.raw(D)), n_classes=3, per_class=4).values()) == 12
    template = tmp / "home-template"
    template.mkdir()
    dag_harness.migrate_demo_home(template, lake)
    yield World(tmp, lake, template)
    dag_harness.terminate_clusters(tmp)


def test_two_runs_of_one_day_at_once_the_second_is_refused_naming_the_first(world):
    first = world.start("first")
    holder = wait_for(
        lambda: lease.current(LocalLakeStorage(), world.lake, D), 120, "the first run's lease"
    )[0]
    assert holder.run_id.startswith("manual__")

    assert_refused(world, "second", holder)

    code, output = world.finish("first", first)
    assert code == 0, output[-6000:]
    assert Path(world.lake.success_marker(D)).is_file()
    rows = published_rows(world)
    assert len(rows) == IMAGES and len(set(rows)) == IMAGES  # every photo once
    assert pq.read_table(world.lake.reduced(D)).num_rows == IMAGES
    assert list((Path(world.lake.root) / "staging").glob("*/*")) == []
    assert lease.current(LocalLakeStorage(), world.lake, D)[1] is True  # released
    assert cluster_leftovers(world.state_dir("first"), world.home("first")) == []


def test_a_killed_runs_orphan_steps_never_touch_the_published_day(world):
    published = world.published()
    assert "_SUCCESS" in published["reports"]

    rerun = world.start("killed")
    wait_for(
        lambda: any(s["state"] == "RUNNING" for s in steps_of(world.state_dir("killed"))),
        180,
        "the rerun's featurize step",
    )
    orphan = world.holder()
    os.killpg(rerun.pid, signal.SIGKILL)
    rerun.wait(timeout=30)
    (orphan_cluster,) = cluster_ids(world.state_dir("killed"))
    assert local_cluster.cluster_processes_alive(world.state_dir("killed"), orphan_cluster)

    # While the orphan's cluster lives, its lease holds: another run is refused.
    assert_refused(world, "while-orphaned", orphan)

    # The orphan's steps run to their end, writing their own staging folder only.
    steps = wait_for(
        lambda: [s for s in steps_of(world.state_dir("killed")) if s["state"] == "COMPLETED"]
        if all(s["state"] == "COMPLETED" for s in steps_of(world.state_dir("killed")))
        else None,
        400,
        "the orphan's featurize and PCA steps",
    )
    assert len(steps) == 2
    staged = Path(world.lake.reduced(D, orphan.token))
    assert pq.read_table(staged).num_rows == IMAGES
    assert world.published() == published
    assert world.holder() == orphan


def test_once_the_orphan_is_gone_the_next_run_takes_the_day_over(world):
    orphan = world.holder()
    (orphan_cluster,) = cluster_ids(world.state_dir("killed"))
    local_cluster.terminate_cluster(world.state_dir("killed"), orphan_cluster)
    grace_until = datetime.fromisoformat(orphan.grace_until)
    wait_for(lambda: datetime.now(UTC) >= grace_until, GRACE_S + 5, "the orphan's grace period")

    code, output = world.finish("takeover", world.start("takeover"))

    assert code == 0, output[-6000:]
    assert f"Took over the lease of dt={D.isoformat()} from run {orphan.run_id!r}" in output
    assert "its holder has no live cluster" in output
    marker = json.loads(Path(world.lake.success_marker(D)).read_text())
    assert (marker["images_found"], marker["reduced"]) == (IMAGES, IMAGES)
    rows = published_rows(world)
    assert len(rows) == IMAGES and len(set(rows)) == IMAGES
    # The orphan's staging was cleared by the run that took over; nothing is left staged.
    assert list((Path(world.lake.root) / "staging").glob("*/*")) == []
    assert lease.current(LocalLakeStorage(), world.lake, D)[1] is True
    for name in ("first", "second", "killed", "while-orphaned", "takeover"):
        assert cluster_leftovers(world.state_dir(name), world.home(name)) == [], name

