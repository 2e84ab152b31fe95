"""The local backend: a transient Spark standalone cluster on this machine, steps run as
spark-submits by the cluster's step runner."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from fruits_pipeline import artifacts, lease, steps
from fruits_pipeline.backends.base import ClusterBackend
from fruits_pipeline.basis import BasisPlan
from fruits_pipeline.params import RunParams
from fruits_pipeline.settings import REPO_ROOT, PipelineSettings

# Every process of a local cluster carries its run's token, so the day's lease can tell that
# the run is alive (on EMR the cluster's `run_token` tag does this).
RUN_TOKEN_ENV = "FRUITS_RUN_TOKEN"  # noqa: S105 (a variable name, not a password)


class LocalBackend(ClusterBackend):
    name = "local"

    def __init__(self, settings: PipelineSettings):
        self.settings = settings

    def plan(self, dt: date, params: RunParams, basis: BasisPlan, run: lease.RunIdentity) -> dict:
        """Stage the jobs in a content-addressed local folder; steps are plain spark-submits."""
        jobs = steps.run_jobs(self.settings.lake, dt, run.token, params, basis)
        return self._plan(jobs, f"dt={dt.isoformat()}", run.token)

    def plan_refit(self, jobs, run: lease.RunIdentity) -> dict[str, Any]:
        """The same for a refit's jobs (steps.py, refit.py)."""
        return self._plan(jobs, lease.REFIT, run.token)

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
            # Short jobs whose heavy work is in Python: the C2 JIT compiler would take a sizeable
            # share of the cores' time from them (see spark_jobs/session.py).
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
        from fruits_pipeline.procs import marked_processes

        return bool(marked_processes(RUN_TOKEN_ENV, token))

    def create_cluster(self, job_flow_overrides):
        from fruits_pipeline.backends.local.operators import LocalCreateClusterOperator

        return LocalCreateClusterOperator(
            task_id="create_cluster",
            state_dir=self.settings.local_state_dir,
            job_flow_overrides=job_flow_overrides,
        )

    def add_steps(self, cluster_id, step_list):
        from fruits_pipeline.backends.local.operators import LocalAddStepsOperator

        return LocalAddStepsOperator(
            task_id="add_steps",
            state_dir=self.settings.local_state_dir,
            job_flow_id=cluster_id,
            steps=step_list,
        )

    def watch_step(self, task_id: str, cluster_id, index: int, wait_s):
        from fruits_pipeline.backends.local.operators import LocalStepSensor

        return LocalStepSensor(
            task_id=task_id,
            state_dir=self.settings.local_state_dir,
            job_flow_id=cluster_id,
            step_id=steps.STEP_IDS.format(index=index),
            wait_s=wait_s,
        )

    def terminate_cluster(self, cluster_id):
        from fruits_pipeline.backends.local.operators import LocalTerminateClusterOperator

        return LocalTerminateClusterOperator(
            task_id="terminate_cluster",
            state_dir=self.settings.local_state_dir,
            job_flow_id=cluster_id,
        )
