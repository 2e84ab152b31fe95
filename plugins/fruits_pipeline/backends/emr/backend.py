"""The EMR backend: the amazon provider's operators on a transient EMR cluster."""

from __future__ import annotations

from datetime import date
from typing import Any

from fruits_pipeline import artifacts, lease, steps
from fruits_pipeline.backends.base import ClusterBackend
from fruits_pipeline.basis import BasisPlan
from fruits_pipeline.params import RunParams
from fruits_pipeline.settings import REPO_ROOT, PipelineSettings


class EmrBackend(ClusterBackend):
    name = "emr"

    def __init__(self, settings: PipelineSettings, env=None):
        from fruits_pipeline.backends.emr.config import EmrSettings

        self.settings = settings
        self.emr = EmrSettings.from_env(env)

    def plan(self, dt: date, params: RunParams, basis: BasisPlan, run: lease.RunIdentity) -> dict:
        """Stage code, bootstrap and local weights to S3; the cluster spec and steps use them."""
        from fruits_pipeline.backends.emr import config as emr_config

        staged = params.weights if artifacts.weights_artifact_name(params.weights) else None
        prefix = self._stage(staged)
        return {
            "job_flow_overrides": self._job_flow(prefix, run, dt),
            "steps": emr_config.emr_steps(self.settings.lake, dt, prefix, params, run.token, basis),
        }

    def plan_refit(self, jobs, run: lease.RunIdentity) -> dict[str, Any]:
        """Stage the code (no weights: a refit reads features) and plan the refit's cluster."""
        from fruits_pipeline.backends.emr import config as emr_config

        prefix = self._stage(None)
        return {
            "job_flow_overrides": self._job_flow(prefix, run, lease.REFIT),
            "steps": emr_config.job_steps(jobs, prefix, lease.REFIT),
        }

    def _stage(self, weights: str | None) -> str:
        """Upload the code (and `weights`, a local file) under the lake's artifacts prefix."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        client = S3Hook(aws_conn_id=self.settings.aws_conn_id, region_name=self.emr.region)
        files = artifacts.artifact_files(REPO_ROOT, weights)
        return artifacts.stage_to_s3(
            client.get_conn(), self.settings.lake, files, kms_key_id=self.emr.kms_key_id
        )

    def _job_flow(self, prefix: str, run: lease.RunIdentity, partition: date | str) -> dict:
        from fruits_pipeline.backends.emr import config as emr_config

        return emr_config.job_flow_overrides(
            self.emr, self.settings.lake, artifacts_prefix=prefix, dag_id=run.dag_id,
            run_id=run.run_id, partition=partition, token=run.token,
        )  # fmt: skip

    def _aws(self) -> dict[str, Any]:
        return {"aws_conn_id": self.settings.aws_conn_id, "region_name": self.emr.region}

    def run_alive(self, token: str, partition: str) -> bool:
        """True while a cluster tagged with the run's token is not terminated."""
        from airflow.providers.amazon.aws.hooks.emr import EmrHook

        from fruits_pipeline.backends.emr.config import (
            ACTIVE_STATES,
            RUN_TOKEN_TAG,
            cluster_name_prefix,
        )

        client = EmrHook(**self._aws()).conn
        # Only this day's (or the refit's) clusters are described.
        prefix = cluster_name_prefix(
            partition if partition == lease.REFIT else date.fromisoformat(partition)
        )
        for page in client.get_paginator("list_clusters").paginate(
            ClusterStates=list(ACTIVE_STATES)
        ):
            for summary in page["Clusters"]:
                if not summary["Name"].startswith(prefix):
                    continue
                tags = client.describe_cluster(ClusterId=summary["Id"])["Cluster"].get("Tags", [])
                if {"Key": RUN_TOKEN_TAG, "Value": token} in tags:
                    return True
        return False

    def create_cluster(self, job_flow_overrides):
        from airflow.providers.amazon.aws.operators.emr import EmrCreateJobFlowOperator

        # emr_conn_id=None: the spec is all ours, no connection extras merged into it. Not
        # waited for: EMR queues the steps added while the cluster starts, and the first step's
        # (deferred) wait covers the start.
        return EmrCreateJobFlowOperator(
            task_id="create_cluster",
            job_flow_overrides=job_flow_overrides,
            emr_conn_id=None,
            **self._aws(),
        )

    def add_steps(self, cluster_id, step_list):
        from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator

        return EmrAddStepsOperator(
            task_id="add_steps", job_flow_id=cluster_id, steps=step_list, **self._aws()
        )

    def watch_step(self, task_id: str, cluster_id, index: int, wait_s):
        from fruits_pipeline.backends.emr.sensor import CancellingEmrStepSensor

        return CancellingEmrStepSensor(
            task_id=task_id,
            job_flow_id=cluster_id,
            step_id=steps.STEP_IDS.format(index=index),
            wait_s=wait_s,
            poke_interval=30,
            deferrable=self.settings.deferrable_waits,
            **self._aws(),
        )

    def terminate_cluster(self, cluster_id):
        from airflow.providers.amazon.aws.operators.emr import EmrTerminateJobFlowOperator

        # Deferred, the teardown also waits (in the triggerer, the provider's default 20 min)
        # until EMR says TERMINATED: a run ends only when its cluster is gone.
        return EmrTerminateJobFlowOperator(
            task_id="terminate_cluster",
            job_flow_id=cluster_id,
            deferrable=self.settings.deferrable_waits,
            **self._aws(),
        )
