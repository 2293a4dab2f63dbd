"""Exact inference against brute-force enumeration, scipy's Poisson-binomial, and across engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ksubset

from oracle import enumerate_row, kl_rows

SCALES = [0.01, 1.0, 30.0, 1000.0]
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def _close_log(actual, expected, dtype, theta):
    """Log-quantities (log Z, log p, H, KL) are sums of logits: their error scales with |theta|.

    float64 gets 1e-9 relative to max(1, |value|); float32 1e-5 relative to max(1, |value|, max |theta|),
    i.e. the rounding of the float32 inputs themselves sets the scale.
    """
    scale = max(1.0, abs(expected))
    if dtype == torch.float32:
        finite = theta[np.isfinite(theta)]
        scale = max(scale, float(np.abs(finite).max()) if finite.size else 0.0)
    assert abs(actual - expected) <= RTOL[dtype] * scale, (actual, expected)


def _rows_for(n: int, scale: float, rng: np.random.Generator, with_inf: bool):
    """One row per k in 0..n (per-row k in a single batched call)."""
    theta = rng.standard_normal((n + 1, n)) * scale
    ks = np.arange(n + 1)
    if with_inf:
        for r in range(n + 1):
            kind = rng.integers(0, 3, size=n)  # 0 finite, 1 -inf, 2 +inf
            n_pos = 0
            for i in range(n):
                avail_left = n - i - 1
                if kind[i] == 2 and n_pos < ks[r]:
                    theta[r, i] = np.inf
                    n_pos += 1
                elif kind[i] == 1 and (theta[r, :i] != -np.inf).sum() + avail_left >= ks[r]:
                    theta[r, i] = -np.inf
    return theta, ks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("with_inf", [False, True])
def test_against_enumeration(engine, dtype, scale, with_inf):
    rng = np.random.default_rng(hash((scale, with_inf)) % 2**32)
    for n in range(1, 13):
        theta, ks = _rows_for(n, scale, rng, with_inf)
        t = torch.tensor(theta, dtype=dtype)
        theta = t.double().numpy()  # the oracle sees the same (rounded) inputs
        k = torch.tensor(ks)
        log_z = ksubset.log_partition(t, k)
        mu = ksubset.marginals(t, k)
        ent = ksubset.entropy(t, k)
        mode = ksubset.mode(t, k)
        q = torch.tensor(rng.standard_normal(theta.shape) * scale, dtype=dtype)
        q = torch.where(torch.isinf(t), t, q)  # same forced / unavailable items as p
        kl = ksubset.kl_divergence(t, q, k)
        atol = RTOL[dtype]
        for r in range(n + 1):
            e = enumerate_row(theta[r], int(ks[r]))
            _close_log(float(log_z[r]), e.log_z, dtype, theta[r])
            assert np.allclose(mu[r].double().numpy(), e.marginals, rtol=RTOL[dtype], atol=atol)
            _close_log(float(ent[r]), e.entropy, dtype, theta[r])
            _close_log(float(kl[r]), kl_rows(theta[r], q[r].double().numpy(), int(ks[r])), dtype, theta[r])
            # the mode is a most probable subset (ties allowed)
            lw = float(np.where(np.isfinite(theta[r]), theta[r], 0.0) @ mode[r].double().numpy())
            assert mode[r].sum() == ks[r]
            assert abs(lw - e.log_weights.max()) <= 1e-6 * max(1.0, abs(lw))
            # log_prob of every subset
            z = torch.tensor(e.subsets, dtype=dtype)
            lp = ksubset.log_prob(t[r], int(ks[r]), z)
            for a, b in zip(lp.double().numpy(), e.log_weights - e.log_z, strict=True):
                _close_log(a, b, dtype, theta[r])


def test_log_prob_off_support_is_minus_inf_or_error():
    t = torch.tensor([0.3, -1.0, 2.0, float("-inf"), float("inf")], dtype=torch.float64)
    k = 3
    good = torch.tensor([1.0, 0, 1, 0, 1], dtype=torch.float64)
    bad = [
        torch.tensor([1.0, 1, 1, 0, 1]),  # 4 ones
        torch.tensor([1.0, 0, 0, 1, 1]),  # selects an unavailable item
        torch.tensor([1.0, 1, 1, 0, 0]),  # misses the forced item
        torch.tensor([0.5, 0, 1, 0, 1]),  # not binary
    ]
    assert torch.isfinite(ksubset.log_prob(t, k, good))
    for z in bad:
        assert ksubset.log_prob(t, k, z.double()) == float("-inf")
        with pytest.raises(ValueError, match="not a k-subset"):
            ksubset.log_prob(t, k, z.double(), validate=True)
    assert ksubset.log_prob(t, k, torch.stack(bad).double()).eq(float("-inf")).all()


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_log_partition_against_poisson_binomial(fast_engine, n):
    """log e_k(e^theta) = log Pr(S = k) + sum softplus(theta + c) - c k under Bernoulli(sigmoid(theta + c)).

    scipy's pmf underflows in the far tails, so each k gets its own shift c (found with brentq, independently
    of the library) that puts the mean of S at k.
    """
    scipy_stats = pytest.importorskip("scipy.stats")
    from scipy.optimize import brentq
    from scipy.special import expit, logsumexp

    if not hasattr(scipy_stats, "poisson_binom"):
        pytest.skip("scipy too old for poisson_binom")
    rng = np.random.default_rng(n)
    theta = rng.standard_normal(n) * 3
    t = torch.tensor(theta)
    for k in sorted({1, 2, n // 3, n // 2, n - 2, n - 1}):
        c = brentq(lambda c, k=k: expit(theta + c).sum() - k, -100, 100, xtol=1e-12)
        x = theta + c
        pmf = scipy_stats.poisson_binom(expit(x)).pmf(k)
        softplus = np.array([logsumexp([0.0, xi]) for xi in x]).sum()
        expected = math.log(pmf) + softplus - c * k
        got = float(ksubset.log_partition(t, k))
        assert abs(got - expected) <= 1e-9 * max(1.0, abs(expected)), (k, got, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_engines_agree_at_larger_n(dtype):
    from ksubset.core import use_engine

    g = torch.Generator().manual_seed(0)
    B, n = 6, 200
    theta = (torch.randn(B, n, generator=g) * torch.tensor([0.1, 1, 5, 30, 100, 1000])[:, None]).to(dtype)
    mask = torch.rand(B, n, generator=g) > 0.2
    k = torch.tensor([1, 7, 50, 100, 3, 120])
    v = torch.randn(B, n, generator=g, dtype=dtype)
    out = {}
    for name in ksubset.core.available_engines():
        with use_engine(name):
            t = theta.clone().requires_grad_(True)
            mu = ksubset.marginals(t, k, mask)
            (mu * v).sum().backward()
            out[name] = (ksubset.log_partition(theta, k, mask), mu.detach(), t.grad)
    ref = out["reference"]
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    for name, (lz, mu, cv) in out.items():
        assert torch.allclose(lz, ref[0], rtol=tol, atol=tol * 1e3 if dtype == torch.float32 else tol), name
        assert torch.allclose(mu, ref[1], atol=tol, rtol=tol), name
        assert torch.allclose(cv, ref[2], atol=tol * 10, rtol=tol * 10), name


def test_sum_of_marginals_is_k_and_forced_items(fast_engine):
    theta = torch.randn(3, 50, dtype=torch.float64) * 5
    theta[0, :4] = float("inf")
    theta[1, 10:40] = float("-inf")
    k = torch.tensor([10, 20, 0])
    mu = ksubset.marginals(theta, k)
    assert torch.allclose(mu.sum(-1), k.double())
    assert (mu[0, :4] == 1).all() and (mu[1, 10:40] == 0).all() and (mu[2] == 0).all()


def test_large_problem_runs():
    """n = 10^5 with k = 10^4 must run on the production path, and stay exact in distribution."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(1, 100_000, generator=g)
    z, mu = ksubset.core.sample_and_marginals(theta, 10_000, generator=g)
    assert z.sum() == 10_000
    assert torch.isfinite(mu).all() and abs(float(mu.sum()) - 10_000) < 1e-1
    lz = ksubset.log_partition(theta.double(), 10_000)
    assert torch.isfinite(lz)


def test_extreme_logit_scales_are_finite(fast_engine):
    for scale in [1e-6, 1e2, 1e4]:
        theta = torch.randn(4, 300) * scale
        t = theta.clone().requires_grad_(True)
        h = ksubset.entropy(t, 17)
        h.sum().backward()
        assert torch.isfinite(h).all() and torch.isfinite(t.grad).all()
        mu = ksubset.marginals(theta, 17)
        assert torch.isfinite(mu).all() and torch.allclose(mu.sum(-1), torch.full((4,), 17.0), atol=1e-3)
