"""The jobs of a run and their command lines, shared by the EMR and the local backend."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING

from fruits_pipeline.lake import Lake

if TYPE_CHECKING:
    from fruits_pipeline.basis import BasisPlan
    from fruits_pipeline.params import RunParams

FEATURIZE_SCRIPT = "featurize.py"
PCA_SCRIPT = "pca.py"
REPROJECT_SCRIPT = "reproject.py"
# How long a PCA step waits for a basis that another run is still fitting: that run's length.
BASIS_WAIT_S = 3600
# The id of step `index`, as the add-steps task returned it, for that step's sensor.
STEP_IDS = "{{{{ ti.xcom_pull(task_ids='add_steps')[{index}] }}}}"
# The seconds step `index`'s sensor waits (waits.py), as the task that planned the run computed
# them from the run's data, under the plan's key STEP_WAITS_KEY. A template, not an XComArg: the
# sensors need no edge from the planning task.
STEP_WAITS_KEY = "step_waits_s"
STEP_WAITS = "{{{{ ti.xcom_pull(task_ids='{planner}', key='" + STEP_WAITS_KEY + "')[{index}] }}}}"


def featurize_args(lake: Lake, dt: date, weights: str, run: str) -> list[str]:
    """Arguments of ``spark_jobs/featurize.py``: images in, feature vectors and failures out
    to the run's staging folder."""
    return [
        "--input", lake.raw(dt),
        "--output", lake.features(dt, run),
        "--errors", lake.errors(dt, run),
        "--weights", weights,
        "--model-cache", lake.model_cache(),
    ]  # fmt: skip


def pca_args(
    lake: Lake,
    dt: date,
    run: str,
    *,
    basis: str,
    fit: bool,
    variance: float | None = None,
    k: int | None = None,
) -> list[str]:
    """Arguments of ``spark_jobs/pca.py`` on the run's staging folder: fit the basis `basis`
    on the day (exactly one of ``variance`` and ``k`` sizes it), or apply it."""
    if fit:
        if (variance is None) == (k is None):
            raise ValueError(
                f"give exactly one of variance or k, got variance={variance!r}, k={k!r}"
            )
        size = ["--variance", str(variance)] if k is None else ["--k", str(k)]
        chosen = ["--fit-basis", lake.basis(basis), *size, "--days", dt.isoformat()]
    else:
        # Another run may still be fitting it (two first days at once): wait for it.
        chosen = ["--apply-basis", lake.basis(basis), "--wait-s", str(BASIS_WAIT_S)]
    return [
        "--input", lake.features(dt, run),
        "--output", lake.reduced(dt, run),
        "--report", lake.report(dt, run),
        *chosen,
    ]  # fmt: skip


def run_jobs(
    lake: Lake,
    dt: date,
    run: str,
    params: RunParams,
    basis: BasisPlan,
    *,
    weights: str | None = None,
) -> list[tuple[str, str, list[str]]]:
    """The jobs of one run, in order, for both backends: (name, entry script, arguments).
    `weights` replaces `params.weights` where the backend staged them (EMR)."""
    chosen = pca_args(
        lake, dt, run, basis=basis.basis, fit=basis.fit, variance=params.variance, k=params.k
    )
    return [
        ("featurize", FEATURIZE_SCRIPT, featurize_args(lake, dt, weights or params.weights, run)),
        ("pca", PCA_SCRIPT, chosen),
    ]


def spark_submit_args(
    entry_script: str,
    py_files: str,
    job_args: list[str],
    *,
    deploy_mode: str | None = None,
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """A ``spark-submit`` command line; pass the master as ``conf={"spark.master": ...}``."""
    command = ["spark-submit"]
    if deploy_mode is not None:
        command += ["--deploy-mode", deploy_mode]
    for key, value in (conf or {}).items():
        command += ["--conf", f"{key}={value}"]
    return [*command, "--py-files", py_files, entry_script, *job_args]


def emr_step(name: str, args: list[str]) -> dict:
    """One entry of EMR ``Steps``; a failure cancels the later steps and keeps the cluster
    for the teardown task to terminate (and for the logs)."""
    return {
        "Name": name,
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": list(args)},
    }
