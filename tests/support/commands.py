"""Commands the tests run and read: output captured as text, the exit code left to the test."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_command(
    args: Sequence[str], *, cwd: Path | None = None, timeout: float, **options
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
        **options,
    )  # fmt: skip
