"""How the benchmarks time: interleaved repeats with medians, thread counts, and fresh child processes.

* :func:`interleaved` times several steps round-robin (one run of each per round, after two warm-up runs
  each) and returns every run's time, so that a change in machine load during the measurement affects every
  method alike; tables report medians.
* :func:`threads` runs a block with a given ``torch.set_num_threads`` (the numba kernel follows it too).
* :func:`in_child` runs one case in a fresh ``python -m ksubset.benchmarks.runner`` process and returns its
  times and the peak resident memory, sampled every 5 ms (``ru_maxrss`` is not used: on Linux a child
  started by fork + exec inherits its parent's high-water mark).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import torch

from . import cases

__all__ = ["in_child", "interleaved", "sync", "threads", "time_runs"]


def sync(device: str) -> Callable[[], None]:
    """What makes a timed call wait for the device's queued work (nothing on CPU)."""
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _once(step: Callable[[], None], wait: Callable[[], None]) -> float:
    wait()
    t0 = time.perf_counter()
    step()
    wait()
    return time.perf_counter() - t0


def time_runs(
    step: Callable[[], None], device: str, *, min_runs: int, max_runs: int, budget_s: float, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time (s) of ``step`` and every run's time, after ``warmup`` calls, over
    ``min_runs..max_runs`` runs (as many as fit ``budget_s`` by the last warm-up's time)."""
    wait = sync(device)
    first = 0.0
    for _ in range(max(1, warmup)):
        first = _once(step, wait)
    runs = int(min(max_runs, max(min_runs, budget_s / max(first, 1e-9))))
    times = [_once(step, wait) for _ in range(runs)]
    return statistics.median(times), times


def interleaved(
    steps: dict[str, Callable[[], None]], device: str, *, min_runs: dict[str, int], max_runs: int, budget_s: float
) -> dict[str, list[float]]:
    """Times of several steps measured round-robin: ``{name: [seconds per run]}``.

    Two warm-up runs each; then each step runs as often as ``budget_s`` allows by its warm-up time, at least
    ``min_runs[name]`` and at most ``max_runs`` times. A slow step (``min_runs < 5``) caps every step at
    ``max(min_runs, 5)`` runs, so that the rounds stay interleaved.
    """
    wait = sync(device)
    first = {}
    for name, fn in steps.items():
        for _ in range(2):
            first[name] = _once(fn, wait)
    want = {m: int(min(max_runs, max(min_runs[m], budget_s / max(first[m], 1e-9)))) for m in steps}
    if any(min_runs[m] < 5 for m in steps):
        want = {m: min(want[m], max(min_runs[m], 5)) for m in steps}
    times: dict[str, list[float]] = {m: [] for m in steps}
    while any(len(times[m]) < want[m] for m in steps):
        for m, fn in steps.items():
            if len(times[m]) < want[m]:
                times[m].append(_once(fn, wait))
    return times


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------
# memory: one case in a fresh process


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


class RssSampler:
    """Largest resident size seen by a background thread (every ``period`` s) while the block runs."""

    def __init__(self, period: float = 0.005):
        self.period, self.peak, self._stop = period, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def child(spec: dict) -> dict:
    """Run one case in this (fresh) process: warm-up, timed runs, memory, optional float64 check.

    ``spec``: ``method``, ``B``, ``n``, ``k``, ``runs``, optional ``threads``, ``warmup`` (default 1),
    ``seed`` and ``check_engine`` (the float64 engine for ``max_dmu``). Returns ``median_s``, ``times_s``,
    ``rss_before_mb`` (interpreter, torch, numba, inputs) and ``peak_rss_mb`` (sampled during the timed
    runs, after the warm-up, so that a numba compilation with a stale cache is not counted).
    """
    method, B, n, k = spec["method"], spec["B"], spec["n"], spec["k"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    fn = cases.step(method, B, n, k, "cpu", spec.get("seed", 0))
    rss_before = rss_mb()
    for _ in range(spec.get("warmup", 1)):
        fn()
    times = []
    with RssSampler() as sampler:
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    out = {"median_s": statistics.median(times), "times_s": times, "rss_before_mb": rss_before,
           "peak_rss_mb": sampler.peak}
    if spec.get("check_engine"):
        x, _ = cases.inputs(B, n, "cpu", spec.get("seed", 0))
        engine = None if method == "auto" else method
        mu64 = cases.exact64("marginals", x, k, spec["check_engine"])
        out["max_dmu"] = cases.max_abs_error("marginals", x, k, mu64, engine=engine)
        out["check_engine"] = spec["check_engine"] + " (float64)"
    return out


def in_child(spec: dict, timeout_s: float) -> dict:
    """:func:`child` in a fresh process with this process's thread count (unless ``spec`` names one);
    ``{"error": ...}`` when it fails or times out."""
    spec = {"threads": torch.get_num_threads(), **spec}
    cmd = [sys.executable, "-m", "ksubset.benchmarks.runner", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
