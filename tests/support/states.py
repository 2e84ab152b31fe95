"""The task states of a `fruits_features` run: what a test expects and what a run shows."""

from __future__ import annotations

# The DAG's tasks; a run on a day without uploads skips all but the first.
ALL_TASKS = frozenset(
    {
        "check_uploads",
        "prepare_run",
        "create_cluster",
        "add_steps",
        "watch_featurize",
        "watch_pca",
        "validate",
        "publish",
        "terminate_cluster",
        "release_partition",
    }
)


def expected_states(default: str = "success", **overrides: str) -> dict[str, str]:
    """Every task of the DAG in state `default`, except the tasks named in `overrides`."""
    unknown = set(overrides) - ALL_TASKS
    assert not unknown, f"not tasks of the DAG: {sorted(unknown)}"
    return {**dict.fromkeys(ALL_TASKS, default), **overrides}


SKIPPED_RUN = expected_states("skipped", check_uploads="success")

# A run whose featurize step failed: PCA, validation and publication never ran; the teardowns did.
FEATURIZE_FAILED = expected_states(
    watch_featurize="failed",
    watch_pca="upstream_failed",
    validate="upstream_failed",
    publish="upstream_failed",
)


def task_states(run) -> dict[str, str | None]:
    """The state of each task instance of a DagRun (as `dag.test()` returns it)."""
    return {ti.task_id: ti.state for ti in run.get_task_instances()}
