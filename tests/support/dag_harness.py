"""Running the `fruits_features` DAG in tests: an Airflow metadata DB, a fresh DAG parse, moto's
EMR driven step by step, and the outputs the Spark jobs would write.

`tests/conftest.py` registers the `airflow_db` fixture for every test module.

- `airflow_db` (module): a throwaway AIRFLOW_HOME with a migrated SQLite DB; Airflow's ORM in
  this process is pointed at it, whether or not airflow was imported before.
- `load_dag()`: the DAG file parsed now, under a unique module name, with the modules that
  read settings at import time (`fruits_pipeline.tasks`, `.backends`) imported afresh; wrap
  the test in `settings_modules_restored()`.
- `FakeEmr`: moto keeps steps RUNNING or PENDING forever; `FakeEmr.advance` moves a cluster's
  steps one transition, the way EMR would, running a fake job for each step that ends.
- `write_featurize_outputs`, `write_pca_outputs`: Parquet and JSON laid out as the real jobs
  write them, through any `LakeStorage`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from devtools.airflow_env import base_env
from fruits_pipeline.backends.local import cluster as local_cluster
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LakeStorage
from fruits_pipeline.settings import REPO_ROOT
from tests.support.processes import live_processes

REPO = REPO_ROOT
DAG_FILE = REPO / "dags" / "fruits_features.py"
REFIT_DAG_FILE = REPO / "dags" / "fruits_pca_basis.py"
FINAL_STEP_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED"})
_modules = itertools.count()


# One per test module: each module's DAGs declare their assets with the lake of that module, and
# a DB shared by modules would hold one asset name with several URIs and mark it inactive.
@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory) -> Iterator[Path]:
    """AIRFLOW_HOME of the module: SQLite metadata DB migrated, the repo's DAGs and plugins."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = base_env(home)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        airflow = Path(sys.executable).with_name("airflow")
        done = subprocess.run(
            [str(airflow), "db", "migrate"],
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        from airflow import settings

        # Airflow may have been imported (and its ORM configured) before this fixture ran.
        settings.configure_vars()
        settings.reconfigure_orm()
        yield home
        settings.dispose_orm()


# Modules that read the pipeline settings when imported.
SETTINGS_MODULES = (
    "fruits_pipeline.backends",
    "fruits_pipeline.tasks",
    "fruits_pipeline.refit_tasks",
)


def load_dag(dag_file: Path | None = None):
    """Parse the DAG file now, with the environment of the test (settings are read at parse
    time), under a module name of its own; the modules in SETTINGS_MODULES are imported anew.

    Use it inside `settings_modules_restored()`, so later tests get the modules they had."""
    import fruits_pipeline

    for name in SETTINGS_MODULES:
        sys.modules.pop(name, None)
        # `from fruits_pipeline import tasks` takes the package's attribute when it has one.
        attribute = name.rpartition(".")[2]
        if hasattr(fruits_pipeline, attribute):
            delattr(fruits_pipeline, attribute)
    name = f"fruits_features_under_test_{next(_modules)}"
    spec = importlib.util.spec_from_file_location(name, dag_file or DAG_FILE)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@contextmanager
def settings_modules_restored() -> Iterator[None]:
    """Put back the SETTINGS_MODULES imported before (or none) once the block ends."""
    import fruits_pipeline

    saved = {name: sys.modules.get(name) for name in SETTINGS_MODULES}
    try:
        yield
    finally:
        for name, module in saved.items():
            attribute = name.rpartition(".")[2]
            if module is None:
                sys.modules.pop(name, None)
                if hasattr(fruits_pipeline, attribute):
                    delattr(fruits_pipeline, attribute)
            else:
                sys.modules[name] = module
                setattr(fruits_pipeline, attribute, module)


# --- processes and files a local run leaves ----------------------------------------------------


class ClusterStateDirs:
    """For a test's world with a scratch folder `tmp`: a cluster state dir for each scenario."""

    tmp: Path

    def state_dir(self, scenario: str) -> Path:
        return self.tmp / f"clusters-{scenario}"


def cluster_ids(state_dir: Path) -> list[str]:
    """Ids of the local clusters started with `state_dir`, sorted."""
    if not state_dir.is_dir():
        return []
    return sorted(p.name for p in state_dir.iterdir() if (p / local_cluster.CLUSTER_FILE).is_file())


def migrate_demo_home(home: Path, lake: Lake) -> None:
    """Migrate the SQLite metadata DB of `home`, in the environment the demo runs Airflow with
    (random weights, the lake's root)."""
    from devtools import throwaway

    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
        env=throwaway.airflow_env(home, Path(lake.root), "random"),
        capture_output=True,
        check=True,
        timeout=300,
    )


def terminate_clusters(tmp: Path) -> None:
    """Terminate every local cluster of the state dirs `tmp/clusters-*`, whatever a test left."""
    for state_dir in tmp.glob("clusters-*"):
        for cluster_id in cluster_ids(state_dir):
            local_cluster.terminate_cluster(state_dir, cluster_id, reason="test teardown")


def leftover_processes(*markers: Path) -> list[str]:
    """Processes (not zombies) whose command line names one of the markers (a state dir, an
    AIRFLOW_HOME) or whose environment points FRUITS_LOCAL_STATE_DIR or AIRFLOW_HOME at one."""
    texts = {str(marker) for marker in markers}

    def marked(cmdline: str, environ: dict[str, str]) -> bool:
        named = {environ.get("FRUITS_LOCAL_STATE_DIR"), environ.get("AIRFLOW_HOME")} & texts
        return bool(named) or any(text in cmdline for text in texts)

    return live_processes(marked)


def cluster_leftovers(state_dir: Path, *markers: Path) -> list[str]:
    """Every trace of a run's processes: by marker, by cluster id and by Spark role."""
    found = leftover_processes(state_dir, *markers)
    for cluster_id in cluster_ids(state_dir):
        found += [
            f"{pid} (cluster {cluster_id})"
            for pid in local_cluster.cluster_processes_alive(state_dir, cluster_id)
        ]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        roles = ("deploy.master", "deploy.worker", "local_runner", "local_cluster")
        if any(role in cmdline for role in roles) and str(state_dir) in cmdline:
            found.append(f"{proc.pid}: {cmdline[:300]}")
    return found


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by path relative to root."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- what the Spark jobs write ------------------------------------------------------------


def _parquet(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _vectors(rows: int, dim: int, seed: int):
    import numpy as np
    import pyarrow as pa

    values = np.random.default_rng(seed).random((rows, dim), dtype=np.float32)
    return pa.array(list(values), type=pa.list_(pa.float32()))


def write_featurize_outputs(
    storage: LakeStorage,
    lake: Lake,
    dt: date,
    rows: list[tuple[str, str]],
    errors: list[tuple[str, str, str]],
    *,
    dim: int = 1280,
    run: str | None = None,
) -> None:
    """`features/dt=D/part-0.parquet` (path, label, features) for `rows` of (path, label), and
    `errors/dt=D/part-0.parquet` (path, label, error) for `errors` of (path, label, error);
    with `run`, in that run's staging folder (where the DAG's steps write)."""
    import pyarrow as pa

    features = pa.table(
        {
            "path": pa.array([path for path, _ in rows], pa.string()),
            "label": pa.array([label for _, label in rows], pa.string()),
            "features": _vectors(len(rows), dim, seed=1),
        }
    )
    failed = pa.table(
        {
            "path": pa.array([e[0] for e in errors], pa.string()),
            "label": pa.array([e[1] for e in errors], pa.string()),
            "error": pa.array([e[2] for e in errors], pa.string()),
        }
    )
    storage.write_bytes(f"{lake.features(dt, run)}/part-0.parquet", _parquet(features))
    storage.write_bytes(f"{lake.features(dt, run)}/_SUCCESS", b"")
    storage.write_bytes(f"{lake.errors(dt, run)}/part-0.parquet", _parquet(failed))
    storage.write_bytes(f"{lake.errors(dt, run)}/_SUCCESS", b"")


def write_pca_outputs(
    storage: LakeStorage,
    lake: Lake,
    dt: date,
    rows: list[tuple[str, str]],
    k: int,
    *,
    vector_length: int | None = None,
    explained_variance: float = 0.95,
    run: str | None = None,
    basis: str | None = None,
) -> None:
    """`reduced/dt=D/part-0.parquet` (path, label, pca_features of `vector_length`, default k,
    basis) and `reports/dt=D/manifest.json` saying the basis, k and the explained variance;
    with `run`, in that run's staging folder. `basis` defaults to the lake's current one, which
    is written (as the PCA step fitting it would) when it is not yet in the lake."""
    import pyarrow as pa

    basis = basis or current_basis_id(storage, lake)
    if not storage.exists(f"{lake.basis(basis)}/manifest.json"):
        write_basis(storage, lake, basis, k, days=[dt.isoformat()], rows=len(rows))
    reduced = pa.table(
        {
            "path": pa.array([path for path, _ in rows], pa.string()),
            "label": pa.array([label for _, label in rows], pa.string()),
            "pca_features": _vectors(len(rows), vector_length or k, seed=2),
            "basis": pa.array([basis] * len(rows), pa.string()),
        }
    )
    storage.write_bytes(f"{lake.reduced(dt, run)}/part-0.parquet", _parquet(reduced))
    storage.write_bytes(f"{lake.reduced(dt, run)}/_SUCCESS", b"")
    manifest = {
        "partition": dt.isoformat(),
        "basis": basis,
        "k": k,
        "explained_variance": explained_variance,
        "explained_variance_at_fit": 0.95,
    }
    storage.write_bytes(lake.manifest(dt, run), json.dumps(manifest).encode())


def write_basis(
    storage: LakeStorage,
    lake: Lake,
    basis: str,
    k: int,
    *,
    days: list[str],
    rows: int,
    weights: dict | None = None,
) -> None:
    """A basis's manifest as the PCA job writes it (its model is left out: nothing reads it)."""
    manifest = {"basis": basis, "fit_on": {"days": days, "rows": rows}, "k": k,
                "explained_variance": 0.95, "weights": weights}  # fmt: skip
    storage.write_bytes(f"{lake.basis(basis)}/manifest.json", json.dumps(manifest).encode())


def current_basis_id(storage: LakeStorage, lake: Lake) -> str:
    """The basis the lake's current record names (reserved by a run, or complete)."""
    from fruits_pipeline import basis

    found = basis.current(storage, lake)
    assert found is not None, "the lake has no current basis"
    return found[1]["basis"]


def lease_holder(storage: LakeStorage, lake: Lake, dt: date) -> str:
    """The token of the run holding the day's lease: where its steps write."""
    from fruits_pipeline import lease

    found = lease.current(storage, lake, dt)
    assert found is not None and not found[1], f"no run holds the lease of {dt}"
    return found[0].token


# --- moto's EMR, driven ---------------------------------------------------------------------

StepJob = Callable[[str], tuple[str, dict[str, str] | None]]
"""A fake step: given the step name, returns its final state and, when it failed, its
FailureDetails (Reason, Message, LogFile)."""


@dataclass
class FakeEmr:
    """Moves moto's EMR steps as EMR would: one transition per `advance` call.

    A step is seen RUNNING at least once (`on_running(name)` is called then), then ends with the
    state its job returns; a failed step cancels the steps after it (ActionOnFailure
    CANCEL_AND_WAIT). Jobs are chosen by step name prefix (`featurize`, `pca`).
    """

    backend: Any
    jobs: dict[str, StepJob]
    on_running: Callable[[str], None] = lambda name: None
    seen_running: set[str] = field(default_factory=set)
    transitions: list[tuple[str, str]] = field(default_factory=list)

    def advance(self, cluster_id: str) -> None:
        from moto.core.utils import utcnow

        steps = self.backend.clusters[cluster_id].steps
        pending = [step for step in steps if step.state not in FINAL_STEP_STATES]
        if not pending:
            return
        step = pending[0]
        if step.state == "PENDING" or step.id not in self.seen_running:
            step.state = "RUNNING"
            step.start_date_time = step.start_date_time or utcnow()
            self.seen_running.add(step.id)
            self.transitions.append((step.name, "RUNNING"))
            self.on_running(step.name)
            return
        job = self.jobs[step.name.split(" ")[0]]
        state, failure = job(step.name)
        step.state = state
        step.end_date_time = utcnow()
        step.failure_details = failure
        self.transitions.append((step.name, state))
        if state != "COMPLETED":
            for later in pending[1:]:
                later.state = "CANCELLED"
                self.transitions.append((later.name, "CANCELLED"))


def step_status_with_failure_details(original: property) -> property:
    """moto's Step.status has no FailureDetails; this one adds `step.failure_details` if set."""

    def status(step) -> dict[str, Any]:
        result = original.fget(step)
        details = getattr(step, "failure_details", None)
        if details:
            result["FailureDetails"] = details
        return result

    return property(status)


def answer_cancel_steps(monkeypatch, moto_step, reason: str) -> list[tuple[str, str, dict]]:
    """moto has no CancelSteps: answer it at the client boundary (botocore's, and
    aiobotocore's for a trigger) as EMR does, cancelling `moto_step`. Returns the CancelSteps
    requests made, as (operation, region, parameters)."""
    import aiobotocore.client
    import botocore.client

    requests: list[tuple[str, str, dict]] = []
    make_api_call = botocore.client.BaseClient._make_api_call
    make_api_call_async = aiobotocore.client.AioBaseClient._make_api_call

    def answer(client, operation, params) -> dict[str, Any]:
        requests.append((operation, client.meta.region_name, params))
        moto_step.state = "CANCELLED"
        return {
            "CancelStepsInfoList": [
                {"StepId": moto_step.id, "Status": "SUBMITTED", "Reason": reason}
            ]
        }

    def cancel_steps_answered(client, operation, params):
        if operation != "CancelSteps":
            return make_api_call(client, operation, params)
        return answer(client, operation, params)

    async def cancel_steps_answered_async(client, operation, params):
        if operation != "CancelSteps":
            return await make_api_call_async(client, operation, params)
        return answer(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", cancel_steps_answered)
    monkeypatch.setattr(
        aiobotocore.client.AioBaseClient, "_make_api_call", cancel_steps_answered_async
    )
    return requests
