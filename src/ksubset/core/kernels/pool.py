"""The thread pool that spreads rows over threads (the compiled kernels release the GIL)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def run_rows(fn, B: int, threads: int, args: tuple, align: int = 1, chunks_per_thread: int = 4) -> None:
    """``fn(*args, b0, b1)`` over the row ranges of ``0 .. B-1``, on ``threads`` threads (the caller's included).

    Rows are cut into ``chunks_per_thread`` chunks per thread (boundaries multiples of ``align``) that the calling
    thread and the pool's threads claim one at a time, so a busy machine (a pool thread that is not scheduled
    soon) slows nothing down: the calling thread then simply does more of the chunks itself.
    """
    if threads <= 1:
        if B:
            fn(*args, 0, B)
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="ksubset-kernels")
        pool = _pool
    C = max(1, min(-(-B // align), chunks_per_thread * threads))
    bounds = [min(B, (B * c // C + align - 1) // align * align) for c in range(C + 1)]
    claim = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (c := next(claim)) < C:
            fn(*args, bounds[c], bounds[c + 1])

    futures = [pool.submit(work) for _ in range(threads - 1)]
    work()
    for f in futures:
        if not f.cancel():  # started: it may hold a chunk
            f.result()
