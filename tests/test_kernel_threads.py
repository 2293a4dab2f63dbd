"""Rows spread over threads (:mod:`ksubset.core.kernels.pool`): the OpenMP twins and the Python pool give
bit-for-bit what one thread gives, for every kernel; two Python threads may call the kernels at once; a
process forked after a parallel launch still computes (on the pool) instead of hanging."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from ksubset.core import kernels  # noqa: E402
from ksubset.core.kernels import parallel, pool  # noqa: E402


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _problem(B: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * 3
    theta[torch.rand(B, n, generator=g) < 0.2] = float("-inf")
    free = torch.isfinite(theta).sum(-1)
    return theta, torch.minimum(free, torch.tensor(k))


def _every_kernel():
    """One result per row kernel: lanes (``K <= 16``), per-row sweep, their ``log Z``, the categorical pair."""
    out = {}
    theta, k = _problem(1200, 20, 6, seed=0)  # lanes layout
    K = int(k.max())
    u = kernels.uniforms(theta, 2, torch.Generator().manual_seed(1))
    out["lanes sweep"] = kernels.sample_and_marginals_given(theta, k, K, u)
    out["lanes log Z"] = kernels.log_partition(theta, k, K)
    theta, k = _problem(64, 200, 40, seed=2)  # per-row layout
    K = int(k.max())
    u = kernels.uniforms(theta, 2, torch.Generator().manual_seed(3))
    out["row sweep"] = kernels.sample_and_marginals_given(theta, k, K, u)
    out["row log Z"] = kernels.log_partition(theta, k, K)
    theta, _ = _problem(5000, 30, 1, seed=4)
    active = torch.isfinite(theta).any(-1)
    u = torch.rand(3, 5000, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, p = kernels.categorical(theta, active, u)
    out["categorical"] = z, p
    out["categorical Cov v"] = kernels.categorical_cov_vec(
        p, theta, torch.randn(5000, 30, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    )
    return out


def _flat(x):
    return [t for v in x for t in _flat(v)] if isinstance(x, (tuple, list)) else [x]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(_flat(a[name]), _flat(b[name]), strict=True):
            assert torch.equal(x, y), name


def _serial(monkeypatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(kernels, "PARALLEL_MIN_WORK", 1 << 62)
        return _every_kernel()


def test_openmp_twins_compute_what_one_thread_computes(monkeypatch):
    if pool.backend() != "openmp":
        pytest.skip(f"numba's OpenMP layer is not available here (backend {pool.backend()!r})")
    expected = _serial(monkeypatch)
    used = []
    twins = set(parallel.TWINS.values()) - {parallel._halves_forward_par, parallel._halves_backward_par}
    for fn, twin in list(parallel.TWINS.items()):

        def counted(*args, _twin=twin):
            used.append(_twin)
            return _twin(*args)

        monkeypatch.setitem(parallel.TWINS, fn, counted)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    _assert_same(_every_kernel(), expected)
    assert set(used) == twins  # every twin ran


def test_python_pool_computes_what_one_thread_computes(monkeypatch):
    expected = _serial(monkeypatch)
    monkeypatch.setattr(pool, "_backend", "python")
    monkeypatch.setattr(pool, "_backend_pid", os.getpid())
    calls = []
    real = pool._run_on_pool
    monkeypatch.setattr(pool, "_run_on_pool", lambda *a: (calls.append(a[0]), real(*a)))
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    _assert_same(_every_kernel(), expected)
    assert len(set(calls)) == 6


def test_two_python_threads_may_run_kernels_at_once(monkeypatch):
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    problems = [_problem(600, 20, 5, seed=s) for s in (10, 11)]
    expected = [kernels.marginals(t, k, int(k.max())) for t, k in problems]
    results: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            t, k = problems[i]
            for _ in range(20):
                mu = kernels.marginals(t, k, int(k.max()))
                if not torch.equal(mu, expected[i]):
                    raise AssertionError(f"thread {i}: marginals differ")
            results[i] = mu
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a kernel call hung"
    assert not errors, errors
    assert all(r is not None for r in results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_computes_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    theta, k = _problem(600, 20, 5, seed=12)
    expected = kernels.marginals(theta, k, int(k.max()))  # the parent launches its threads first
    parent_backend = pool.backend()
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only when it computed the same marginals on the pool
        status = 1
        try:
            ok = torch.equal(kernels.marginals(theta, k, int(k.max())), expected)
            status = 0 if ok and pool.backend() == "python" else 3
        finally:
            os._exit(status)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child hung (parent backend {parent_backend!r})")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_bounds_cover_every_row_once_on_aligned_boundaries():
    for B in (1, 7, 64, 1000):
        for C in (1, 3, 8):
            for align in (1, 16):
                b = pool._bounds(B, C, align)
                assert b[0] == 0 and b[-1] == B and all(np.diff(b) >= 0)
                assert all(x % align == 0 or x == B for x in b)
    assert np.diff(pool._bounds(1000, 8, 1)).max() <= 125


def test_a_split_row_computes_the_same_on_openmp_and_on_the_pool(monkeypatch):
    """One long row, its halves on two threads (:mod:`ksubset.core.kernels.split`): both backends give the
    same bits, and each ran its halves' kernels."""
    from ksubset.core.kernels import split

    if pool.backend() != "openmp":
        pytest.skip(f"numba's OpenMP layer is not available here (backend {pool.backend()!r})")
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(split, "SPLIT_MIN_ITEMS", 0)
    theta, k = _problem(1, 3000, 200, seed=20)
    K = int(k.max())
    u = kernels.uniforms(theta, 3, torch.Generator().manual_seed(21))
    v = torch.randn(1, 3000, generator=torch.Generator().manual_seed(22), dtype=torch.float64)

    def run():
        return (*kernels.sample_and_marginals_given(theta, k, K, u), *kernels.entropy_marginals_cov(theta, k, K, v))

    used = []
    for fn in (split._halves_forward, split._halves_backward):
        twin = parallel.TWINS[fn]
        monkeypatch.setitem(parallel.TWINS, fn, lambda *a, _t=twin: (used.append(_t), _t(*a))[1])
    on_openmp = run()
    assert set(used) == {parallel._halves_forward_par, parallel._halves_backward_par}
    monkeypatch.setattr(pool, "_backend", "python")
    monkeypatch.setattr(pool, "_backend_pid", os.getpid())
    calls = []
    real = pool._run_on_pool
    monkeypatch.setattr(pool, "_run_on_pool", lambda *a: (calls.append(a[0]), real(*a)))
    on_pool = run()
    assert set(calls) == {split._halves_forward, split._halves_backward}
    for x, y in zip(on_openmp, on_pool, strict=True):
        assert torch.equal(x, y)
