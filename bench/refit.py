"""`make bench-refit`: the refit DAG's two Spark jobs as the lake grows, against numpy.

For each size N, synthetic 1280-d float32 vectors are written day by day as featurize outputs
(`features/dt=D/`: Parquet and `_featurize.json`) in a temporary folder, then:

- the fit alone (`spark_jobs.pca --fit-basis` without --output) over every day, on local[2]:
  wall time, time per row, and peak RSS of the driver's Python process, of the JVM (driver and
  executors share it in local mode) and of the largest Python worker;
- the numpy baseline in one process: every row as float64, standardized, covariance, `eigh`;
  only when N x 1280 float64 fits in the available memory with margin (else skipped, saying so);
- PASS when the job's basis has numpy's k and explained variance (within 1e-4).

Then `spark_jobs.reproject` over the largest N's days, once: rows per second. Prints a table and
writes bench/results/refit.json. The vectors are a rank-500 signal plus noise, its 500
components carrying just over 95% of the standardized variance: k at 0.95 is 500 from a few
tens of thousands of rows on (fewer rows spread the sample eigenvalues).

    python -m bench.refit [--sizes 100000,300000,1000000]   (N or N:DAYS, comma-separated)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import psutil

from bench.run import RESULTS, python_module, run_measured
from spark_jobs.basis import new_basis_id
from spark_jobs.featurize import FEATURIZE_MANIFEST

DIM = 1280
SIGNAL_RANK = 500
# Share of the standardized variance the signal's components carry: just above 0.95, so that
# the 500th component crosses the threshold and the 499th does not.
SIGNAL_SHARE = 0.9501
DEFAULT_SIZES = "100000:30,300000:100,1000000:300"
ROWS_PER_DAY = 3_334  # for sizes given without days
FIRST_DAY = date(2026, 1, 1)
VARIANCE = 0.95
TOLERANCE = 1e-4
# numpy holds N x 1280 float64 values, plus BLAS buffers and the interpreter.
NUMPY_MEMORY_MARGIN = 1.5
WEIGHTS = {"source": "random", "sha256": None}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """[(rows, days)], smallest first: "100000:30,20000" -> [(20000, 6), (100000, 30)]."""
    sizes = []
    for item in text.split(","):
        rows, _, days = item.partition(":")
        rows = int(rows)
        sizes.append((rows, int(days) if days else max(2, round(rows / ROWS_PER_DAY))))
    return sorted(sizes)


class Signal:
    """The vectors' distribution: rows = (z @ loadings + noise) * scale + offset, z ~ N(0, I)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        # Orthonormal loadings: each signal component has variance 1 + noise before scaling.
        self.loadings = np.linalg.qr(rng.standard_normal((DIM, SIGNAL_RANK)))[0].T
        self.loadings = self.loadings.astype(np.float32)
        noise_variance = SIGNAL_RANK * (1 - SIGNAL_SHARE) / (SIGNAL_SHARE * DIM - SIGNAL_RANK)
        self.noise_std = np.float32(np.sqrt(noise_variance))
        # Columns of other scales and offsets, as real features: standardizing matters.
        self.scale = rng.uniform(0.5, 2.0, DIM).astype(np.float32)
        self.offset = rng.uniform(0.0, 1.0, DIM).astype(np.float32)

    def rows(self, count: int, rng: np.random.Generator) -> np.ndarray:
        latent = rng.standard_normal((count, SIGNAL_RANK), dtype=np.float32)
        noise = rng.standard_normal((count, DIM), dtype=np.float32) * self.noise_std
        return (latent @ self.loadings + noise) * self.scale + self.offset


def write_days(root: Path, rows: int, days: int, signal: Signal) -> list[tuple[str, str]]:
    """`rows` vectors over `days` featurize outputs root/features/dt=D/, one day in memory at a
    time; [(day, folder)]."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    written = []
    for index, chunk in enumerate(np.array_split(np.arange(rows), days)):
        day = (FIRST_DAY + timedelta(days=index)).isoformat()
        folder = root / "features" / f"dt={day}"
        folder.mkdir(parents=True)
        vectors = signal.rows(len(chunk), np.random.default_rng([rows, index]))
        table = pa.table(
            {
                "path": [f"file:/raw/dt={day}/class {i % 10}/{i}.jpg" for i in chunk],
                "label": [f"class {i % 10}" for i in chunk],
                "features": pa.FixedSizeListArray.from_arrays(vectors.ravel(), DIM).cast(
                    pa.list_(pa.float32())
                ),
            }
        )
        pq.write_table(table, folder / "part-00000.parquet", use_dictionary=False)
        (folder / FEATURIZE_MANIFEST).write_text(json.dumps({"weights": WEIGHTS}))
        written.append((day, str(folder)))
    return written


def numpy_fit(root: Path) -> dict:
    """The baseline, in this process: standardize, covariance, eigh (one float64 matrix)."""
    import pyarrow.parquet as pq

    files = sorted((root / "features").glob("dt=*/*.parquet"))
    rows = sum(pq.ParquetFile(file).metadata.num_rows for file in files)
    started = time.perf_counter()
    x = np.empty((rows, DIM))
    filled = 0
    for file in files:
        column = pq.read_table(file, columns=["features"]).column(0).combine_chunks()
        block = column.flatten().to_numpy().reshape(-1, DIM)
        x[filled : filled + len(block)] = block
        filled += len(block)
    loaded = time.perf_counter()
    x -= x.mean(axis=0)
    scale = np.sqrt(np.einsum("ij,ij->j", x, x) / rows)
    scale[scale == 0] = 1.0
    x /= scale
    covariance = x.T @ x / (rows - 1)
    eigenvalues = np.linalg.eigh(covariance)[0][::-1]
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    k = int(np.searchsorted(cumulative, VARIANCE - 1e-12) + 1)
    return {
        "rows": rows,
        "load_s": loaded - started,
        "fit_s": time.perf_counter() - loaded,
        "k": k,
        "explained_variance": float(cumulative[k - 1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def numpy_memory_check(rows: int) -> str | None:
    """Why the baseline cannot run on `rows` here, or None when it can."""
    needed = rows * DIM * 8 * NUMPY_MEMORY_MARGIN
    available = psutil.virtual_memory().available
    if needed > available:
        return (
            f"skipped: {rows:,} x {DIM} float64 needs about {needed / 2**30:.1f} GB with margin, "
            f"{available / 2**30:.1f} GB available"
        )
    return None


def fit_only(work: Path, days: list[tuple[str, str]], env: dict[str, str]) -> dict:
    folder = work / "models" / "pca" / new_basis_id()
    command = python_module(
        "spark_jobs.pca", "--master", "local[2]", "--input", *[uri for _, uri in days],
        "--fit-basis", str(folder), "--variance", str(VARIANCE),
        "--days", *[day for day, _ in days],
    )  # fmt: skip
    measured = run_measured(command, env)
    return {**measured, "basis_uri": str(folder)}


def reprojection(work: Path, basis_uri: str, days, env: dict[str, str]) -> dict:
    command = python_module(
        "spark_jobs.reproject", "--master", "local[2]", "--basis", basis_uri,
        "--input", *[uri for _, uri in days], "--days", *[day for day, _ in days],
        "--output", str(work / "refit" / "reduced"), "--report", str(work / "refit" / "reports"),
    )  # fmt: skip
    measured = run_measured(command, env)
    rows = sum(measured["rows"].values())
    timings = measured["timings_s"]
    return {
        "rows": rows,
        "days": len(days),
        "k": measured["k"],
        "wall_s": measured["wall_s"],
        "rows_per_s": rows / measured["wall_s"],
        "project_and_write_s": timings["project_and_write"],
        "project_and_write_rows_per_s": rows / timings["project_and_write"],
        "reports_s": timings["reports"],
        "peak_main_process_mb": measured["peak_main_process_mb"],
        "peak_jvm_mb": measured["peak_jvm_mb"],
        "peak_python_worker_mb": measured["peak_python_worker_mb"],
    }


def check(fit: dict, baseline: dict) -> str:
    if "skipped" in baseline:
        return "no numpy"
    same_k = fit["k"] == baseline["k"]
    close = abs(fit["explained_variance"] - baseline["explained_variance"]) <= TOLERANCE
    return "PASS" if same_k and close else "FAIL"


def table(results: dict) -> str:
    lines = [
        f"Fit a basis alone (spark_jobs.pca --fit-basis, no --output), local[2], {DIM}-d, "
        f"variance {VARIANCE}; {results['machine']['cores']} cores, "
        f"{results['machine']['memory_gb']} GB",
        f"{'rows':>10}{'days':>6}{'k':>5}{'wall s':>9}{'us/row':>8}{'steady':>8}"
        f"{'driver py':>11}{'JVM':>7}{'worker':>8}  |{'numpy s':>9}{'numpy MB':>10}"
        f"{'np k':>6}  check",
        f"{'':38}{'us/row':>8}{'MB':>11}{'MB':>7}{'MB':>8}  |",
    ]
    previous = None
    for size in results["sizes"]:
        fit, baseline = size["fit"], size["numpy"]
        steady = f"{'':>8}"
        if previous is not None:
            extra_s, extra_rows = fit["wall_s"] - previous[1], size["rows"] - previous[0]
            steady = f"{1e6 * extra_s / extra_rows:>8.1f}"
        numpy_part = (
            f"{baseline['load_s'] + baseline['fit_s']:>9.1f}{baseline['peak_rss_mb']:>10.0f}"
            f"{baseline['k']:>6}"
            if "skipped" not in baseline
            else f"{'-':>9}{'-':>10}{'-':>6}"
        )
        lines.append(
            f"{size['rows']:>10,}{size['days']:>6}{fit['k']:>5}{fit['wall_s']:>9.1f}"
            f"{1e6 * fit['wall_s'] / size['rows']:>8.1f}{steady}"
            f"{fit['peak_main_process_mb']:>11.0f}{fit['peak_jvm_mb']:>7.0f}"
            f"{fit['peak_python_worker_mb']:>8.0f}  |{numpy_part}  {size['check']}"
        )
        if "skipped" in baseline:
            lines.append(f"{'':10}numpy {baseline['skipped']}")
        previous = (size["rows"], fit["wall_s"])
    lines += [
        "steady us/row = the extra wall time over the extra rows from the size above: "
        "start-up cancels out",
        f"check: the job's k and explained variance against numpy's (within {TOLERANCE:g})",
    ]
    if "reprojection" in results:
        r = results["reprojection"]
        lines += [
            "",
            f"Reprojection (spark_jobs.reproject), {r['rows']:,} rows over {r['days']} days, "
            f"k = {r['k']}:",
            f"  whole job {r['wall_s']:.1f} s, {r['rows_per_s']:,.0f} rows/s; projection and "
            f"write {r['project_and_write_s']:.1f} s, {r['project_and_write_rows_per_s']:,.0f} "
            f"rows/s; reports {r['reports_s']:.1f} s ({1000 * r['reports_s'] / r['days']:.0f} "
            "ms a day)",
            f"  peak: driver Python {r['peak_main_process_mb']:.0f} MB, JVM "
            f"{r['peak_jvm_mb']:.0f} MB, largest Python worker {r['peak_python_worker_mb']:.0f} MB",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench-refit")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="N or N:DAYS, comma-separated")
    parser.add_argument("--numpy-baseline", help=argparse.SUPPRESS)  # the baseline's process
    args = parser.parse_args(argv)
    if args.numpy_baseline:
        print(json.dumps(numpy_fit(Path(args.numpy_baseline))))
        return 0
    env = os.environ | {"SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    signal = Signal()
    results: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
        },
        "signal": {"rank": SIGNAL_RANK, "share": SIGNAL_SHARE, "dim": DIM},
        "sizes": [],
    }
    sizes = parse_sizes(args.sizes)
    with tempfile.TemporaryDirectory(prefix="fruits-bench-refit-") as folder:
        work = Path(folder)
        for rows, day_count in sizes:
            data = work / f"n{rows}"
            print(f"writing {rows:,} rows over {day_count} days", file=sys.stderr, flush=True)
            days = write_days(data, rows, day_count, signal)
            print(f"fitting on {rows:,} rows", file=sys.stderr, flush=True)
            fit = fit_only(data, days, env)
            why_not = numpy_memory_check(rows)
            baseline = (
                {"skipped": why_not}
                if why_not
                else run_measured(python_module("bench.refit", "--numpy-baseline", str(data)), env)
            )
            verdict = check(fit, baseline)
            results["sizes"].append(
                {"rows": rows, "days": day_count, "fit": fit, "numpy": baseline, "check": verdict}
            )
            if (rows, day_count) != sizes[-1]:
                shutil.rmtree(data / "features")  # only the largest is kept, to reproject
        print(f"reprojecting {rows:,} rows", file=sys.stderr, flush=True)
        results["reprojection"] = reprojection(work / f"n{rows}", fit["basis_uri"], days, env)
    report = table(results)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "refit.json").write_text(json.dumps(results, indent=2))
    return 0 if all(size["check"] != "FAIL" for size in results["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
