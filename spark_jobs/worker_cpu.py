"""Where a featurize worker's time goes: the thread CPU seconds of its named steps, summed over
all workers into the manifest's `worker_cpu_s` on every run (EMR included), which `make bench`
reads. Measurement only: the steps it wraps return what they would unwrapped.

Thread CPU time, not wall time: decoding and the model run in two threads at once. With one
XNNPACK thread, inference runs in the calling thread, so that thread's CPU time is the model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StepCpuSeconds:
    """The CPU seconds of one task's steps, sent to an accumulator (of `SecondsParam`) at its
    end; without an accumulator, steps run unwrapped."""

    def __init__(self, accumulator=None):
        self.accumulator = accumulator
        self.spent: dict[str, float] = {}

    def timed(self, name: str, step: Callable) -> Callable:
        """`step`, adding the CPU time of the thread that runs it to `name`."""
        if self.accumulator is None:
            return step
        self.spent[name] = 0.0

        def measured(*args):
            started = time.thread_time()
            result = step(*args)
            self.spent[name] += time.thread_time() - started
            return result

        return measured

    def send(self) -> None:
        if self.accumulator is not None:
            self.accumulator.add(self.spent)


def manifest_record(summed: dict[str, float]) -> dict[str, float]:
    """`worker_cpu_s` of the manifest: the summed seconds of each step, to the millisecond."""
    return {name: round(value, 3) for name, value in summed.items()}
