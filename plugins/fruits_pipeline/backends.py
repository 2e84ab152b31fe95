"""The two backends behind one DAG shape: EMR in production, Spark standalone on this machine.

Each backend plans a run (stages the code, builds the cluster spec and the two steps) and makes
the four cluster operators: create (a setup), add steps, one sensor per step, terminate (a
teardown). The EMR ones are the amazon provider's; the local ones mirror their arguments.
Operator modules are imported when a backend makes its operators, not before.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from fruits_pipeline import artifacts, lease, steps
from fruits_pipeline.basis import BasisPlan
from fruits_pipeline.params import RunParams
from fruits_pipeline.settings import REPO_ROOT, PipelineSettings

STEP_IDS = "{{{{ ti.xcom_pull(task_ids='add_steps')[{index}] }}}}"
# Every process of a local cluster carries its run's token, so the day's lease can tell that
# the run is alive (on EMR the cluster's `run_token` tag does this).
RUN_TOKEN_ENV = "FRUITS_RUN_TOKEN"  # noqa: S105 (a variable name, not a password)


class LocalBackend:
    name = "local"

    def __init__(self, settings: PipelineSettings):
        self.settings = settings

    def plan(
        self,
        dt: date,
        params: RunParams,
        *,
        dag_id: str,
        run_id: str,
        token: str,
        basis: BasisPlan,
    ) -> dict[str, Any]:
        """Stage the jobs in a content-addressed local folder; steps are plain spark-submits."""
        jobs = steps.run_jobs(
            self.settings.lake,
            dt,
            token,
            weights=params.weights,
            basis=basis.basis,
            fit=basis.fit,
            variance=params.variance,
            k=params.k,
        )
        return self._plan(jobs, f"dt={dt.isoformat()}", token)

    def plan_refit(self, jobs, *, dag_id: str, run_id: str, token: str) -> dict[str, Any]:
        """The same for a refit's jobs (steps.py, refit.py)."""
        return self._plan(jobs, lease.REFIT, token)

    def _plan(self, jobs, label: str, token: str) -> dict[str, Any]:
        files = artifacts.artifact_files(REPO_ROOT, None)
        staged = (
            Path(self.settings.local_state_dir) / "artifacts" / artifacts.artifact_digest(files)
        )
        for name, data in files.items():
            target = staged / name
            if not (target.is_file() and target.stat().st_size == len(data)):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        conf = {
            "spark.ui.enabled": "false",
            "spark.driver.host": "127.0.0.1",
            # Short jobs whose heavy work is in Python: the C2 JIT compiler would burn a third of
            # the cores' time in a one-minute job (see spark_jobs/session.py).
            "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
            "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
        }
        return {
            "job_flow_overrides": {
                "idle_timeout_s": self.settings.local_idle_timeout_s,
                "env": {RUN_TOKEN_ENV: token},
            },
            "steps": [
                {
                    "name": f"{job} {label}",
                    "args": steps.spark_submit_args(
                        str(staged / script), str(staged / artifacts.JOBS_ZIP), args, conf=conf
                    ),
                }
                for job, script, args in jobs
            ],
        }

    def run_alive(self, token: str, partition: str) -> bool:
        """True while a process of the run's cluster runs."""
        from fruits_pipeline.local_cluster import marked_processes

        return bool(marked_processes(RUN_TOKEN_ENV, token))

    def create_cluster(self, job_flow_overrides):
        from fruits_pipeline.local_operators import LocalCreateClusterOperator

        return LocalCreateClusterOperator(
            task_id="create_cluster",
            state_dir=self.settings.local_state_dir,
            job_flow_overrides=job_flow_overrides,
        )

    def add_steps(self, cluster_id, step_list):
        from fruits_pipeline.local_operators import LocalAddStepsOperator

        return LocalAddStepsOperator(
            task_id="add_steps",
            state_dir=self.settings.local_state_dir,
            job_flow_id=cluster_id,
            steps=step_list,
        )

    def watch_step(self, task_id: str, cluster_id, index: int):
        from fruits_pipeline.local_operators import LocalStepSensor

        return LocalStepSensor(
            task_id=task_id,
            state_dir=self.settings.local_state_dir,
            job_flow_id=cluster_id,
            step_id=STEP_IDS.format(index=index),
        )

    def terminate_cluster(self, cluster_id):
        from fruits_pipeline.local_operators import LocalTerminateClusterOperator

        return LocalTerminateClusterOperator(
            task_id="terminate_cluster",
            state_dir=self.settings.local_state_dir,
            job_flow_id=cluster_id,
        )


class EmrBackend:
    name = "emr"

    def __init__(self, settings: PipelineSettings, env=None):
        from fruits_pipeline.emr_config import EmrSettings

        self.settings = settings
        self.emr = EmrSettings.from_env(env)

    def plan(
        self,
        dt: date,
        params: RunParams,
        *,
        dag_id: str,
        run_id: str,
        token: str,
        basis: BasisPlan,
    ) -> dict[str, Any]:
        """Stage code, bootstrap and local weights to S3; the cluster spec and steps use them."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from fruits_pipeline import emr_config

        client = S3Hook(aws_conn_id=self.settings.aws_conn_id, region_name=self.emr.region)
        files = artifacts.artifact_files(
            REPO_ROOT, params.weights if artifacts.weights_artifact_name(params.weights) else None
        )
        prefix = artifacts.stage_to_s3(
            client.get_conn(), self.settings.lake, files, kms_key_id=self.emr.kms_key_id
        )
        return {
            "job_flow_overrides": emr_config.job_flow_overrides(
                self.emr,
                self.settings.lake,
                artifacts_prefix=prefix,
                dag_id=dag_id,
                run_id=run_id,
                partition=dt,
                token=token,
            ),
            "steps": emr_config.emr_steps(self.settings.lake, dt, prefix, params, token, basis),
        }

    def plan_refit(self, jobs, *, dag_id: str, run_id: str, token: str) -> dict[str, Any]:
        """Stage the code (no weights: a refit reads features) and plan the refit's cluster."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from fruits_pipeline import emr_config

        client = S3Hook(aws_conn_id=self.settings.aws_conn_id, region_name=self.emr.region)
        files = artifacts.artifact_files(REPO_ROOT, None)
        prefix = artifacts.stage_to_s3(
            client.get_conn(), self.settings.lake, files, kms_key_id=self.emr.kms_key_id
        )
        return {
            "job_flow_overrides": emr_config.job_flow_overrides(
                self.emr, self.settings.lake, artifacts_prefix=prefix, dag_id=dag_id,
                run_id=run_id, partition=lease.REFIT, token=token,
            ),  # fmt: skip
            "steps": emr_config.job_steps(jobs, prefix, lease.REFIT),
        }

    def _aws(self) -> dict[str, Any]:
        return {"aws_conn_id": self.settings.aws_conn_id, "region_name": self.emr.region}

    def run_alive(self, token: str, partition: str) -> bool:
        """True while a cluster tagged with the run's token is not terminated."""
        from airflow.providers.amazon.aws.hooks.emr import EmrHook

        from fruits_pipeline.emr_config import ACTIVE_STATES, RUN_TOKEN_TAG, cluster_name_prefix

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

        # emr_conn_id=None: the spec is all ours, no connection extras merged into it.
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

    def watch_step(self, task_id: str, cluster_id, index: int):
        from fruits_pipeline.emr_sensor import CancellingEmrStepSensor

        return CancellingEmrStepSensor(
            task_id=task_id,
            job_flow_id=cluster_id,
            step_id=STEP_IDS.format(index=index),
            poke_interval=30,
            **self._aws(),
        )

    def terminate_cluster(self, cluster_id):
        from airflow.providers.amazon.aws.operators.emr import EmrTerminateJobFlowOperator

        return EmrTerminateJobFlowOperator(
            task_id="terminate_cluster", job_flow_id=cluster_id, **self._aws()
        )


def backend_for(settings: PipelineSettings, env=None) -> LocalBackend | EmrBackend:
    return EmrBackend(settings, env) if settings.backend == "emr" else LocalBackend(settings)
