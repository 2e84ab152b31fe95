"""The EMR path of `fruits_pca_basis` end to end: a refit of the lake's PCA basis, `dag.test()`
against moto, in the world of `tests/test_dag_emr.py` (the `pipeline` fixture of
`tests/support/emr_world.py`: mocked lake, moto's EMR moved by `FakeEmr`, every RunJobFlow
request recorded).

The lake holds three published days in an old basis, as daily runs leave it. The refit's two
steps are fake jobs writing what `spark_jobs/pca.py` (fit only) and `spark_jobs/reproject.py`
would write, at the places the step's own arguments name. Then: a refit over two of the three
days moves all three into the new basis; a refit whose reprojection fails leaves the lake exactly
as it was; a daily run started while a refit holds the lake fails before any cluster.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fruits_pipeline import basis, lease, refit
from fruits_pipeline.backends.emr.config import EmrSettings, job_flow_overrides, job_steps
from spark_jobs import basis as basis_files
from tests.support.dag_harness import (
    REFIT_DAG_FILE,
    REPO,
    load_dag,
    write_basis,
    write_featurize_outputs,
    write_pca_outputs,
)
from tests.support.emr_world import (
    BUCKET,
    IN_PROCESS_API_WARNING,
    LAKE,
    POKE_INTERVAL_S,
    REGION,
    UPLOADS,
    D,
    Pipeline,
    staged_prefix,
)
from tests.support.states import task_states

pytestmark = [pytest.mark.slow, IN_PROCESS_API_WARNING]

# The refit stages every job script (artifacts.artifact_files), reproject.py included: without
# it, take_leases fails with FileNotFoundError before any cluster.
REPROJECT_SCRIPT_MISSING = not (REPO / "spark_jobs" / "reproject.py").is_file()
needs_reproject_script = pytest.mark.xfail(
    REPROJECT_SCRIPT_MISSING,
    reason=(
        "product bug: spark_jobs/reproject.py does not exist, but steps.REPROJECT_SCRIPT names "
        "it and artifacts.artifact_files (plugins/fruits_pipeline/artifacts.py:69) reads it, so "
        "EmrBackend.plan_refit (and every EMR/local plan) raises FileNotFoundError in take_leases"
    ),
    strict=True,
)

# Three days published by daily runs, in an old basis of k=3 over 8-d features.
DAYS = [date(2025, 12, 29), date(2025, 12, 30), date(2025, 12, 31)]
WINDOW = DAYS[:2]  # the refit fits on two of them and moves all three
DIM, K_OLD, K_NEW = 8, 3, 2
OLD_BASIS = "basis-20251201T020000Z-0000000a"
# (path, label) of each day's rows: 7, 8 and 9 of them.
ROWS = {
    dt: [(f"{LAKE.raw(dt)}/Apple/apple_{i}.jpg", "Apple") for i in range(4 + n)]
    + [(f"{LAKE.raw(dt)}/Banana/banana_{i}.jpg", "Banana") for i in range(3)]
    for n, dt in enumerate(DAYS)
}
FIT, REPROJECT = "fit refit", "reproject refit"
REFIT_TASKS = (
    "check_window", "take_leases", "create_cluster", "add_steps", "watch_fit",
    "watch_reproject", "validate_refit", "switch_basis", "terminate_cluster",
    "restore_and_release",
)  # fmt: skip
REPROJECT_FAILURE = {
    "Reason": "Unknown Error.",
    "Message": "RuntimeError: reproject exploded",
    "LogFile": f"{LAKE.emr_logs()}j-FAKE/steps/s-REPROJECT/stderr.gz",
}
_refit_hours = iter(range(1, 100))


def always_alive(token: str, key: str) -> bool:
    """Every holder seen alive: only a release (or expiry) frees a lease."""
    return True


# --- the lake as daily runs left it -----------------------------------------------------------


def model_json(k: int, dim: int = DIM) -> bytes:
    """A PCA model as pca_math writes it: mean, scale, components (k x d), eigenvalues."""
    rng = np.random.default_rng(k)
    model = {
        "mean": rng.random(dim).tolist(),
        "scale": (1 + rng.random(dim)).tolist(),
        "components": np.eye(dim)[:k].tolist(),
        "eigenvalues": sorted(rng.random(dim).tolist(), reverse=True),
    }
    return json.dumps(model).encode()


def publish_days(pipeline: Pipeline) -> int:
    """The old basis, current; every day featurized, reduced in it, reported and published (its
    lease taken and released, as a daily run leaves it). Returns the basis's generation."""
    storage = pipeline.storage
    storage.write_bytes(basis_files.model_uri(LAKE.basis(OLD_BASIS)), model_json(K_OLD))
    write_basis(storage, LAKE, OLD_BASIS, K_OLD, days=[DAYS[0].isoformat()],
                rows=len(ROWS[DAYS[0]]))  # fmt: skip
    generation = basis.make_current(storage, LAKE, OLD_BASIS, after=None)
    for n, dt in enumerate(DAYS):
        token = f"{dt.strftime('%Y%m%d')}T020000Z-0000000{n}"
        lease.acquire(
            storage, LAKE, dt,
            lease.RunIdentity("fruits_features", f"scheduled__{dt.isoformat()}", token),
            lease.LeaseTerms(always_alive, 600, 3600),
        )  # fmt: skip
        rows = ROWS[dt]
        write_featurize_outputs(storage, LAKE, dt, rows, [], dim=DIM)
        write_pca_outputs(storage, LAKE, dt, rows, K_OLD, basis=OLD_BASIS, explained_variance=0.9)
        marker = {
            "partition": dt.isoformat(), "images_found": len(rows), "featurized": len(rows),
            "errors": 0, "reduced": len(rows), "basis": OLD_BASIS, "k": K_OLD,
            "explained_variance": 0.9, "error_ratio": 0.0,
        }  # fmt: skip
        storage.write_bytes(LAKE.success_marker(dt), json.dumps(marker).encode())
        assert lease.release(storage, LAKE, dt, token)
    return generation


def published(pipeline: Pipeline) -> dict[str, bytes]:
    """Every object under reduced/ and reports/, by URI."""
    found = {}
    for dataset in ("reduced", "reports"):
        folder = LAKE.days_of(dataset)
        for name in pipeline.keys(folder):
            found[f"{folder}/{name}"] = pipeline.storage.read_bytes(f"{folder}/{name}")
    return found


def read_table(pipeline: Pipeline, folder: str) -> pa.Table:
    parts = [name for name in pipeline.keys(folder) if name.endswith(".parquet")]
    return pa.concat_tables(
        pq.read_table(io.BytesIO(pipeline.storage.read_bytes(f"{folder}/{name}"))) for name in parts
    )


# --- the refit's steps, faked -----------------------------------------------------------------


def step_options(pipeline: Pipeline, step_name: str) -> dict[str, list[str]]:
    """The job arguments of the step (after its entry script), by option name."""
    (cluster_id,) = pipeline.cluster_ids()
    (step,) = [s for s in pipeline.steps(cluster_id) if s["Name"] == step_name]
    args = step["Config"]["Args"]
    script = next(i for i, arg in enumerate(args) if arg.endswith(".py"))  # the entry script
    options: dict[str, list[str]] = {}
    for arg in args[script + 1 :]:
        if arg.startswith("--"):
            key = arg[2:]
            options[key] = []
        else:
            options[key].append(arg)
    return options


def fit_job(pipeline: Pipeline, fitted: list[str]):
    """pca.py fit-only: the model, then the manifest that makes the basis complete."""

    def job(name: str) -> tuple[str, None]:
        options = step_options(pipeline, name)
        (folder,) = options["fit-basis"]
        (k,) = options["k"]
        rows = sum(read_table(pipeline, uri).num_rows for uri in options["input"])
        fitted.append(basis_files.basis_id_of(folder))
        manifest = {
            "basis": basis_files.basis_id_of(folder), "k": int(k), "explained_variance": 0.8,
            "fit_on": {"days": sorted(options["days"]), "rows": rows}, "feature_dim": DIM,
            "variance_threshold": None, "fixed_k": int(k), "weights": None,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        pipeline.storage.write_bytes(basis_files.model_uri(folder), model_json(int(k)))
        pipeline.storage.write_bytes(
            basis_files.manifest_uri(folder), json.dumps(manifest).encode()
        )
        return "COMPLETED", None

    return job


def reproject_job(pipeline: Pipeline, *, fail: bool = False):
    """reproject.py: every day's features in the new basis, into the refit's staging folder; with
    `fail`, dies after writing the first day."""

    def job(name: str) -> tuple[str, dict[str, str] | None]:
        options = step_options(pipeline, name)
        (basis_uri,) = options["basis"]
        (output,) = options["output"]
        (report,) = options["report"]
        fitted = json.loads(pipeline.storage.read_bytes(basis_files.manifest_uri(basis_uri)))
        basis_id, k = fitted["basis"], fitted["k"]
        for features, day in zip(options["input"], options["days"], strict=True):
            table = read_table(pipeline, features)
            vectors = np.random.default_rng(3).random((table.num_rows, k), dtype=np.float32)
            reduced = pa.table({
                "path": table.column("path"), "label": table.column("label"),
                "pca_features": pa.array(list(vectors), pa.list_(pa.float32())),
                "basis": pa.array([basis_id] * table.num_rows, pa.string()),
            })  # fmt: skip
            sink = io.BytesIO()
            pq.write_table(reduced, sink)
            pipeline.storage.write_bytes(f"{output}/dt={day}/part-0.parquet", sink.getvalue())
            pipeline.storage.write_bytes(f"{output}/dt={day}/_SUCCESS", b"")
            manifest = {
                "partition": day, "basis": basis_id, "k": k, "explained_variance": 0.75,
                "explained_variance_at_fit": fitted["explained_variance"],
                "basis_fit_on": fitted["fit_on"], "mode": "reprojected",
                "rows": table.num_rows, "feature_dim": DIM,
            }  # fmt: skip
            pipeline.storage.write_bytes(
                f"{report}/dt={day}/manifest.json", json.dumps(manifest).encode()
            )
            if fail:
                return "FAILED", REPROJECT_FAILURE
        return "COMPLETED", None

    return job


def run_refit(pipeline: Pipeline, **conf: Any):
    """One manual run of fruits_pca_basis over WINDOW with k=K_NEW; a new logical date each
    time."""
    dag = load_dag(REFIT_DAG_FILE)
    for task_id in ("watch_fit", "watch_reproject"):
        dag.get_task(task_id).poke_interval = POKE_INTERVAL_S
    logical_date = datetime(2026, 4, 1, next(_refit_hours), tzinfo=UTC)
    run_conf = {"from_date": WINDOW[0].isoformat(), "to_date": WINDOW[-1].isoformat(),
                "k": K_NEW} | conf  # fmt: skip
    return dag.test(logical_date=logical_date, run_conf=run_conf)


def assert_leases_released(pipeline: Pipeline, token: str) -> None:
    for key in (lease.REFIT, *DAYS):
        assert lease.holder(pipeline.storage, LAKE, key, always_alive) is None, key
        held, released = lease.current(pipeline.storage, LAKE, key)
        assert (held.token, released) == (token, True), key  # the refit took it, and gave it back


def the_cluster(pipeline: Pipeline) -> dict[str, Any]:
    ((region, (cluster_id,)),) = pipeline.clusters_by_region().items()
    assert region == REGION
    return pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]


# --- the tests --------------------------------------------------------------------------------


@needs_reproject_script
def test_a_refit_over_two_days_moves_all_three_into_the_new_basis_and_terminates(pipeline):
    generation = publish_days(pipeline)
    before = published(pipeline)
    fitted: list[str] = []
    pipeline.emr.jobs = {"fit": fit_job(pipeline, fitted), "reproject": reproject_job(pipeline)}

    run = run_refit(pipeline)

    assert task_states(run) == dict.fromkeys(REFIT_TASKS, "success")
    assert run.state == "success"
    (new,) = fitted
    assert new != OLD_BASIS
    # One RunJobFlow, in the EU region: the refit's cluster, tagged with its run token.
    prefix = staged_prefix()
    [call] = pipeline.run_job_flow_calls
    tags = {tag["Key"]: tag["Value"] for tag in call["overrides"]["Tags"]}
    token = tags["run_token"]
    assert call["region"] == REGION and REGION.startswith("eu-")
    assert call["overrides"]["Name"] == "refit fruits_pca_basis"
    assert (tags["project"], tags["partition"], tags["dag_id"]) == (
        "fruits",
        "refit",
        "fruits_pca_basis",
    )
    assert call["overrides"] == job_flow_overrides(
        EmrSettings(), LAKE, artifacts_prefix=prefix, dag_id="fruits_pca_basis",
        run_id=run.run_id, partition="refit", token=token,
    )  # fmt: skip
    cluster = the_cluster(pipeline)
    assert cluster["Name"].startswith("refit ")
    assert {t["Key"]: t["Value"] for t in cluster["Tags"]}["run_token"] == token
    assert cluster["Status"]["State"] in ("TERMINATED", "TERMINATING")
    # Two spark-submit steps in cluster mode, from the staged code: fit on the window, then
    # reproject every published day.
    steps = pipeline.steps(cluster["Id"])
    assert [step["Name"] for step in steps] == [FIT, REPROJECT]
    expected = job_steps(
        refit.refit_jobs(LAKE, token, basis_id=new, fit_days=WINDOW, moved_days=DAYS,
                         variance=None, k=K_NEW),
        prefix, "refit",
    )  # fmt: skip
    for step, script, planned in zip(steps, ("pca.py", "reproject.py"), expected, strict=True):
        assert step["Config"]["Jar"] == "command-runner.jar"
        assert step["Config"]["Args"][:3] == ["spark-submit", "--deploy-mode", "cluster"]
        assert f"{prefix}/{script}" in step["Config"]["Args"]
        assert step["Config"]["Args"] == planned["HadoopJarStep"]["Args"]
        assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
        assert step["Status"]["State"] == "COMPLETED"
    assert {"pca.py", "reproject.py", "spark_jobs.zip"} <= set(pipeline.keys(prefix))
    assert pipeline.emr.transitions == [
        (FIT, "RUNNING"), (FIT, "COMPLETED"), (REPROJECT, "RUNNING"), (REPROJECT, "COMPLETED"),
    ]  # fmt: skip
    assert pipeline.sensor_errors == {}
    # The new basis is current; the old one is kept.
    current_generation, record = basis.current(pipeline.storage, LAKE)
    assert (current_generation, record["basis"]) == (generation + 1, new)
    assert [(b["basis"], b["current"]) for b in basis.bases(pipeline.storage, LAKE)] == [
        (OLD_BASIS, False), (new, True),
    ]  # fmt: skip
    assert basis.manifest(pipeline.storage, LAKE, new)["fit_on"] == {
        "days": [dt.isoformat() for dt in WINDOW],
        "rows": sum(len(ROWS[dt]) for dt in WINDOW),
    }
    # Every day moved: its rows, its manifest and its _SUCCESS name the new basis.
    for dt in DAYS:
        reduced = read_table(pipeline, LAKE.reduced(dt))
        assert reduced.column("path").to_pylist() == [path for path, _ in ROWS[dt]]
        assert set(reduced.column("basis").to_pylist()) == {new}
        assert {len(v) for v in reduced.column("pca_features").to_pylist()} == {K_NEW}
        manifest = json.loads(pipeline.storage.read_bytes(LAKE.manifest(dt)))
        assert (manifest["basis"], manifest["k"], manifest["mode"]) == (new, K_NEW, "reprojected")
        marker = json.loads(pipeline.storage.read_bytes(LAKE.success_marker(dt)))
        old_marker = json.loads(before[LAKE.success_marker(dt)])
        assert marker == old_marker | {"basis": new, "k": K_NEW, "explained_variance": 0.75}
    assert pipeline.keys(f"{LAKE.root}/staging/refits") == []
    assert_leases_released(pipeline, token)
    assert pipeline.asset_events(run) == [
        ("fruits_pca_basis", f"s3://{BUCKET}/lake/models/current-basis",
         {"basis": new, "generation": generation + 1, "k": K_NEW, "days": len(DAYS)}),
    ]  # fmt: skip


@needs_reproject_script
def test_a_failed_reprojection_leaves_the_basis_and_every_day_as_they_were(pipeline):
    generation = publish_days(pipeline)
    before = published(pipeline)
    current_before = basis.current(pipeline.storage, LAKE)
    fitted: list[str] = []
    pipeline.emr.jobs = {
        "fit": fit_job(pipeline, fitted),
        "reproject": reproject_job(pipeline, fail=True),
    }

    run = run_refit(pipeline)

    assert run.state == "failed"
    assert task_states(run) == dict.fromkeys(REFIT_TASKS, "success") | {
        "watch_reproject": "failed",
        "validate_refit": "upstream_failed",
        "switch_basis": "upstream_failed",
    }
    assert pipeline.emr.transitions == [
        (FIT, "RUNNING"), (FIT, "COMPLETED"), (REPROJECT, "RUNNING"), (REPROJECT, "FAILED"),
    ]  # fmt: skip
    assert pipeline.sensor_errors == {
        "watch_reproject": (
            f"EMR job failed: for reason {REPROJECT_FAILURE['Reason']} with message "
            f"{REPROJECT_FAILURE['Message']} and log file {REPROJECT_FAILURE['LogFile']}"
        )
    }
    [call] = pipeline.run_job_flow_calls
    token = {tag["Key"]: tag["Value"] for tag in call["overrides"]["Tags"]}["run_token"]
    assert the_cluster(pipeline)["Status"]["State"] in ("TERMINATED", "TERMINATING")
    # The current basis and every published byte as before; the fitted basis and the staged
    # reprojection are gone.
    assert basis.current(pipeline.storage, LAKE) == current_before
    assert current_before[0] == generation
    assert published(pipeline) == before
    (new,) = fitted
    assert pipeline.keys(LAKE.basis(new)) == []
    assert [b["basis"] for b in basis.bases(pipeline.storage, LAKE)] == [OLD_BASIS]
    assert pipeline.keys(f"{LAKE.root}/staging/refits") == []
    assert_leases_released(pipeline, token)
    assert pipeline.asset_events(run) == []


def test_a_daily_run_started_during_a_refit_fails_at_prepare_run_before_any_cluster(
    pipeline, capfd
):
    publish_days(pipeline)
    pipeline.put_uploads(UPLOADS)
    before = published(pipeline)
    refit_token = "20260102T010000Z-0000abcd"  # noqa: S105 (a run token)
    # A refit in flight, as its take_leases task leaves the lake.
    held = lease.acquire(
        pipeline.storage, LAKE, lease.REFIT,
        lease.RunIdentity("fruits_pca_basis", "manual__refit-in-flight", refit_token),
        lease.LeaseTerms(always_alive, 900, 3600),
    )  # fmt: skip

    run = pipeline.run()

    assert run.state == "failed"
    states = task_states(run)
    assert (states["check_uploads"], states["prepare_run"]) == ("success", "failed")
    assert all(
        state != "success"
        for task_id, state in states.items()
        if task_id not in ("check_uploads", "prepare_run", "terminate_cluster",
                           "release_partition")
    ), states  # fmt: skip
    out, err = capfd.readouterr()
    assert (
        "the PCA basis is being refit by run 'manual__refit-in-flight' of fruits_pca_basis"
        in out + err
        and f"This run stops without touching dt={D.isoformat()}" in out + err
    ), (out + err)[-3000:]
    # No cluster, nothing staged, nothing published, the refit's lease untouched.
    assert pipeline.run_job_flow_calls == []
    assert pipeline.clusters_by_region() == {}
    assert pipeline.keys(f"{LAKE.root}/artifacts") == []
    assert published(pipeline) == before
    assert pipeline.keys(LAKE.features(D)) == []
    assert lease.holder(pipeline.storage, LAKE, lease.REFIT, always_alive) == held
    # It gave its day back: the day can run once the refit has ended.
    assert lease.holder(pipeline.storage, LAKE, D, always_alive) is None
    day_lease, released = lease.current(pipeline.storage, LAKE, D)
    assert released and day_lease.dag_id == "fruits_features"
