"""Production EMR cluster and steps of the ``fruits_features`` DAG.

``job_flow_overrides`` is the full RunJobFlow request; give the operator ``emr_conn_id=None`` so
that no connection extra is merged into it, and ``region_name=settings.region``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date

from fruits_pipeline.artifacts import BOOTSTRAP_SCRIPT, JOBS_ZIP, weights_artifact_name
from fruits_pipeline.basis import BasisPlan
from fruits_pipeline.lake import Lake
from fruits_pipeline.params import RunParams
from fruits_pipeline.steps import emr_step, run_jobs, spark_submit_args

RUN_TOKEN_TAG = "run_token"  # noqa: S105 (a tag name, not a password)
# Cluster states in which a run's steps may still write (EMR's ListClusters filter).
ACTIVE_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING")

# Regions in EU member states. London and Zurich are in Europe but outside the EU: using them
# (or any other region) takes an explicit FRUITS_ALLOW_NON_EU_REGION=1, as GDPR transfers do.
EU_REGIONS = frozenset(
    {"eu-west-1", "eu-west-3", "eu-central-1", "eu-north-1", "eu-south-1", "eu-south-2"}
)
ALLOW_NON_EU_VARIABLE = "FRUITS_ALLOW_NON_EU_REGION"
_REGION_NAME = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
CORE_MARKETS = ("ON_DEMAND", "SPOT")
# The jobs' dependencies are installed for this interpreter by bootstrap.sh.
JOB_PYTHON = "/usr/bin/python3.11"
# AWS tag values: at most 256 letters, digits, spaces and + - = . _ : / @
_TAG_FORBIDDEN = re.compile(r"[^\w +\-=.:/@]")
_TAG_VALUE_MAX = 256
_CLUSTER_NAME_MAX = 256


def validate_region(region: str, *, allow_non_eu: bool = False) -> str:
    """Return ``region`` if the lake data may be processed there."""
    if not _REGION_NAME.fullmatch(region):
        raise ValueError(f"{region!r} is not an AWS region name")
    if region not in EU_REGIONS and not allow_non_eu:
        raise ValueError(
            f"region {region!r} is outside the EU (allowed: {', '.join(sorted(EU_REGIONS))}); "
            f"set {ALLOW_NON_EU_VARIABLE}=1 once a data-protection review approved it"
        )
    return region


@dataclass(frozen=True)
class EmrSettings:
    """Cluster settings; ``from_env`` reads each field from ``FRUITS_EMR_<FIELD>``.

    - ``FRUITS_EMR_REGION``: AWS region of the cluster (EU only, see ``validate_region``).
    - ``FRUITS_EMR_RELEASE_LABEL``: EMR release, e.g. ``emr-7.13.0``.
    - ``FRUITS_EMR_PRIMARY_INSTANCE_TYPE``, ``FRUITS_EMR_CORE_INSTANCE_TYPE``: EC2 types.
    - ``FRUITS_EMR_CORE_INSTANCE_COUNT``: number of core nodes.
    - ``FRUITS_EMR_CORE_MARKET``: ``ON_DEMAND`` or ``SPOT`` for the core nodes.
    - ``FRUITS_EMR_SERVICE_ROLE``: EMR service role name (infra/iam/roles.json).
    - ``FRUITS_EMR_INSTANCE_PROFILE``: EC2 instance profile of the nodes (infra/iam/roles.json).
    - ``FRUITS_EMR_IDLE_TIMEOUT_S``: seconds idle before EMR terminates a forgotten cluster.
    - ``FRUITS_EMR_SUBNET_ID``: subnet of the cluster; unset uses the default VPC.
    - ``FRUITS_EMR_EBS_ROOT_GB``: root volume size; TensorFlow needs room to install.
    - ``FRUITS_EMR_KMS_KEY_ID``: KMS key of what Airflow writes to S3 (staged artifacts,
      ``_SUCCESS``); unset uses SSE-S3 (AES256).
    - ``FRUITS_EMR_SECURITY_CONFIGURATION``: EMR security configuration name (e.g. SSE-KMS
      for EMRFS writes); unset uses none.
    - ``FRUITS_ALLOW_NON_EU_REGION=1``: allow a region outside the EU.
    """

    region: str = "eu-west-3"
    release_label: str = "emr-7.13.0"
    primary_instance_type: str = "m5.xlarge"
    core_instance_type: str = "m5.xlarge"
    core_instance_count: int = 2
    core_market: str = "ON_DEMAND"
    service_role: str = "FruitsEmrServiceRole"
    instance_profile: str = "FruitsEmrInstanceProfile"
    idle_timeout_s: int = 3600
    subnet_id: str | None = None
    ebs_root_gb: int = 32
    kms_key_id: str | None = None
    security_configuration: str | None = None
    allow_non_eu_region: bool = False

    def __post_init__(self) -> None:
        validate_region(self.region, allow_non_eu=self.allow_non_eu_region)
        if not re.fullmatch(r"emr-\d+\.\d+\.\d+", self.release_label):
            raise ValueError(f"release_label must look like emr-7.13.0, got {self.release_label!r}")
        if self.core_market not in CORE_MARKETS:
            raise ValueError(f"core_market must be one of {CORE_MARKETS}, got {self.core_market!r}")
        if self.core_instance_count < 1:
            raise ValueError(f"core_instance_count must be >= 1, got {self.core_instance_count}")
        # EMR's own bounds for AutoTerminationPolicy and EbsRootVolumeSize.
        if not 60 <= self.idle_timeout_s <= 604_800:
            raise ValueError(f"idle_timeout_s must be 60..604800, got {self.idle_timeout_s}")
        if not 15 <= self.ebs_root_gb <= 100:
            raise ValueError(f"ebs_root_gb must be 15..100, got {self.ebs_root_gb}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EmrSettings:
        """Settings from environment variables (``os.environ`` by default); unset or empty ones
        keep their default."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field in fields(cls):
            if field.name == "allow_non_eu_region":
                continue
            variable = f"FRUITS_EMR_{field.name.upper()}"
            text = env.get(variable, "").strip()
            if not text:
                continue
            if isinstance(field.default, int):
                try:
                    values[field.name] = int(text)
                except ValueError:
                    raise ValueError(f"{variable} must be an integer, got {text!r}") from None
            else:
                values[field.name] = text
        values["allow_non_eu_region"] = env.get(ALLOW_NON_EU_VARIABLE, "") == "1"
        return cls(**values)


def job_flow_overrides(
    settings: EmrSettings,
    lake: Lake,
    *,
    artifacts_prefix: str,
    dag_id: str,
    run_id: str,
    partition: date | str,
    token: str,
) -> dict:
    """RunJobFlow request of the transient cluster that processes one partition (or, with
    partition "refit", refits the basis); its `run_token` tag tells the lease that the run is
    alive."""
    _check_emr_locations(lake, artifacts_prefix)
    overrides = {
        "Name": f"{cluster_name_prefix(partition)}{dag_id}"[:_CLUSTER_NAME_MAX],
        "ReleaseLabel": settings.release_label,
        "Applications": [{"Name": "Spark"}],
        "Instances": {
            "InstanceGroups": [
                {
                    "Name": "primary",
                    "InstanceRole": "MASTER",
                    "Market": "ON_DEMAND",
                    "InstanceType": settings.primary_instance_type,
                    "InstanceCount": 1,
                },
                {
                    "Name": "core",
                    "InstanceRole": "CORE",
                    "Market": settings.core_market,
                    "InstanceType": settings.core_instance_type,
                    "InstanceCount": settings.core_instance_count,
                },
            ],
            # Steps are added after creation; the teardown task terminates the cluster.
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
            **({"Ec2SubnetId": settings.subnet_id} if settings.subnet_id else {}),
        },
        "Configurations": [
            {
                "Classification": "spark-env",
                "Properties": {},
                "Configurations": [
                    {
                        "Classification": "export",
                        "Properties": {
                            "PYSPARK_PYTHON": JOB_PYTHON,
                            "PYSPARK_DRIVER_PYTHON": JOB_PYTHON,
                        },
                    }
                ],
            },
            {
                "Classification": "spark-defaults",
                # spark.pyspark.* also reach the driver, which runs in YARN in cluster mode.
                "Properties": {
                    "spark.pyspark.python": JOB_PYTHON,
                    "spark.pyspark.driver.python": JOB_PYTHON,
                    "spark.dynamicAllocation.enabled": "true",
                },
            },
        ],
        "BootstrapActions": [
            {
                "Name": "install job dependencies",
                "ScriptBootstrapAction": {
                    "Path": f"{artifacts_prefix}/{BOOTSTRAP_SCRIPT}",
                    "Args": [artifacts_prefix],
                },
            }
        ],
        "LogUri": lake.emr_logs(),
        # Safety net should the teardown task never run.
        "AutoTerminationPolicy": {"IdleTimeout": settings.idle_timeout_s},
        "EbsRootVolumeSize": settings.ebs_root_gb,
        "Tags": [
            {"Key": "project", "Value": "fruits"},
            {"Key": "dag_id", "Value": _tag_value(dag_id)},
            {"Key": "dag_run", "Value": _tag_value(run_id)},
            {"Key": "partition", "Value": _key_value(partition)},
            {"Key": RUN_TOKEN_TAG, "Value": token},
        ],
        "JobFlowRole": settings.instance_profile,
        "ServiceRole": settings.service_role,
        "VisibleToAllUsers": True,
    }
    if settings.security_configuration:
        overrides["SecurityConfiguration"] = settings.security_configuration
    return overrides


def cluster_name_prefix(partition: date | str) -> str:
    """How the names of a day's clusters start (`dt=2026-01-02 fruits_features`; a refit's:
    `refit fruits_pca_basis`)."""
    return f"dt={partition.isoformat()} " if isinstance(partition, date) else f"{partition} "


def _key_value(partition: date | str) -> str:
    return partition.isoformat() if isinstance(partition, date) else partition


def emr_steps(
    lake: Lake, dt: date, artifacts_prefix: str, params: RunParams, token: str, basis: BasisPlan
) -> list[dict]:
    """The featurize then PCA steps, running the code staged under ``artifacts_prefix``."""
    _check_emr_locations(lake, artifacts_prefix)
    weights_name = weights_artifact_name(params.weights)
    weights = f"{artifacts_prefix}/{weights_name}" if weights_name else params.weights
    jobs = run_jobs(lake, dt, token, params, basis, weights=weights)
    return job_steps(jobs, artifacts_prefix, f"dt={dt.isoformat()}")


def job_steps(
    jobs: list[tuple[str, str, list[str]]], artifacts_prefix: str, label: str
) -> list[dict]:
    """EMR steps running `jobs` (name, entry script, arguments) from the staged code."""
    py_files = f"{artifacts_prefix}/{JOBS_ZIP}"
    return [
        emr_step(
            f"{job} {label}",
            spark_submit_args(
                f"{artifacts_prefix}/{script}", py_files, args, deploy_mode="cluster"
            ),
        )
        for job, script, args in jobs
    ]


def _check_emr_locations(lake: Lake, artifacts_prefix: str) -> None:
    # EMRFS serves s3://; s3a:// is for Spark outside EMR.
    if not lake.root.startswith("s3://"):
        raise ValueError(f"an EMR run needs an s3:// lake, got {lake.root!r}")
    if not lake.is_within(artifacts_prefix):
        raise ValueError(f"artifacts prefix {artifacts_prefix!r} is outside the lake")


def _tag_value(text: str) -> str:
    return _TAG_FORBIDDEN.sub("_", text)[:_TAG_VALUE_MAX]
