"""What the two backends share: a cluster's tasks, wired the same way for both DAGs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fruits_pipeline import steps


@dataclass(frozen=True)
class ClusterTasks:
    create: Any  # a setup
    add_steps: Any
    watches: list[Any]  # one sensor per step, in the steps' order
    terminate: Any  # the teardown of `create`

    @property
    def until_done(self) -> list[Any]:
        """Create, add the steps, wait for each: the body's order."""
        return [self.create, self.add_steps, *self.watches]


class ClusterBackend:
    """A backend makes the four cluster operators (`create_cluster`, `add_steps`, `watch_step`,
    `terminate_cluster`); this wires them."""

    def cluster_tasks(self, plan: Any, watch_task_ids: Sequence[str]) -> ClusterTasks:
        """A transient cluster for `plan` (the XCom of the task that planned the run): created
        as a setup, the plan's steps added, one sensor per step, terminated as its teardown.
        Each sensor waits as long as the plan's `step_waits_s` says (waits.py)."""
        cluster = self.create_cluster(plan["job_flow_overrides"])
        added = self.add_steps(cluster.output, plan["steps"])
        watches = [
            self.watch_step(
                task_id,
                cluster.output,
                index,
                steps.STEP_WAITS.format(planner=plan.operator.task_id, index=index),
            )
            for index, task_id in enumerate(watch_task_ids)
        ]
        terminated = self.terminate_cluster(cluster.output).as_teardown(setups=cluster)
        return ClusterTasks(cluster, added, watches, terminated)

    def create_cluster(self, job_flow_overrides: Any) -> Any:
        raise NotImplementedError

    def add_steps(self, cluster_id: Any, step_list: Any) -> Any:
        raise NotImplementedError

    def watch_step(self, task_id: str, cluster_id: Any, index: int, wait_s: Any) -> Any:
        """A sensor of step `index` that gives up after `wait_s` seconds (a template)."""
        raise NotImplementedError

    def terminate_cluster(self, cluster_id: Any) -> Any:
        raise NotImplementedError
