"""The EMR path of `fruits_features` end to end: `dag.test()` against moto, in this process.

Airflow 3's `dag.test()` runs every task in the test's process (`run_task_in_process`), so
`mock_aws` serves S3 and EMR to the provider's operators and sensors. moto never moves EMR steps
on its own: each sensor poke first advances the cluster one transition (`FakeEmr`), and a step
that ends writes what its Spark job would write to the mocked lake.
"""

from __future__ import annotations

import json

import pytest

from fruits_pipeline import basis, lease
from fruits_pipeline.backends.emr.config import EmrSettings, job_flow_overrides
from tests.support.dag_harness import lease_holder, write_basis, write_pca_outputs
from tests.support.emr_world import (
    BUCKET,
    FAILURE,
    FEATURIZE,
    FEATURIZED,
    IN_PROCESS_API_WARNING,
    LAKE,
    PCA,
    REGION,
    UPLOADS,
    D,
    K,
    Pipeline,
    featurize_job,
    pca_job,
    staged_prefix,
)
from tests.support.states import FEATURIZE_FAILED, SKIPPED_RUN, expected_states, task_states

pytestmark = [pytest.mark.slow, IN_PROCESS_API_WARNING]


def test_success_creates_one_cluster_runs_both_steps_publishes_and_terminates(pipeline):
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}

    run = pipeline.run()

    assert run.state == "success"
    assert task_states(run) == expected_states()
    # Exactly one RunJobFlow, in the EU region, with the spec emr_config plans.
    prefix = staged_prefix()
    [call] = pipeline.run_job_flow_calls
    token = {tag["Key"]: tag["Value"] for tag in call["overrides"]["Tags"]}["run_token"]
    expected = job_flow_overrides(
        EmrSettings(),
        LAKE,
        artifacts_prefix=prefix,
        dag_id="fruits_features",
        run_id=run.run_id,
        partition=D,
        token=token,
    )
    assert pipeline.run_job_flow_calls == [{"region": REGION, "overrides": expected}]
    assert expected["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    ((region, (cluster_id,)),) = pipeline.clusters_by_region().items()
    assert region == REGION
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.13.0"
    assert cluster["LogUri"] == f"s3://{BUCKET}/lake/logs/emr/"
    assert cluster["Name"] == f"dt={D.isoformat()} fruits_features"
    tags = {tag["Key"]: tag["Value"] for tag in cluster["Tags"]}
    assert (tags["project"], tags["partition"]) == ("fruits", D.isoformat())
    assert tags["dag_run"] == run.run_id
    assert cluster["Status"]["State"] == "TERMINATED"
    # Two spark-submit steps in cluster mode, run in order.
    steps = pipeline.steps(cluster_id)
    assert [step["Name"] for step in steps] == [FEATURIZE, PCA]
    for step, script in zip(steps, ("featurize.py", "pca.py"), strict=True):
        assert step["Config"]["Jar"] == "command-runner.jar"
        assert step["Config"]["Args"][:3] == ["spark-submit", "--deploy-mode", "cluster"]
        assert f"{prefix}/{script}" in step["Config"]["Args"]
        assert step["ActionOnFailure"] == "CANCEL_AND_WAIT"
        assert step["Status"]["State"] == "COMPLETED"
    assert steps[1]["Config"]["Args"][-4:-2] == ["--k", str(K)]
    assert pipeline.emr.transitions == [
        (FEATURIZE, "RUNNING"),
        (FEATURIZE, "COMPLETED"),
        (PCA, "RUNNING"),
        (PCA, "COMPLETED"),
    ]
    # The code was staged under its digest, encrypted at rest.
    staged = pipeline.keys(prefix)
    assert staged == sorted(
        ["bootstrap.sh", "featurize.py", "pca.py", "reproject.py", "requirements-jobs.txt",
         "spark_jobs.zip"]
    )
    for name in staged:
        head = pipeline.s3.head_object(Bucket=BUCKET, Key=LAKE.s3_key(f"{prefix}/{name}"))
        assert head["ServerSideEncryption"] == "AES256"
    # Published: _SUCCESS holds the validated numbers; the notes.txt upload did not count.
    # The lake had no basis: this run reserved the first one and its PCA step fit it.
    (generation, record) = basis.current(pipeline.storage, LAKE)
    assert generation == 1 and record["fit_by"]["token"] == token
    assert f"--fit-basis {LAKE.basis(record['basis'])} --k {K} --days {D}" in " ".join(
        steps[1]["Config"]["Args"]
    )
    marker = json.loads(pipeline.storage.read_bytes(LAKE.success_marker(D)))
    assert marker == {
        "partition": D.isoformat(),
        "images_found": 6,
        "featurized": 5,
        "errors": 1,
        "reduced": 5,
        "basis": record["basis"],
        "k": K,
        "explained_variance": 0.9,
        "error_ratio": pytest.approx(1 / 6),
    }
    assert pipeline.sensor_errors == {}
    # Both sensors deferred: their triggers polled the steps until each completed; the
    # teardown deferred too, and its trigger saw the cluster terminated.
    assert sorted(set(pipeline.trigger_polls)) == sorted(step["Id"] for step in steps)
    assert pipeline.other_polls == [("job_flow_terminated", cluster_id)]
    assert pipeline.asset_events(run) == [
        (
            "fruits_reduced_features",
            f"s3://{BUCKET}/lake/reduced",
            {"partition": D.isoformat(), "uri": LAKE.reduced(D), "rows": 5,
             "basis": record["basis"], "k": K},
        )
    ]  # fmt: skip


EARLIER_BASIS = "basis-20260101T020000Z-00000001"


def lake_with_a_basis(pipeline: Pipeline, weights: dict | None = None) -> None:
    """A basis fit on an earlier day, current, as a first run would have left it."""
    write_basis(pipeline.storage, LAKE, EARLIER_BASIS, K, days=["2026-01-01"], rows=40,
                weights=weights)  # fmt: skip
    record = {"basis": EARLIER_BASIS, "made_at": "2026-01-02T02:00:00+00:00", "fit_by": None}
    assert pipeline.storage.create_exclusive(
        f"{LAKE.current_basis()}/0000000001.json", json.dumps(record).encode()
    )


def test_a_later_day_applies_the_current_basis(pipeline):
    lake_with_a_basis(pipeline)
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}

    run = pipeline.run()

    assert run.state == "success"
    (cluster_id,) = pipeline.cluster_ids()
    pca_args = pipeline.steps(cluster_id)[1]["Config"]["Args"]
    assert pca_args[-4:] == ["--apply-basis", LAKE.basis(EARLIER_BASIS), "--wait-s", "3600"]
    assert "--k" not in pca_args and "--variance" not in pca_args
    assert basis.current(pipeline.storage, LAKE)[0] == 1  # no new basis
    marker = json.loads(pipeline.storage.read_bytes(LAKE.success_marker(D)))
    assert (marker["basis"], marker["k"]) == (EARLIER_BASIS, K)


def test_a_run_with_other_weights_than_the_basis_is_refused_before_any_cluster(
    pipeline, tmp_path, capfd
):
    lake_with_a_basis(pipeline, weights={"source": "/models/a.weights.h5", "sha256": "a" * 64})
    pipeline.put_uploads(UPLOADS)
    other = tmp_path / "b.weights.h5"
    other.write_bytes(b"other weights")

    run = pipeline.run({"weights": str(other)})

    assert run.state == "failed"
    states = task_states(run)
    assert (states["check_uploads"], states["prepare_run"]) == ("success", "failed")
    out, err = capfd.readouterr()
    assert (
        f"these features were made with {other} (sha256 " in out + err
        and f"but basis {EARLIER_BASIS} assumes /models/a.weights.h5 (sha256 aaaaaaaaaaaa…)"
        in out + err
    ), (out + err)[-3000:]
    assert pipeline.run_job_flow_calls == []
    # The day's lease was given back by prepare_run itself: a corrected run may go at once.
    assert lease.current(pipeline.storage, LAKE, D)[1] is True


def test_failed_featurize_step_fails_the_run_cancels_pca_and_terminates(pipeline, capfd):
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {"featurize": lambda name: ("FAILED", FAILURE), "pca": pca_job(pipeline)}

    run = pipeline.run()

    assert run.state == "failed"
    assert task_states(run) == FEATURIZE_FAILED
    assert pipeline.emr.transitions == [
        (FEATURIZE, "RUNNING"),
        (FEATURIZE, "FAILED"),
        (PCA, "CANCELLED"),
    ]
    message = (
        f"EMR job failed: for reason {FAILURE['Reason']} with message {FAILURE['Message']} "
        f"and log file {FAILURE['LogFile']}"
    )
    assert pipeline.sensor_errors == {"watch_featurize": message}
    assert message in capfd.readouterr().out
    assert len(pipeline.run_job_flow_calls) == 1
    (cluster_id,) = pipeline.cluster_ids()
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert not pipeline.storage.exists(LAKE.success_marker(D))
    assert pipeline.keys(LAKE.reduced(D)) == []
    assert pipeline.asset_events(run) == []


@pytest.mark.parametrize(
    ("reduced_rows", "vector_length", "problem"),
    [
        (FEATURIZED[:-1], K, "reduced rows (4) != featurized rows (5)"),
        (FEATURIZED, K + 1, f"5 reduced vectors do not have k={K} dimensions"),
    ],
    ids=["fewer-reduced-rows", "wrong-vector-length"],
)
def test_invalid_outputs_fail_the_run_at_validate_and_terminate(
    pipeline, monkeypatch, reduced_rows, vector_length, problem
):
    from fruits_pipeline import validation

    failures: list[str] = []
    validate_partition = validation.validate_partition

    def recording_validate_partition(*args, **kwargs):
        try:
            return validate_partition(*args, **kwargs)
        except validation.ValidationFailed as err:
            failures.append(str(err))
            raise

    monkeypatch.setattr(validation, "validate_partition", recording_validate_partition)
    pipeline.put_uploads(UPLOADS)
    pipeline.emr.jobs = {
        "featurize": featurize_job(pipeline),
        "pca": pca_job(pipeline, rows=reduced_rows, vector_length=vector_length),
    }

    run = pipeline.run()

    assert run.state == "failed"
    states = task_states(run)
    assert states.pop("validate") == "failed"
    assert states.pop("publish") == "upstream_failed"
    assert set(states.values()) == {"success"}, states
    assert failures == [f"partition dt={D.isoformat()} is not valid: {problem}"]
    (cluster_id,) = pipeline.cluster_ids()
    cluster = pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Status"]["State"] == "TERMINATED"
    assert not pipeline.storage.exists(LAKE.success_marker(D))
    assert pipeline.asset_events(run) == []


def test_no_uploads_skips_every_later_task_and_creates_no_cluster(pipeline):
    pipeline.put_uploads([])  # only notes.txt, which is not an image

    run = pipeline.run()

    assert run.state == "success"
    states = task_states(run)
    assert states == SKIPPED_RUN
    assert pipeline.run_job_flow_calls == []
    assert pipeline.clusters_by_region() == {}
    assert pipeline.emr_client.list_clusters()["Clusters"] == []
    assert pipeline.keys(f"{LAKE.root}/artifacts") == []
    assert pipeline.keys(LAKE.report(D)) == []


def test_rerun_of_a_published_partition_keeps_it_published_until_it_replaces_it(pipeline):
    marker = LAKE.success_marker(D)
    marker_at_featurize_running: list[bool] = []

    def on_running(step_name: str) -> None:
        if step_name == FEATURIZE:
            marker_at_featurize_running.append(pipeline.storage.exists(marker))

    pipeline.put_uploads(UPLOADS)
    pipeline.emr.on_running = on_running
    pipeline.emr.jobs = {"featurize": featurize_job(pipeline), "pca": pca_job(pipeline)}
    first = pipeline.run()
    assert first.state == "success"
    first_marker = json.loads(pipeline.storage.read_bytes(marker))
    assert first_marker["explained_variance"] == 0.9

    def rerun_pca(name: str) -> tuple[str, None]:
        # While the rerun's steps write, readers still see the first publication.
        assert json.loads(pipeline.storage.read_bytes(marker)) == first_marker
        run = lease_holder(pipeline.storage, LAKE, D)
        write_pca_outputs(
            pipeline.storage, LAKE, D, FEATURIZED, K, explained_variance=0.8, run=run
        )
        return "COMPLETED", None

    pipeline.emr.jobs["pca"] = rerun_pca
    second = pipeline.run()

    assert second.state == "success"
    assert second.run_id != first.run_id
    assert marker_at_featurize_running == [False, True]
    assert json.loads(pipeline.storage.read_bytes(marker)) == first_marker | {
        "explained_variance": 0.8
    }
    assert len(pipeline.run_job_flow_calls) == 2
    clusters = [
        pipeline.emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
        for cluster_id in pipeline.cluster_ids()
    ]
    assert [cluster["Status"]["State"] for cluster in clusters] == ["TERMINATED", "TERMINATED"]
