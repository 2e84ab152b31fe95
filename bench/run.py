"""`make bench`: featurize and PCA throughput, against baselines measured in the same run.

Needs ../shared (real photos, real weights: random weights run at other speeds). Prints a table
and writes bench/results/latest.json. Ratios, not absolute times, are the targets: they compare
runs on the same machine under the same conditions.

    (a) the seeds' approach (bench/seeds_featurize.py)
    (b) the project's featurize job (spark_jobs/featurize.py)
    (c) the ceiling: TFLite in one process, all cores, pre-decoded batches (bench/ceiling.py),
        measured right before and right after (b), the faster kept
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from fruits_pipeline.settings import SHARED_WEIGHTS
from spark_jobs.basis import new_basis_id

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BENCH_IMAGES = SHARED / "data" / "fruits360-bench"
RESULTS = REPO / "bench" / "results"
TARGETS = {"b/a throughput": 5.0, "b/a whole process": 3.5, "b/c throughput": 0.8}


class TreeSampler:
    """Peak RSS of a process tree, of its root, of its JVM and of its largest PySpark Python
    worker, and the CPU seconds of its JVMs and of its Python workers, sampled (a process's last
    sampling interval may be missed)."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid, self.interval_s = pid, interval_s
        self.peak_total = self.peak_worker = self.peak_root = self.peak_jvm = 0
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, last CPU seconds seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            try:
                self.peak_root = max(self.peak_root, root.memory_info().rss)
            except psutil.Error:
                return
            for proc in tree:
                try:
                    rss = proc.memory_info().rss
                    total += rss
                    if "pyspark.daemon" in " ".join(proc.cmdline()):
                        self.peak_worker = max(self.peak_worker, rss)
                        kind = "python_workers"
                    else:
                        kind = "jvm" if "java" in proc.name() else "other"
                    if kind == "jvm":
                        self.peak_jvm = max(self.peak_jvm, rss)
                    times = proc.cpu_times()
                    self._cpu[proc.pid] = (kind, times.user + times.system)
                except psutil.Error:
                    continue
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_seconds(self) -> dict[str, float]:
        totals = {"jvm": 0.0, "python_workers": 0.0, "other": 0.0}
        for kind, seconds in self._cpu.values():
            totals[kind] += seconds
        return totals


def run_measured(command: list[str], env: dict[str, str]) -> dict:
    """Run a command; wall time, peak memory, and the JSON its last stdout line prints."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = TreeSampler(process.pid)
    stdout, stderr = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{stderr[-3000:]}")
    return {
        "wall_s": wall,
        "peak_rss_mb": sampler.peak_total / 2**20,
        "peak_python_worker_mb": sampler.peak_worker / 2**20,
        "peak_main_process_mb": sampler.peak_root / 2**20,
        "peak_jvm_mb": sampler.peak_jvm / 2**20,
        "cpu_s": sampler.cpu_seconds(),
        **json.loads(stdout.strip().splitlines()[-1]),
    }


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def subset(source: Path, target: Path, per_class: int) -> int:
    """A smaller copy of the bench set (the first images of each class)."""
    count = 0
    for label in sorted(p for p in source.iterdir() if p.is_dir()):
        for image in sorted(label.glob("*.jpg"))[:per_class]:
            (target / label.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target / label.name / image.name)
            count += 1
    return count


REPEATS = 2  # every featurize run, of (a) and of (b), is timed twice and the faster kept


def best_run(command: list[str], env: dict[str, str], before=None, after=None) -> dict:
    """The faster of REPEATS runs (`before()` runs first each time, untimed; `after(run)` adds
    what the run wrote); peak memory is the larger of the runs'."""
    runs = []
    for _ in range(REPEATS):
        if before is not None:
            before()
        run = run_measured(command, env)
        runs.append(after(run) if after is not None else run)
    best = min(runs, key=lambda run: run["processing_s"])
    return {
        **best,
        "wall_s": min(run["wall_s"] for run in runs),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "peak_python_worker_mb": max(run["peak_python_worker_mb"] for run in runs),
        "runs": runs,
    }


def steady_images_per_s(full: dict, quarter: dict, images: int, quarter_images: int) -> float:
    """Images per second once started: the extra images of the full run over its extra time.

    Start-up (JVM, Python workers, model loading, listing) costs both runs the same and
    cancels out; it is in the whole-process ratio instead.
    """
    return (images - quarter_images) / (full["processing_s"] - quarter["processing_s"])


def steady_cpu_ms_per_photo(full: dict, quarter: dict, images: int, quarter_images: int) -> dict:
    """Where (b)'s CPU time goes, per photo once started (the extra photos over the extra CPU
    seconds, as for throughput): the workers' decoding and model threads from the job's
    manifest, the rest of the workers, and the JVM, from the process tree's CPU times."""

    def per_photo(seconds: float, quarter_seconds: float) -> float:
        return 1000 * (seconds - quarter_seconds) / (images - quarter_images)

    decoding = per_photo(full["worker_cpu_s"]["decoding"], quarter["worker_cpu_s"]["decoding"])
    model = per_photo(full["worker_cpu_s"]["model"], quarter["worker_cpu_s"]["model"])
    workers = per_photo(full["cpu_s"]["python_workers"], quarter["cpu_s"]["python_workers"])
    jvm = per_photo(full["cpu_s"]["jvm"], quarter["cpu_s"]["jvm"])
    return {
        "model": model,
        "decoding": decoding,
        "python_workers_other": workers - model - decoding,
        "jvm": jvm,
        "total": workers + jvm,
    }


def featurize_benchmarks(work: Path, env: dict[str, str]) -> dict:
    images = sum(1 for _ in BENCH_IMAGES.rglob("*.jpg"))
    quarter_images = subset(BENCH_IMAGES, work / "quarter", per_class=10)
    sets = {"full": BENCH_IMAGES, "quarter": work / "quarter"}

    def seeds(name: str) -> dict:
        output = work / f"seeds-{name}"
        command = python_module(
            "bench.seeds_featurize", "--input", str(sets[name]), "--output", str(output),
            "--weights", str(SHARED_WEIGHTS),
        )
        return best_run(command, env, before=lambda: shutil.rmtree(output, ignore_errors=True))

    job_env = env | {"FRUITS_MODEL_CACHE": str(work / "model-cache")}
    job_args = ["--errors", str(work / "errors"), "--weights", str(SHARED_WEIGHTS)]

    def job(name: str, run_env: dict[str, str] = job_env) -> dict:
        output = work / f"features-{name}"
        command = python_module(
            "spark_jobs.featurize", "--input", str(sets[name]), "--output", str(output), *job_args
        )

        def processing(run: dict) -> dict:
            manifest = json.loads((output / "_featurize.json").read_text())
            return {
                **run,
                "processing_s": manifest["timings_s"]["featurize_and_write"],
                "worker_cpu_s": manifest["worker_cpu_s"],
            }

        return best_run(command, run_env, after=processing)

    # A cold model cache: the first run of a new weights file or TensorFlow version converts.
    cold = run_measured(
        python_module(
            "spark_jobs.featurize", "--input", str(BENCH_IMAGES), "--output",
            str(work / "features-cold"), *job_args,
        ),
        job_env,
    )
    ceiling_command = python_module(
        "bench.ceiling", "--input", str(BENCH_IMAGES), "--weights", str(SHARED_WEIGHTS)
    )
    # (c) right before and right after (b), the faster kept: this machine's speed drifts over
    # minutes, so (c) measured once, minutes away from (b), made b/c vary from run to run.
    ceiling_before = run_measured([*ceiling_command, "--tflite-only"], env)
    b_full, b_quarter = job("full"), job("quarter")
    ceiling = run_measured([*ceiling_command, "--features", str(work / "features-full")], env)
    ceiling["tflite_all_cores_before_and_after"] = [
        ceiling_before["tflite_all_cores"], ceiling["tflite_all_cores"]
    ]
    if ceiling_before["tflite_all_cores"] > ceiling["tflite_all_cores"]:
        for name in ("tflite_all_cores", "tflite_by_batch_size"):
            ceiling[name] = ceiling_before[name]
    a_full, a_quarter = seeds("full"), seeds("quarter")
    return {
        "images": images,
        "quarter_images": quarter_images,
        "a_seeds": {
            **a_full,
            "images_per_s": steady_images_per_s(a_full, a_quarter, images, quarter_images),
            "end_to_end_images_per_s": images / a_full["processing_s"],
            "quarter": a_quarter,
        },
        "b_job": {
            **b_full,
            "images_per_s": steady_images_per_s(b_full, b_quarter, images, quarter_images),
            "end_to_end_images_per_s": images / b_full["processing_s"],
            "whole_process_cold_model_cache_s": cold["wall_s"],
            "cpu_ms_per_photo": steady_cpu_ms_per_photo(b_full, b_quarter, images, quarter_images),
            "quarter": b_quarter,
        },
        "c_ceiling": ceiling,
    }


def write_vectors(path: Path, rows: int, seed: int) -> None:
    """Synthetic 1280-d vectors with low-rank structure, written in 8 Parquet parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    basis = rng.normal(0, 1, (40, 1280)).astype(np.float32)
    path.mkdir(parents=True)
    for part, chunk in enumerate(np.array_split(np.arange(rows), 8)):
        latent = rng.normal(0, 1, (len(chunk), 40)).astype(np.float32)
        noise = rng.normal(0, 0.3, (len(chunk), 1280)).astype(np.float32)
        vectors = np.maximum(latent @ basis + noise, 0)
        table = pa.table(
            {
                "path": [f"file:/synthetic/{i}.jpg" for i in chunk],
                "label": [f"class {i % 10}" for i in chunk],
                "features": pa.FixedSizeListArray.from_arrays(vectors.ravel(), 1280).cast(
                    pa.list_(pa.float32())
                ),
            }
        )
        pq.write_table(table, path / f"part-{part:03d}.parquet")


SKLEARN_PCA = """
import json, resource, sys, time
import numpy as np, pyarrow.parquet as pq
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
started = time.perf_counter()
x = np.stack(pq.read_table(sys.argv[1], columns=["features"]).column(0).to_numpy(
    zero_copy_only=False)).astype(np.float64)
loaded = time.perf_counter()
pca = PCA(svd_solver="full").fit(StandardScaler().fit_transform(x))
k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.95) + 1)
print(json.dumps({"fit_s": time.perf_counter() - loaded, "k": k,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def pca_benchmarks(work: Path, env: dict[str, str], sizes: list[int]) -> list[dict]:
    rows = []
    for size in sizes:
        data = work / "features-full" if size == 0 else work / f"vectors-{size}"
        if size:
            write_vectors(data, size, seed=size)
        out = work / f"pca-{size}"
        ours = run_measured(
            python_module(
                "spark_jobs.pca",
                "--input",
                str(data),
                "--output",
                str(out / "reduced"),
                "--fit-basis",
                str(out / "models" / "pca" / new_basis_id()),
                "--report",
                str(out / "report"),
            ),
            env,
        )
        manifest = json.loads((out / "report" / "manifest.json").read_text())
        reference = run_measured([sys.executable, "-c", SKLEARN_PCA, str(data)], env)
        rows.append(
            {
                "rows": manifest["rows"],
                "k": manifest["k"],
                "sklearn_k": reference["k"],
                "fit_s": manifest["timings_s"]["fit"],
                "fit_and_transform_s": manifest["timings_s"]["fit"]
                + manifest["timings_s"]["transform_and_write"],
                "job_wall_s": ours["wall_s"],
                "job_peak_rss_mb": ours["peak_rss_mb"],
                "driver_python_peak_mb": ours["peak_main_process_mb"],
                "sklearn_fit_s": reference["fit_s"],
                "sklearn_peak_rss_mb": reference["peak_rss_mb"],
            }
        )
    return rows


def dag_parse_seconds(env: dict[str, str], repeats: int = 5) -> float:
    code = (
        "import time, runpy; t = time.perf_counter(); "
        f"runpy.run_path({str(REPO / 'dags' / 'fruits_features.py')!r}); "
        "print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", "import airflow.sdk; " + code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return float(np.median(times))


def demo_timings(work: Path, env: dict[str, str]) -> dict:
    done = subprocess.run(
        python_module(
            "devtools.demo", "--lake", str(work / "demo-lake"), "--date", "2026-01-15"
        ),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    timings = [line for line in done.stdout.splitlines() if line.startswith("timings:")]
    return {"exit_code": done.returncode, "timings": timings[-1] if timings else None}


def table(results: dict) -> str:
    f = results["featurize"]
    a, b, c = f["a_seeds"], f["b_job"], f["c_ceiling"]
    ratios = {
        "b/a throughput": b["images_per_s"] / a["images_per_s"],
        "b/a whole process": a["wall_s"] / b["wall_s"],
        "b/c throughput": b["images_per_s"] / c["tflite_all_cores"],
    }
    results["ratios"] = ratios
    batch_sizes = ", ".join(f"{k}: {v:.0f}" for k, v in c["tflite_by_batch_size"].items())
    before, after = c["tflite_all_cores_before_and_after"]
    lines = [
        f"Featurize, {f['images']} real photos, ImageNet weights, {os.cpu_count()} cores; "
        f"each featurize run timed {REPEATS} times, the faster kept",
        f"{'':38}{'steady':>8}{'end-to-end':>12}{'whole':>8}{'peak RSS':>10}{'peak worker':>13}",
        f"{'':38}{'img/s':>8}{'img/s':>12}{'s':>8}{'MB':>10}{'MB':>13}",
    ]
    rows = (("(a) seeds: pandas UDF + Keras predict", a), ("(b) spark_jobs.featurize", b))
    for title, run in rows:
        lines.append(
            f"{title:38}{run['images_per_s']:>8.1f}{run['end_to_end_images_per_s']:>12.1f}"
            f"{run['wall_s']:>8.1f}{run['peak_rss_mb']:>10.0f}{run['peak_python_worker_mb']:>13.0f}"
        )
    lines += [
        f"{'(c) ceiling: TFLite, 1 process':38}{c['tflite_all_cores']:>8.1f}"
        f"   (by batch size: {batch_sizes})",
        f"{'':38}   (the faster of {before:.1f} right before (b) and {after:.1f} right after)",
        f"{'    Keras predict_on_batch':38}{c['keras_predict_on_batch']:>8.1f}",
        "",
        f"steady img/s = ({f['images']} - {f['quarter_images']}) images / (time on {f['images']}"
        f" - time on {f['quarter_images']}): start-up cancels out",
        f"(b) whole process with a cold model cache (conversion included): "
        f"{b['whole_process_cold_model_cache_s']:.1f} s",
        f"(b) peak Python worker: {b['quarter']['peak_python_worker_mb']:.0f} MB on "
        f"{f['quarter_images']} photos, {b['peak_python_worker_mb']:.0f} MB on {f['images']}",
        "(b) CPU per photo once started, ms: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in b["cpu_ms_per_photo"].items())
        + f"; 0.8 x (c) allows {os.cpu_count() * 1000 / (0.8 * c['tflite_all_cores']):.2f}",
        f"largest |(b) - plain Keras| over {c['keras_checked_images']} photos: "
        f"{c['largest_difference_to_keras']:.2e} (target < 1e-3)",
        "",
    ]
    for name, value in ratios.items():
        verdict = "met" if value >= TARGETS[name] else "NOT MET"
        lines.append(f"{name:20} {value:6.2f}  (target >= {TARGETS[name]}: {verdict})")
    if "pca" in results:
        lines += [
            "",
            "PCA (variance 0.95) vs sklearn PCA(svd_solver='full'), same data",
            f"{'rows':>8}{'k':>6}{'fit s':>8}{'fit+proj s':>12}{'job peak MB':>13}"
            f"{'driver py MB':>14}{'sklearn s':>11}{'sklearn MB':>12}",
        ]
        for row in results["pca"]:
            lines.append(
                f"{row['rows']:>8}{row['k']:>6}{row['fit_s']:>8.1f}"
                f"{row['fit_and_transform_s']:>12.1f}{row['job_peak_rss_mb']:>13.0f}"
                f"{row['driver_python_peak_mb']:>14.0f}{row['sklearn_fit_s']:>11.1f}{row['sklearn_peak_rss_mb']:>12.0f}"
            )
    if "dag_parse_s" in results:
        lines.append(f"\nDAG file import: {results['dag_parse_s']:.3f} s (median of 5)")
    if "demo" in results:
        lines.append(f"make demo on the shared sample: {results['demo']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--skip-pca", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument(
        "--pca-sizes", default="0,20000,100000", help="rows; 0 = the real featurize output"
    )
    args = parser.parse_args(argv)
    if not (BENCH_IMAGES.is_dir() and SHARED_WEIGHTS.is_file()):
        print(f"make bench needs ../shared's bench photos and weights ({SHARED}); absent here")
        return 2
    env = os.environ | {"SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    results: dict = {
        "machine": {
            "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
        }
    }
    with tempfile.TemporaryDirectory(prefix="fruits-bench-") as folder:
        work = Path(folder)
        results["featurize"] = featurize_benchmarks(work, env)
        # Kept at once: a later part failing must not lose twenty minutes of measurements.
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "featurize.json").write_text(json.dumps(results, indent=2))
        if not args.skip_pca:
            sizes = [int(s) for s in args.pca_sizes.split(",")]
            results["pca"] = pca_benchmarks(work, env, sizes)
        results["dag_parse_s"] = dag_parse_seconds(env)
        if not args.skip_demo:
            results["demo"] = demo_timings(work, env)
    report = table(results)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "latest.txt").write_text(report + "\n")
    return 0 if all(results["ratios"][n] >= t for n, t in TARGETS.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
