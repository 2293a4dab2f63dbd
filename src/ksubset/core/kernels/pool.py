"""Spreading rows over threads: numba's OpenMP threads where numba loads its OpenMP layer, else a Python
thread pool (the compiled kernels release the GIL).

Why OpenMP first (measured on 2 cores, medians of interleaved repeats in one process, pool → OpenMP):
SIMPLE forward + backward on the discrete VAE's 2000 × 20 × 10 went from 3.65 to 2.15 ms, k = 1 on
100,000 × 5 from 3.75 to 2.5 ms, ``kl_uniform`` from 2.28 to 1.41 ms. A pool hand-off wakes a sleeping
Python thread, which then competes for the core with PyTorch's OpenMP workers (they spin for a while after
each operation); an OpenMP parallel region starts on threads that are awake. numba's ``workqueue`` layer
(its fallback without OpenMP or TBB) gained nothing over the pool, so it is not used.

A forked child cannot use an OpenMP runtime that its parent started (its threads are not copied): after a
fork the child uses the pool.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

try:  # numba is optional (the ``fast`` extra); this module is imported only with it
    import numba
except ImportError:  # pragma: no cover
    numba = None  # type: ignore[assignment]

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

#: ``"openmp"`` or ``"python"`` once decided (None before the first parallel call), and the process it holds for.
_backend: str | None = None
_backend_pid = -1


def _forget_pool_in_child() -> None:
    global _pool
    _pool = None  # its threads do not exist in the child


os.register_at_fork(after_in_child=_forget_pool_in_child)


def _choose_backend() -> str:
    """``"openmp"`` when numba's parallel launches run on its OpenMP layer in this process, else ``"python"``."""
    from .parallel import _probe  # compiles the twins' module once

    config: Any = numba.config  # its settings are set at import time (no attributes for a type checker)
    env = ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")
    if config.THREADING_LAYER == "default" and not any(v in os.environ for v in env):
        # numba's default order tries TBB first; OpenMP is the one measured here (a user's setting is kept).
        config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    try:
        _probe(np.empty(2, np.int64))
        layer = numba.threading_layer()
    except (ValueError, RuntimeError):  # pragma: no cover - no threading layer could be loaded
        return "python"
    return "openmp" if layer == "omp" else "python"


def backend() -> str:
    """How :func:`run_rows` spreads rows over threads in this process: ``"openmp"`` or ``"python"``.

    Decided at the first call; a process forked after that uses the pool (see the module's docstring).
    """
    global _backend, _backend_pid
    if _backend is None:
        _backend, _backend_pid = _choose_backend(), os.getpid()
    if _backend == "openmp" and os.getpid() != _backend_pid:
        return "python"
    return _backend


def _bounds(B: int, C: int, align: int) -> list[int]:
    """``C + 1`` chunk boundaries over ``0 .. B`` (inner ones multiples of ``align``)."""
    return [min(B, (B * c // C + align - 1) // align * align) for c in range(C + 1)]


def run_rows(fn, B: int, threads: int, args: tuple, align: int = 1, chunks_per_thread: int = 4) -> None:
    """``fn(*args, b0, b1)`` over the row ranges of ``0 .. B-1``, on ``threads`` threads (the caller's included).

    Rows are cut into ``chunks_per_thread`` chunks per thread (boundaries multiples of ``align``). On the
    OpenMP backend the kernel's parallel twin runs them in one parallel region; on the pool the calling thread
    and the pool's threads claim chunks one at a time, so a pool thread that is not scheduled soon slows
    nothing down (the calling thread does more of the chunks itself).
    """
    if threads <= 1:
        if B:
            fn(*args, 0, B)
        return
    C = max(1, min(-(-B // align), chunks_per_thread * threads))
    bounds = _bounds(B, C, align)
    if backend() == "openmp":
        from .parallel import TWINS

        config: Any = numba.config
        numba.set_num_threads(min(threads, config.NUMBA_NUM_THREADS))
        twin: Any = TWINS[fn]
        twin(np.asarray(bounds, np.int64), *args)
        return
    _run_on_pool(fn, threads, args, bounds)


def _run_on_pool(fn, threads: int, args: tuple, bounds: list[int]) -> None:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="ksubset-kernels")
        pool = _pool
    C = len(bounds) - 1
    claim = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (c := next(claim)) < C:
            fn(*args, bounds[c], bounds[c + 1])

    futures = [pool.submit(work) for _ in range(threads - 1)]
    work()
    for f in futures:
        if not f.cancel():  # started: it may hold a chunk
            f.result()
