"""The two backends behind one DAG shape: EMR in production, Spark standalone on this machine.

Each backend plans a run (stages the code, builds the cluster spec and the steps) and makes
the four cluster operators: create (a setup), add steps, one sensor per step, terminate (a
teardown). The EMR ones are the amazon provider's (`emr/`); the local ones mirror their
arguments (`local/`). Operator modules are imported when a backend makes its operators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fruits_pipeline.settings import PipelineSettings

if TYPE_CHECKING:
    from fruits_pipeline.backends.emr.backend import EmrBackend
    from fruits_pipeline.backends.local.backend import LocalBackend


def backend_for(settings: PipelineSettings, env=None) -> LocalBackend | EmrBackend:
    if settings.backend == "emr":
        from fruits_pipeline.backends.emr.backend import EmrBackend

        return EmrBackend(settings, env)
    from fruits_pipeline.backends.local.backend import LocalBackend

    return LocalBackend(settings)
