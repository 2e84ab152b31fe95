"""Both jobs run the EMR way: `spark-submit --py-files spark_jobs.zip spark_jobs/<job>.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark import find_spark_home

from devtools.samples import make_synthetic_fruits
from fruits_pipeline.artifacts import build_jobs_zip

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BASIS = "basis-20260102T020000Z-0123abcd"


def spark_submit(zip_path: Path, script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH",)
    } | {"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    command = [
        os.path.join(find_spark_home._find_spark_home(), "bin", "spark-submit"),
        "--master", "local[2]", "--conf", "spark.ui.enabled=false",
        "--py-files", str(zip_path), str(REPO / "spark_jobs" / script), *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def test_featurize_then_pca_with_spark_submit(tmp_path):
    raw = tmp_path / "raw"
    make_synthetic_fruits(raw, n_classes=3, per_class=3, seed=2)
    zip_path = tmp_path / "spark_jobs.zip"
    zip_path.write_bytes(build_jobs_zip(REPO))

    featurized = spark_submit(zip_path, "featurize.py", [
        "--input", str(raw), "--output", str(tmp_path / "features"),
        "--errors", str(tmp_path / "errors"), "--weights", "random",
    ])
    assert featurized.returncode == 0, featurized.stderr[-3000:]
    assert json.loads(featurized.stdout.strip().splitlines()[-1]) == {
        "images_found": 9, "featurized": 9, "errors": 0,
    }
    basis = tmp_path / "models" / "pca" / BASIS
    reduced = spark_submit(zip_path, "pca.py", [
        "--input", str(tmp_path / "features"), "--output", str(tmp_path / "reduced"),
        "--fit-basis", str(basis), "--report", str(tmp_path / "report"), "--k", "3",
        "--days", "2026-01-02",
    ])
    assert reduced.returncode == 0, reduced.stderr[-3000:]
    summary = json.loads(reduced.stdout.strip().splitlines()[-1])
    assert (summary["basis"], summary["k"], summary["rows"]) == (BASIS, 3, 9)
    table = pq.read_table(tmp_path / "reduced").to_pandas()
    assert len(table) == 9 and {len(v) for v in table["pca_features"]} == {3}
    assert set(table["basis"]) == {BASIS}
    assert {"pca_model.json", "manifest.json"} <= {p.name for p in basis.iterdir()}
