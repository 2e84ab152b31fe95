"""`make bench`'s own arithmetic and sampling, without ../shared: they must not lie."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bench import refit, run


def _run(processing_s: float, decoding: float, model: float, workers: float, jvm: float):
    return {
        "processing_s": processing_s,
        "worker_cpu_s": {"decoding": decoding, "model": model},
        "cpu_s": {"python_workers": workers, "jvm": jvm, "other": 1.0},
    }


def test_steady_figures_cancel_start_up():
    # 1,000 photos more cost 4 s more: 250 images/s, whatever the first run's start-up.
    full, quarter = _run(14.0, 1.9, 7.5, 10.0, 5.0), _run(10.0, 1.2, 2.0, 3.5, 4.4)
    assert run.steady_images_per_s(full, quarter, 2000, 1000) == pytest.approx(250.0)
    per_photo = run.steady_cpu_ms_per_photo(full, quarter, 2000, 1000)
    assert per_photo == pytest.approx(
        {"model": 5.5, "decoding": 0.7, "python_workers_other": 0.3, "jvm": 0.6, "total": 7.1}
    )


def test_tree_sampler_counts_the_cpu_of_a_child_process():
    burner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.process_time() + 1.0\n"
         "while time.process_time() < end: pass\ntime.sleep(0.5)"]
    )
    sampler = run.TreeSampler(burner.pid, interval_s=0.05)
    burner.wait()
    sampler.stop()
    seconds = sampler.cpu_seconds()
    assert seconds["jvm"] == seconds["python_workers"] == 0
    assert 0.8 <= seconds["other"] <= 1.5


def test_refit_sizes_default_to_the_days_of_the_brief():
    assert refit.parse_sizes(refit.DEFAULT_SIZES) == [(100_000, 30), (300_000, 100),
                                                      (1_000_000, 300)]  # fmt: skip
    assert refit.parse_sizes("60000,20000") == [(20_000, 6), (60_000, 18)]


def test_refit_signal_puts_the_threshold_in_its_500th_component():
    signal = refit.Signal()
    noise = float(signal.noise_std) ** 2
    eigenvalues = [1 + noise] * refit.SIGNAL_RANK + [noise] * (refit.DIM - refit.SIGNAL_RANK)
    cumulative = np.cumsum(eigenvalues) / np.sum(eigenvalues)
    assert cumulative[refit.SIGNAL_RANK - 2] < refit.VARIANCE <= cumulative[refit.SIGNAL_RANK - 1]


def test_refit_numpy_baseline_reads_every_day(tmp_path):
    days = refit.write_days(tmp_path, 50, 3, refit.Signal())
    assert [day for day, _ in days] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    fitted = refit.numpy_fit(tmp_path)
    assert fitted["rows"] == 50 and 1 <= fitted["k"] <= 49
    assert refit.check({"k": fitted["k"], "explained_variance": fitted["explained_variance"]},
                       fitted) == "PASS"  # fmt: skip
    assert refit.check({"k": fitted["k"] + 1, "explained_variance": 0.9}, fitted) == "FAIL"
    assert refit.check({"k": 3}, {"skipped": "not enough memory"}) == "no numpy"
