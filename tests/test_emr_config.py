import json
import string
from datetime import date
from fnmatch import fnmatchcase

import boto3
import pytest
from moto import mock_aws

from fruits_pipeline.backends.emr.config import (
    EU_REGIONS,
    EmrSettings,
    emr_steps,
    job_flow_overrides,
    validate_region,
)
from fruits_pipeline.basis import BasisPlan
from fruits_pipeline.lake import Lake
from fruits_pipeline.params import RunParams
from fruits_pipeline.steps import featurize_args, pca_args
from tests.support.iam import ACCOUNT, IAM, ROLES, render

D = date(2026, 1, 2)
LAKE = Lake("s3://fruits-lake/prod")
PREFIX = LAKE.artifacts("0123456789abcdef")
RUN_ID = "scheduled__2026-01-03T00:00:00+00:00"
TOKEN = "20260103T020000Z-0123abcd"
FIT = BasisPlan("basis-20260103T020000Z-0123abcd", fit=True, generation=1)


def overrides(settings: EmrSettings | None = None) -> dict:
    return job_flow_overrides(
        settings or EmrSettings(),
        LAKE,
        artifacts_prefix=PREFIX,
        dag_id="fruits_features",
        run_id=RUN_ID,
        partition=D,
        token=TOKEN,
    )


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    # The EMR mock starts EC2 instances; loading moto's AMI catalogue would take seconds.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        yield


def test_default_region_is_in_the_eu():
    assert EmrSettings().region == "eu-west-3"
    assert EmrSettings().region in EU_REGIONS
    assert EmrSettings.from_env({}).region in EU_REGIONS


def test_eu_regions_are_all_european():
    assert all(region.startswith("eu-") for region in EU_REGIONS)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-2", "eu-central-2", "ap-south-1"])
def test_non_eu_regions_need_an_explicit_opt_in(region):
    with pytest.raises(ValueError) as raised:
        validate_region(region)
    assert f"region {region!r} is outside the EU" in str(raised.value)
    assert "FRUITS_ALLOW_NON_EU_REGION=1" in str(raised.value)
    assert validate_region(region, allow_non_eu=True) == region


def test_region_names_are_checked_even_when_non_eu_is_allowed():
    with pytest.raises(ValueError, match="'Paris' is not an AWS region name"):
        validate_region("Paris", allow_non_eu=True)


def test_settings_from_an_empty_environment_are_the_defaults():
    assert EmrSettings.from_env({}) == EmrSettings()


def test_settings_from_the_environment():
    env = {
        "FRUITS_EMR_REGION": "eu-central-1",
        "FRUITS_EMR_RELEASE_LABEL": "emr-7.12.0",
        "FRUITS_EMR_PRIMARY_INSTANCE_TYPE": "m5.2xlarge",
        "FRUITS_EMR_CORE_INSTANCE_TYPE": "m5.4xlarge",
        "FRUITS_EMR_CORE_INSTANCE_COUNT": "4",
        "FRUITS_EMR_CORE_MARKET": "SPOT",
        "FRUITS_EMR_SERVICE_ROLE": "OtherServiceRole",
        "FRUITS_EMR_INSTANCE_PROFILE": "OtherProfile",
        "FRUITS_EMR_IDLE_TIMEOUT_S": "900",
        "FRUITS_EMR_SUBNET_ID": "subnet-0abc",
        "FRUITS_EMR_EBS_ROOT_GB": "64",
        "FRUITS_EMR_KMS_KEY_ID": "alias/fruits",
        "FRUITS_EMR_SECURITY_CONFIGURATION": "fruits-sse-kms",
        "FRUITS_EMR_SUBNET": "ignored: not a known variable",
    }
    assert EmrSettings.from_env(env) == EmrSettings(
        region="eu-central-1",
        release_label="emr-7.12.0",
        primary_instance_type="m5.2xlarge",
        core_instance_type="m5.4xlarge",
        core_instance_count=4,
        core_market="SPOT",
        service_role="OtherServiceRole",
        instance_profile="OtherProfile",
        idle_timeout_s=900,
        subnet_id="subnet-0abc",
        ebs_root_gb=64,
        kms_key_id="alias/fruits",
        security_configuration="fruits-sse-kms",
    )


def test_non_eu_region_from_the_environment():
    with pytest.raises(ValueError, match="'us-east-1' is outside the EU"):
        EmrSettings.from_env({"FRUITS_EMR_REGION": "us-east-1"})
    env = {"FRUITS_EMR_REGION": "us-east-1", "FRUITS_ALLOW_NON_EU_REGION": "1"}
    assert EmrSettings.from_env(env).region == "us-east-1"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FRUITS_EMR_CORE_INSTANCE_COUNT": "two"}, "must be an integer, got 'two'"),
        ({"FRUITS_EMR_CORE_INSTANCE_COUNT": "0"}, "core_instance_count must be >= 1, got 0"),
        ({"FRUITS_EMR_CORE_MARKET": "spot"}, "core_market must be one of"),
        ({"FRUITS_EMR_RELEASE_LABEL": "7.13.0"}, "got '7.13.0'"),
        ({"FRUITS_EMR_IDLE_TIMEOUT_S": "30"}, "idle_timeout_s must be 60..604800, got 30"),
        ({"FRUITS_EMR_EBS_ROOT_GB": "8"}, "ebs_root_gb must be 15..100, got 8"),
    ],
)
def test_bad_settings(env, message):
    with pytest.raises(ValueError) as raised:
        EmrSettings.from_env(env)
    assert message in str(raised.value)


def test_cluster_spec():
    spec = overrides()
    assert spec["Name"] == "dt=2026-01-02 fruits_features"
    assert spec["ReleaseLabel"] == "emr-7.13.0"
    assert spec["Applications"] == [{"Name": "Spark"}]
    assert spec["LogUri"] == "s3://fruits-lake/prod/logs/emr/"
    assert spec["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert spec["VisibleToAllUsers"] is True
    assert "SecurityConfiguration" not in spec
    instances = spec["Instances"]
    assert instances["KeepJobFlowAliveWhenNoSteps"] is True
    assert instances["TerminationProtected"] is False
    assert "Ec2SubnetId" not in instances
    groups = {group["InstanceRole"]: group for group in instances["InstanceGroups"]}
    assert (groups["MASTER"]["InstanceCount"], groups["CORE"]["InstanceCount"]) == (1, 2)
    assert groups["CORE"]["Market"] == "ON_DEMAND"
    assert groups["MASTER"]["InstanceType"] == groups["CORE"]["InstanceType"] == "m5.xlarge"


def test_spark_uses_python_3_11():
    configurations = {c["Classification"]: c for c in overrides()["Configurations"]}
    (export,) = configurations["spark-env"]["Configurations"]
    assert export["Classification"] == "export"
    assert export["Properties"] == {
        "PYSPARK_PYTHON": "/usr/bin/python3.11",
        "PYSPARK_DRIVER_PYTHON": "/usr/bin/python3.11",
    }
    defaults = configurations["spark-defaults"]["Properties"]
    assert defaults["spark.pyspark.python"] == "/usr/bin/python3.11"
    assert defaults["spark.pyspark.driver.python"] == "/usr/bin/python3.11"


def test_bootstrap_runs_the_staged_script():
    assert overrides()["BootstrapActions"] == [
        {
            "Name": "install job dependencies",
            "ScriptBootstrapAction": {"Path": f"{PREFIX}/bootstrap.sh", "Args": [PREFIX]},
        }
    ]


def test_tags():
    assert overrides()["Tags"] == [
        {"Key": "project", "Value": "fruits"},
        {"Key": "dag_id", "Value": "fruits_features"},
        {"Key": "dag_run", "Value": RUN_ID},
        {"Key": "partition", "Value": "2026-01-02"},
        {"Key": "run_token", "Value": TOKEN},
    ]


def test_tag_values_are_sanitised_and_bounded():
    spec = job_flow_overrides(
        EmrSettings(),
        LAKE,
        artifacts_prefix=PREFIX,
        dag_id="fruits_features",
        run_id="manual__{{ ds }}#" + "x" * 300,
        partition=D,
        token=TOKEN,
    )
    run_tag = next(tag["Value"] for tag in spec["Tags"] if tag["Key"] == "dag_run")
    assert run_tag == ("manual____ ds ___" + "x" * 300)[:256]
    assert set(run_tag) <= set(string.ascii_letters + string.digits + " _.:/=+-@")


def test_optional_settings_reach_the_spec():
    settings = EmrSettings(
        subnet_id="subnet-0abc", security_configuration="fruits-sse-kms", core_market="SPOT"
    )
    spec = overrides(settings)
    assert spec["Instances"]["Ec2SubnetId"] == "subnet-0abc"
    assert spec["SecurityConfiguration"] == "fruits-sse-kms"
    assert spec["Instances"]["InstanceGroups"][1]["Market"] == "SPOT"


def test_cluster_roles_match_the_iam_files():
    spec = overrides()
    assert spec["ServiceRole"] == ROLES["emr_service"]["role"]
    assert spec["JobFlowRole"] == ROLES["emr_instance"]["instance_profile"]


@pytest.mark.parametrize(
    ("lake", "prefix", "message"),
    [
        (Lake("s3a://fruits-lake/prod"), "s3a://fruits-lake/prod/artifacts/ab", "s3:// lake"),
        (Lake("/srv/lake"), "/srv/lake/artifacts/ab", "an EMR run needs an s3:// lake"),
        (LAKE, "s3://other-bucket/artifacts/ab", "is outside the lake"),
    ],
)
def test_emr_needs_an_s3_lake_holding_the_artifacts(lake, prefix, message):
    with pytest.raises(ValueError, match=message):
        job_flow_overrides(
            EmrSettings(), lake, artifacts_prefix=prefix, dag_id="d", run_id="r", partition=D,
            token=TOKEN,
        )
    with pytest.raises(ValueError, match=message):
        emr_steps(lake, D, prefix, RunParams(partition_date=D), TOKEN, FIT)


def test_steps_run_the_staged_jobs_in_cluster_mode():
    params = RunParams(partition_date=D, variance=0.9)
    featurize, pca = emr_steps(LAKE, D, PREFIX, params, TOKEN, FIT)
    submit = ["spark-submit", "--deploy-mode", "cluster", "--py-files", f"{PREFIX}/spark_jobs.zip"]
    assert featurize == {
        "Name": "featurize dt=2026-01-02",
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [
                *submit,
                f"{PREFIX}/featurize.py",
                *featurize_args(LAKE, D, "imagenet", TOKEN),
            ],
        },
    }
    assert pca == {
        "Name": "pca dt=2026-01-02",
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [
                *submit,
                f"{PREFIX}/pca.py",
                *pca_args(LAKE, D, TOKEN, basis=FIT.basis, fit=True, variance=0.9),
            ],
        },
    }


def test_steps_use_k_and_staged_local_weights():
    params = RunParams(partition_date=D, variance=None, k=64, weights="/opt/w/mobilenet.h5")
    featurize, pca = emr_steps(LAKE, D, PREFIX, params, TOKEN, FIT)
    featurize_job = featurize["HadoopJarStep"]["Args"][6:]
    assert featurize_job == featurize_args(LAKE, D, f"{PREFIX}/weights/mobilenet.h5", TOKEN)
    assert pca["HadoopJarStep"]["Args"][-4:-2] == ["--k", "64"]


def test_steps_pass_lake_weights_through():
    params = RunParams(partition_date=D, weights="s3://fruits-lake/prod/models/w.h5")
    featurize, _ = emr_steps(LAKE, D, PREFIX, params, TOKEN, FIT)
    args = featurize["HadoopJarStep"]["Args"]
    assert args[args.index("--weights") + 1] == "s3://fruits-lake/prod/models/w.h5"
    assert args[args.index("--model-cache") + 1] == "s3://fruits-lake/prod/models/tflite"


def test_emr_api_accepts_the_cluster_and_steps(aws):
    """botocore checks every field name and type of the requests against the EMR API model."""
    emr = boto3.client("emr", region_name=EmrSettings().region)
    cluster_id = emr.run_job_flow(**overrides())["JobFlowId"]
    step_ids = emr.add_job_flow_steps(
        JobFlowId=cluster_id,
        Steps=emr_steps(LAKE, D, PREFIX, RunParams(partition_date=D), TOKEN, FIT),
    )["StepIds"]
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["Name"] == "dt=2026-01-02 fruits_features"
    assert {"Key": "project", "Value": "fruits"} in cluster["Tags"]
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert sorted(step["Id"] for step in steps) == sorted(step_ids)


# IAM policies ------------------------------------------------------------------------------


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def allows(policy: dict, action: str, uri: str) -> bool:
    """Whether an Allow statement grants ``action`` on the S3 object at ``uri``."""
    arn = "arn:aws:s3:::" + uri.removeprefix("s3://")
    return any(
        statement["Effect"] == "Allow"
        and action in as_list(statement["Action"])
        and any(fnmatchcase(arn, resource) for resource in as_list(statement["Resource"]))
        for statement in policy["Statement"]
    )


def policy_files() -> list[str]:
    return sorted(path.name for path in IAM.glob("*.json") if path.name != "roles.json")


def test_roles_file_lists_every_policy_file():
    listed = {
        entry[kind] for entry in ROLES.values() for kind in ("trust", "policy") if kind in entry
    }
    assert listed == set(policy_files())


def test_settings_defaults_use_the_iam_role_names():
    assert EmrSettings().service_role == ROLES["emr_service"]["role"]
    assert EmrSettings().instance_profile == ROLES["emr_instance"]["instance_profile"]


def test_pass_role_names_the_emr_roles():
    def passed_roles(file_name: str) -> dict[str, str]:
        return {
            s["Resource"]: s["Condition"]["StringLike"]["iam:PassedToService"]
            for s in render(file_name)["Statement"]
            if s["Action"] == "iam:PassRole"
        }

    service_arn = f"arn:aws:iam::{ACCOUNT}:role/{ROLES['emr_service']['role']}"
    instance_arn = f"arn:aws:iam::{ACCOUNT}:role/{ROLES['emr_instance']['role']}"
    assert passed_roles(ROLES["airflow"]["policy"]) == {
        service_arn: "elasticmapreduce.amazonaws.com*",
        instance_arn: "ec2.amazonaws.com*",
    }
    assert passed_roles(ROLES["emr_service"]["policy"]) == {instance_arn: "ec2.amazonaws.com*"}


def test_no_wildcard_actions():
    for file_name in policy_files():
        for statement in render(file_name)["Statement"]:
            for action in as_list(statement["Action"]):
                assert "*" not in action, f"{file_name}: {action}"


def test_iam_accepts_the_policies(aws):
    """moto validates policy grammar: versions, effects, action and ARN formats."""
    iam = boto3.client("iam", region_name="us-east-1")
    for entry in ROLES.values():
        if "trust" in entry:
            iam.create_role(
                RoleName=entry["role"],
                AssumeRolePolicyDocument=json.dumps(render(entry["trust"])),
            )
        iam.create_policy(
            PolicyName=entry["role"] + "Policy", PolicyDocument=json.dumps(render(entry["policy"]))
        )
    names = {role["RoleName"] for role in iam.list_roles()["Roles"]}
    assert {ROLES["emr_service"]["role"], ROLES["emr_instance"]["role"]} <= names


@pytest.mark.parametrize("lake", [LAKE, Lake("s3://fruits-lake")])
def test_nodes_reach_exactly_what_the_jobs_use(lake):
    nodes = render(ROLES["emr_instance"]["policy"], lake)
    prefix = lake.artifacts("0123456789abcdef")
    staged_features = f"{lake.features(D, TOKEN)}/p.parquet"
    for uri in (f"{lake.raw(D)}/a.jpg", f"{prefix}/pca.py", staged_features):
        assert allows(nodes, "s3:GetObject", uri), uri
    # The steps write their run's staging folder and the model cache, nothing published.
    written = [lake.features, lake.errors, lake.reduced]
    staged = [f"{path(D, TOKEN)}/part-0.parquet" for path in written]
    basis = f"{lake.basis(FIT.basis)}/pca_model.json"
    for uri in [*staged, lake.manifest(D, TOKEN), f"{lake.model_cache()}/m.tflite", basis]:
        assert allows(nodes, "s3:PutObject", uri), uri
        assert allows(nodes, "s3:DeleteObject", uri), uri
    assert allows(nodes, "s3:PutObject", f"{lake.emr_logs()}j-1/node.log")
    published = [f"{path(D)}/part-0.parquet" for path in written]
    for uri in (f"{lake.raw(D)}/a.jpg", f"{prefix}/pca.py", *published, lake.manifest(D)):
        assert not allows(nodes, "s3:PutObject", uri), uri
        assert not allows(nodes, "s3:DeleteObject", uri), uri
    assert not allows(nodes, "s3:GetObject", "s3://fruits-lake-other/raw/a.jpg")


def test_airflow_reads_the_lake_and_writes_artifacts_leases_and_publications_only():
    airflow = render(ROLES["airflow"]["policy"])
    assert allows(airflow, "s3:GetObject", LAKE.manifest(D))
    assert allows(airflow, "s3:PutObject", LAKE.success_marker(D))
    assert allows(airflow, "s3:PutObject", f"{PREFIX}/spark_jobs.zip")
    assert allows(airflow, "s3:PutObject", f"{LAKE.lease(D)}/0000000001.json")
    assert allows(airflow, "s3:PutObject", f"{LAKE.current_basis()}/0000000001.json")
    for path in (LAKE.features, LAKE.errors, LAKE.reduced):
        assert allows(airflow, "s3:PutObject", f"{path(D)}/part-0.parquet")
        assert allows(airflow, "s3:DeleteObject", f"{path(D, TOKEN)}/part-0.parquet")
    assert not allows(airflow, "s3:PutObject", f"{LAKE.raw(D)}/a.jpg")
    assert not allows(airflow, "s3:GetObject", "s3://fruits-lake/other/x")
