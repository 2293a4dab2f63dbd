"""A long row swept as two halves on two threads (:mod:`ksubset.core.kernels.split`): the same marginals,
entropy, ``Cov v`` and ``log Z`` as the whole-row sweep and as enumeration, draws that follow the law, and
the split taken only where it should be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from ksubset.core import kernels  # noqa: E402
from ksubset.core.kernels import split  # noqa: E402

from oracle import enumerate_row, subset_chi_square  # noqa: E402


@pytest.fixture
def forced(monkeypatch):
    """Every row of one-row batches split (whatever its length), on two threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(split, "SPLIT_MIN_ITEMS", 0)
    calls = []
    real = split.split_row_sweep

    def counted(*args):
        calls.append(args[8])  # the row
        return real(*args)

    monkeypatch.setattr(kernels, "split_row_sweep", counted)
    yield calls
    torch.set_num_threads(before)


def _whole(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(split, "SPLIT_MIN_ITEMS", 1 << 62)
        return fn()


def _row(n: int, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(1, n, generator=g, dtype=torch.float64) * scale
    theta[0, torch.rand(n, generator=g) < 0.2] = float("-inf")
    return theta, int(torch.isfinite(theta).sum())


def _tilted_abs_sum(x: torch.Tensor, k: int) -> float:
    """``sum_i |x_i + c|`` with ``sum_i sigmoid(x_i + c) = k`` (bisection in float64)."""
    lo, hi = float(-x.max()) - 800.0, float(-x.min()) + 800.0
    for _ in range(200):
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if float(torch.sigmoid(x + c).sum()) < k else (lo, c)
    return float((x + 0.5 * (lo + hi)).abs().sum())


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0, 1000.0])
@pytest.mark.parametrize("n", [2, 3, 9, 64, 301, 2500])
def test_split_matches_the_whole_row_sweep(forced, monkeypatch, n, scale):
    theta, m = _row(n, scale, seed=n)
    if m < 2:
        pytest.skip("fewer than two free items: nothing to split")
    v = torch.randn(1, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k in sorted({1, 2, m // 3, m // 2, m - 1} - {0, m}):
        kk = torch.tensor([k])

        def run(kk=kk, k=k):
            h, mu, cov = kernels.entropy_marginals_cov(theta, kk, k, v)
            return h, mu, cov, kernels.marginals(theta, kk, k)

        calls = len(forced)
        got = run()
        assert len(forced) == calls + 2, "the split path was not taken"
        want = _whole(monkeypatch, run)
        # each entropy's absolute error is a few eps * (sum_i |y_i| + m + H), y the tilted logits (see
        # kernels.entropy): at n = 2500, k = m - 1 both are 8e-12 from the exact value, on either side
        atol = 16 * 2.0**-52 * (_tilted_abs_sum(theta[torch.isfinite(theta)], k) + m + float(want[0].abs().max()))
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=atol, msg="entropy")
        for a, b, what in zip(got[1:], want[1:], ("marginals", "Cov v", "marginals alone"), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12 * (1 + float(b.abs().max())), msg=what)
        assert abs(float(got[1].sum()) - k) < 1e-9


@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_split_marginals_and_entropy_match_enumeration(forced, k):
    theta = torch.tensor([[0.3, -1.2, 2.0, float("-inf"), 0.0, 1.1, -0.4, 0.7]], dtype=torch.float64)
    e = enumerate_row(theta[0].numpy(), k)
    h, mu, _ = kernels.entropy_marginals_cov(theta, torch.tensor([k]), k, None)
    assert forced, "the split path was not taken"
    np.testing.assert_allclose(mu[0].numpy(), e.marginals, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(float(h[0]), e.entropy, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5, 6])
def test_split_draws_follow_the_law(forced, k):
    """Exactly k ones on free items; subset frequencies pass a chi-square test against enumeration (the
    count of the first half and its recycled uniform included)."""
    theta = torch.tensor([[0.3, -1.2, 2.0, float("-inf"), 0.0, 1.1, -0.4, 0.7]], dtype=torch.float64)
    S = 40_000
    z = kernels.sample(theta, torch.tensor([k]), k, S, torch.Generator().manual_seed(k))[:, 0]
    assert forced, "the split path was not taken"
    assert (z.sum(-1) == k).all() and (z[:, 3] == 0).all()
    chi2, dof = subset_chi_square(z.numpy(), theta[0].numpy(), k)
    # P(chi2 > dof + 6 sqrt(2 dof)) is below 1e-4 for these degrees of freedom
    assert chi2 < dof + 6 * np.sqrt(2 * dof), (chi2, dof)


def test_split_draws_agree_with_the_marginals_of_a_long_row(forced):
    """A longer row (too many subsets to enumerate): the mean of the draws against the exact marginals."""
    theta, m = _row(400, 2.0, seed=3)
    k = 37
    S = 4000
    z, mu = kernels.sample_and_marginals(theta, torch.tensor([k]), k, S, torch.Generator().manual_seed(5))
    assert forced
    assert (z.sum(-1) == k).all()
    freq = z[:, 0].double().mean(0)
    se = (mu[0] * (1 - mu[0]) / S).sqrt().clamp_min(1e-3)
    assert float(((freq - mu[0]).abs() / se).max()) < 5.5


def test_the_split_is_taken_only_for_long_rows_fewer_than_threads(monkeypatch):
    torch.set_num_threads(2)
    calls = []
    monkeypatch.setattr(kernels, "split_row_sweep", lambda *a: calls.append(a[8]) or split.split_row_sweep(*a))
    monkeypatch.setattr(split, "SPLIT_MIN_ITEMS", 1000)
    theta, _ = _row(1500, 1.0, seed=1)
    kernels.marginals(theta, torch.tensor([100]), 100)  # one long row, two threads: split
    assert calls == [0]
    kernels.marginals(theta.expand(2, -1).contiguous(), torch.tensor([100, 90]), 100)  # rows = threads
    theta, _ = _row(500, 1.0, seed=1)
    kernels.marginals(theta, torch.tensor([100]), 100)  # short
    assert calls == [0]
