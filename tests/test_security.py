"""Security checks of issue 5/5: no secret in the repository (detect-secrets), lake writes
encrypted at rest, no credential in task logs or XComs, and every AWS call a run makes allowed
by the Airflow role of `infra/iam`.

Checked elsewhere, not repeated here:
- the cluster's IAM roles are those of `infra/iam/roles.json`:
  `tests/test_emr_config.py::test_cluster_roles_match_the_iam_files`,
  `::test_settings_defaults_use_the_iam_role_names`, `::test_pass_role_names_the_emr_roles`;
- the region is in the EU by default, others need an opt-in:
  `tests/test_emr_config.py::test_default_region_is_in_the_eu`,
  `::test_non_eu_regions_need_an_explicit_opt_in`, and the RunJobFlow region in
  `tests/test_dag_emr.py::test_success_creates_one_cluster_runs_both_steps_publishes_and_terminates`;
- staged code is encrypted (SSE-S3, or SSE-KMS with a key):
  `tests/test_artifacts.py::test_staging_uploads_every_file_encrypted`,
  `::test_staging_with_a_kms_key`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import boto3
import botocore.client
import pytest

from fruits_pipeline.lake_io import S3LakeStorage
from tests.support import emr_world
from tests.support.commands import run_command
from tests.support.emr_world import BUCKET, LAKE, REGION, D
from tests.support.iam import ACCOUNT, ROLES, render
from tests.support.s3 import mocked_bucket

REPO = Path(__file__).resolve().parents[1]
DETECT_SECRETS = Path(sys.executable).with_name("detect-secrets")
# Findings of the scanner known not to be secrets, as (file, hashed_secret), each with why:
# reviewed here one by one instead of in a `.secrets.baseline` file. `hashed_secret` is the sha1
# of the flagged string; in a file of your own, prefer a `# pragma: allowlist secret` comment.
ALLOWED_FINDINGS: frozenset[tuple[str, str]] = frozenset(
    {
        # 'change-me-lake-secret': the placeholder MinIO password of the local compose stack.
        # pragma: allowlist nextline secret
        (".env.example", "b06ef39b87e0c1075b90e0befee27f80892c2647"),
        # 'simple_auth_manager_passwords.json': a file name.
        # pragma: allowlist nextline secret
        ("devtools/stack/config.py", "3053500470616baae4f9451a25d57608f3158e63"),
        # The SPARK_CONF_DIR line of the Dockerfile, which that test looks for.
        # pragma: allowlist nextline secret
        ("tests/test_compose.py", "a3046c9d9a4a2d2c43c4633520a859cd28d95677"),
    }
)

# --- (1) no secret in the repository -----------------------------------------------------------


def repository_files() -> list[str]:
    """Files git tracks or would add (untracked but not ignored), that exist on disk."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (REPO / name).is_file())


def scan(paths: list[str], cwd: Path) -> dict[str, list[dict[str, Any]]]:
    """`detect-secrets scan PATH...`: findings by file, with their type, line and hash."""
    done = run_command([str(DETECT_SECRETS), "scan", *paths], cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)["results"]


def test_no_secret_in_repository():
    files = repository_files()
    assert "plugins/fruits_pipeline/backends/emr/config.py" in files and len(files) > 50

    findings = scan(files, REPO)

    unexpected = {
        (name, finding["type"], finding["line_number"])
        for name, found in findings.items()
        for finding in found
        if (name, finding["hashed_secret"]) not in ALLOWED_FINDINGS
    }
    assert unexpected == set(), "detect-secrets found possible secrets (file, type, line)"


def test_the_scanner_finds_a_fake_aws_key(tmp_path):
    """The scan above would catch a leaked access key: built here so the repo never holds one."""
    fake_key = "AKIA" + "Q7RZ" * 4
    (tmp_path / "settings.py").write_text(f'AWS_ACCESS_KEY_ID = "{fake_key}"\n')
    (tmp_path / "clean.py").write_text('REGION = "eu-west-3"\n')

    findings = scan(["settings.py", "clean.py"], tmp_path)

    assert {
        name: [(f["type"], f["line_number"]) for f in found] for name, found in findings.items()
    } == {"settings.py": [("AWS Access Key", 1)]}


# --- (3) lake writes are encrypted at rest -----------------------------------------------------


@pytest.fixture
def s3(monkeypatch):
    with mocked_bucket(monkeypatch, BUCKET, REGION) as client:
        yield client


def test_lake_writes_use_sse_s3_by_default_and_kms_when_configured(s3):
    key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
    default, with_kms = LAKE.success_marker(D), LAKE.manifest(D)

    S3LakeStorage(LAKE, s3).write_bytes(default, b"{}")
    S3LakeStorage(LAKE, s3, kms_key_id=key_id).write_bytes(with_kms, b"{}")

    head = s3.head_object(Bucket=BUCKET, Key=LAKE.s3_key(default))
    assert head["ServerSideEncryption"] == "AES256"
    head = s3.head_object(Bucket=BUCKET, Key=LAKE.s3_key(with_kms))
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
@pytest.mark.parametrize("kms", [False, True], ids=["sse-s3", "sse-kms"])
def test_a_run_writes_every_object_encrypted(pipeline, monkeypatch, kms):
    """What Airflow writes in a run (staged code, `_SUCCESS`) is SSE-S3, or SSE-KMS with the
    key of FRUITS_EMR_KMS_KEY_ID. (The jobs' writes go through EMRFS and the cluster's
    SecurityConfiguration: `tests/test_emr_config.py::test_optional_settings_reach_the_spec`.)"""
    key_id = None
    if kms:
        key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
        monkeypatch.setenv("FRUITS_EMR_KMS_KEY_ID", key_id)
    pipeline.put_uploads(emr_world.UPLOADS)
    pipeline.emr.jobs = emr_world.succeeding_jobs(pipeline)

    run = pipeline.run()

    assert run.state == "success"
    prefix = emr_world.staged_prefix()
    written = [f"{prefix}/{name}" for name in pipeline.keys(prefix)] + [LAKE.success_marker(D)]
    assert len(written) == 7  # six staged artifacts (three job scripts) and the marker
    for uri in written:
        head = pipeline.s3.head_object(Bucket=BUCKET, Key=LAKE.s3_key(uri))
        if kms:
            assert (head["ServerSideEncryption"], key_id in head["SSEKMSKeyId"]) == (
                "aws:kms",
                True,
            ), uri
        else:
            assert head["ServerSideEncryption"] == "AES256", uri


# --- (5) no secret in task logs or XComs -------------------------------------------------------


def run_texts(pipeline: emr_world.Pipeline, run) -> dict[str, str]:
    """Everything a run leaves readable in Airflow: XComs, rendered fields, conf, log files."""
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    texts = {}
    with create_session() as session:
        for model, column in (
            (XComModel, XComModel.value),
            (RenderedTaskInstanceFields, RenderedTaskInstanceFields.rendered_fields),
            (DagRun, DagRun.conf),
        ):
            values = session.scalars(select(column).where(model.run_id == run.run_id)).all()
            texts[model.__name__] = json.dumps(values, default=str)
    return texts


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_no_secret_in_task_logs_or_xcom(pipeline, monkeypatch, airflow_db, capfd, caplog):
    """aws_default carries a recognisable secret key; a whole run, with a failed step, never
    prints it nor stores it."""
    access_key = "AKIA" + uuid.uuid4().hex[:16].upper()
    secret_key = "canary-" + uuid.uuid4().hex + uuid.uuid4().hex  # pragma: allowlist secret
    connection = {
        "conn_type": "aws",
        "login": access_key,
        "password": secret_key,  # pragma: allowlist secret
        "extra": {"region_name": REGION},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    used_secrets: set[str] = set()
    make_api_call = botocore.client.BaseClient._make_api_call

    def recording_credentials(client, operation, params):
        if client is not pipeline.s3:
            used_secrets.add(client._request_signer._credentials.secret_key)
        return make_api_call(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording_credentials)
    pipeline.put_uploads(emr_world.UPLOADS)
    failure = dict(emr_world.FAILURE)
    pipeline.emr.jobs = emr_world.succeeding_jobs(pipeline) | {
        "featurize": lambda name: ("FAILED", failure)
    }

    with caplog.at_level("DEBUG"):
        run = pipeline.run()

    assert run.state == "failed"
    assert used_secrets == {secret_key}, "the run must have used the connection's credentials"
    out, err = capfd.readouterr()
    logs = {"stdout": out, "stderr": err, "logging": caplog.text}
    logs |= {str(p): p.read_text(errors="replace") for p in airflow_db.rglob("*.log")}
    logs |= run_texts(pipeline, run)
    assert failure["Message"] in out  # the task logs are in what was captured
    assert [where for where, text in logs.items() if secret_key in text] == []


# --- (2') every AWS call of a run is allowed by the Airflow role --------------------------------


def condition_holds(condition: dict[str, dict[str, str]], context: dict[str, str]) -> bool:
    for operator, pairs in condition.items():
        match = {"StringEquals": str.__eq__, "StringLike": fnmatchcase}[operator]
        if not all(key in context and match(context[key], value) for key, value in pairs.items()):
            return False
    return True


def allowed(policy: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    def as_list(value):
        return [value] if isinstance(value, str) else value

    return any(
        statement["Effect"] == "Allow"
        and any(fnmatchcase(action, pattern) for pattern in as_list(statement["Action"]))
        and any(fnmatchcase(resource, pattern) for pattern in as_list(statement["Resource"]))
        and condition_holds(statement.get("Condition", {}), context)
        for statement in policy["Statement"]
    )


def iam_requests(service: str, operation: str, params: dict, cluster_tags) -> list[tuple]:
    """(action, resource, condition context) that IAM evaluates for one API call."""
    if service == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if operation in ("ListObjectsV2", "ListObjects"):
            return [("s3:ListBucket", bucket, {})]
        if operation == "DeleteObjects":
            return [
                ("s3:DeleteObject", f"{bucket}/{item['Key']}", {})
                for item in params["Delete"]["Objects"]
            ]
        if operation == "CopyObject":
            source = params["CopySource"]
            return [
                ("s3:GetObject", f"arn:aws:s3:::{source['Bucket']}/{source['Key']}", {}),
                ("s3:PutObject", f"{bucket}/{params['Key']}", {}),
            ]
        action = {"HeadObject": "GetObject"}.get(operation, operation)
        return [(f"s3:{action}", f"{bucket}/{params['Key']}", {})]
    if service == "emr" and operation == "RunJobFlow":
        tags = {tag["Key"]: tag["Value"] for tag in params.get("Tags", [])}
        instance_role = ROLES["emr_instance"]["role"]
        assert params["JobFlowRole"] == ROLES["emr_instance"]["instance_profile"]
        return [
            ("elasticmapreduce:RunJobFlow", "*", {
                f"elasticmapreduce:RequestTag/{key}": value for key, value in tags.items()
            }),
            ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{params['ServiceRole']}",
             {"iam:PassedToService": "elasticmapreduce.amazonaws.com"}),
            ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{instance_role}",
             {"iam:PassedToService": "ec2.amazonaws.com"}),
        ]  # fmt: skip
    if service == "emr" and operation == "ListClusters":
        return [("elasticmapreduce:ListClusters", "*", {})]
    if service == "emr":
        cluster_ids = params.get("JobFlowIds") or [params.get("ClusterId") or params["JobFlowId"]]
        return [
            (
                f"elasticmapreduce:{operation}",
                f"arn:aws:elasticmapreduce:{REGION}:{ACCOUNT}:cluster/{cluster_id}",
                {
                    f"elasticmapreduce:ResourceTag/{key}": value
                    for key, value in cluster_tags(cluster_id).items()
                },
            )
            for cluster_id in cluster_ids
        ]
    raise AssertionError(f"a call the policy test does not know: {service} {operation}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_every_aws_call_of_a_run_is_allowed_by_the_airflow_policy(pipeline, monkeypatch):
    """Record the AWS calls of a run and of a killed sensor (not those of the test's own client,
    which plays the uploader and the Spark jobs): FruitsAirflowRole allows each of them."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.emr.models import emr_backends

    from fruits_pipeline.backends.emr.sensor import CancellingEmrStepSensor

    calls: list[tuple[str, str, dict]] = []
    make_api_call = botocore.client.BaseClient._make_api_call

    def recording(client, operation, params):
        if client is not pipeline.s3:
            calls.append((client.meta.service_model.service_name, operation, dict(params)))
        if operation == "CancelSteps":  # moto has none: answer as EMR does
            return {"CancelStepsInfoList": []}
        return make_api_call(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    pipeline.put_uploads(emr_world.UPLOADS)
    pipeline.emr.jobs = emr_world.succeeding_jobs(pipeline)
    assert pipeline.run().state == "success"  # prepare_run deletes _SUCCESS, as every run does
    cluster_id = pipeline.cluster_ids()[-1]
    step_id = pipeline.steps(cluster_id)[0]["Id"]
    CancellingEmrStepSensor(
        task_id="watch_featurize", job_flow_id=cluster_id, step_id=step_id, region_name=REGION
    ).on_kill()

    clusters = emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters
    policy = render(ROLES["airflow"]["policy"], LAKE)
    checked, denied = set(), []
    for service, operation, params in calls:
        for action, resource, context in iam_requests(
            service,
            operation,
            params,
            lambda cid: {tag["Key"]: tag["Value"] for tag in clusters[cid].tags},
        ):
            checked.add(action)
            if not allowed(policy, action, resource, context):
                denied.append((action, resource))
    assert {
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:ListBucket",
        "elasticmapreduce:RunJobFlow",
        "iam:PassRole",
        "elasticmapreduce:AddJobFlowSteps",
        "elasticmapreduce:DescribeStep",
        "elasticmapreduce:TerminateJobFlows",
        "elasticmapreduce:CancelSteps",
        "elasticmapreduce:ListClusters",
    } <= checked, checked
    assert sorted(set(denied)) == [], "\n".join(sorted(map(str, set(denied))))
