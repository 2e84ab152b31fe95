"""The real data of ../shared (Fruits-360 photos, ImageNet weights), when it is beside the repo.

One source for where it is: `fruits_pipeline.settings` (the weights the pipeline falls back on).
"""

from __future__ import annotations

import pytest

from fruits_pipeline.settings import REPO_ROOT, SHARED_WEIGHTS

SHARED = REPO_ROOT.parent / "shared"
SHARED_SAMPLE = SHARED / "data" / "fruits360-sample"

__all__ = ["SHARED", "SHARED_SAMPLE", "SHARED_WEIGHTS", "require_shared"]


def require_shared() -> None:
    """Skip, saying why, when the real photos and weights of ../shared are not beside the repo."""
    if not (SHARED_WEIGHTS.is_file() and SHARED_SAMPLE.is_dir()):
        pytest.skip(
            f"needs the real Fruits-360 photos and ImageNet weights of ../shared ({SHARED}); "
            "absent here"
        )
