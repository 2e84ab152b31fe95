"""A DAG file as the structure tests see it: parsed through a DagBag, and its task graph (each
task's upstream and downstream ids)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

Edges = dict[str, tuple[set[str], set[str]]]


def parse_dag_file(dag_file: Path, dag_id: str, env: dict[str, str]):
    """(DagBag, the DAG `dag_id` or None): the file parsed as the DAG processor does, with the
    FRUITS_ settings of `env` only."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("FRUITS_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        bag = DagBag(dag_folder=dag_file, bundle_name="fruits-tests", safe_mode=True)
    return bag, bag.dags.get(dag_id)


def task_edges(dag) -> Edges:
    """(upstream task ids, downstream task ids) of every task of `dag`."""
    return {
        task.task_id: (set(task.upstream_task_ids), set(task.downstream_task_ids))
        for task in dag.tasks
    }


def edges_from(arrows: Iterable[tuple[str, str]]) -> Edges:
    """The edges of a graph given as its arrows (upstream, downstream)."""
    edges: Edges = {}
    for upstream, downstream in arrows:
        edges.setdefault(upstream, (set(), set()))[1].add(downstream)
        edges.setdefault(downstream, (set(), set()))[0].add(upstream)
    return edges
