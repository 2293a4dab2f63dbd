"""The compiled categorical (rows that choose one item, on the CPU with numba) against float64 formulas, the
tensor-operation closed form it replaces there, and the exact law of its draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from ksubset.core import kernels
from ksubset.core.closed_form import ClosedForm

pytestmark = pytest.mark.skipif(not kernels.available(), reason="needs numba (the fast extra)")

COMPILED = ClosedForm(excluded=False, compiled=True)
TENSOR_OPS = ClosedForm(excluded=False, compiled=False)


def _softmax64(theta: torch.Tensor) -> np.ndarray:
    t = theta.to(torch.float64).numpy()
    out = np.zeros_like(t)
    for b, row in enumerate(t):
        free = row > -np.inf
        if free.any():
            w = np.exp(row[free] - row[free].max())
            out[b, free] = w / w.sum()
    return out


def _logits(dtype: torch.dtype) -> torch.Tensor:
    """Ordinary rows, rows beyond the range where ``exp`` is taken unshifted, and ``-inf`` items."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(64, 7, generator=g, dtype=torch.float64) * 3
    theta[0] += 100.0  # overflows exp in float32 unshifted
    theta[1] -= 120.0  # underflows exp in float32 unshifted
    theta[2] = torch.tensor([1e30, 1e30 - 1e15, 0.0, -1e30, 5.0, 1.0, -1.0])
    theta[3] *= 1e3
    theta[4, 2:] = float("-inf")
    theta[5, :-1] = float("-inf")  # one free item: it is always drawn
    theta[6] = torch.tensor([800.0, 799.0, -800.0, 0.0, 0.0, 0.0, 0.0])  # beyond float64's exp range too
    return theta.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", [COMPILED, TENSOR_OPS], ids=["compiled", "tensor_ops"])
def test_probabilities_and_covariance_products_match_float64(engine, dtype):
    theta = _logits(dtype)
    k = torch.ones(theta.shape[0], dtype=torch.int64)
    k[7] = 0  # a row that draws nothing
    want = _softmax64(theta)
    want[7] = 0.0
    mu = engine.marginals(theta, k, 1)
    assert mu.dtype == dtype
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(mu.to(torch.float64).numpy(), want, rtol=8 * eps, atol=4 * eps)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    v[4, -1] = float("inf")  # on an unavailable item: must not spread
    v64 = np.where(theta.numpy() > -np.inf, v.to(torch.float64).numpy(), 0.0)
    cov_want = want * (v64 - (want * v64).sum(-1, keepdims=True))
    for cov in (engine.cov_vec(theta, k, 1, v), engine.cov_vec_kept(theta, k, 1, v, mu)):
        assert torch.isfinite(cov).all()
        np.testing.assert_allclose(cov.to(torch.float64).numpy(), cov_want, rtol=16 * eps, atol=16 * eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_follow_the_categorical_law(dtype):
    theta = _logits(dtype)
    B, n = theta.shape
    k = torch.ones(B, dtype=torch.int64)
    S = 4000
    u = torch.rand((S, B, 1), generator=torch.Generator().manual_seed(2), dtype=dtype)
    z, mu, kept = COMPILED.sample_and_marginals_kept(theta, k, 1, u)
    assert z.dtype == dtype and kept is mu
    assert (z.sum(-1) == 1).all()
    assert (z[:, theta == float("-inf")] == 0).all()
    probs = _softmax64(theta)
    for b in range(B):
        counts = z[:, b].to(torch.float64).sum(0).numpy()
        support = probs[b] > 1e-9
        assert counts[~support].sum() == 0
        if support.sum() > 1:
            expected = probs[b, support] / probs[b, support].sum() * S
            assert stats.chisquare(counts[support], expected).pvalue > 1e-5, b


def test_draws_take_the_same_intervals_as_the_tensor_operations():
    """Both paths pick the item whose interval of the cumulative weights holds ``u * total``: with the same
    uniforms they draw the same items (up to a boundary that rounding moves, which these draws do not hit)."""
    theta = torch.randn(500, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    theta[::7, 3] = float("-inf")
    k = torch.ones(500, dtype=torch.int64)
    k[::11] = 0
    u = torch.rand((20, 500, 1), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = COMPILED.sample_given(theta, k, 1, u)
    want = TENSOR_OPS.sample_given(theta, k, 1, u)
    assert got.dtype == want.dtype == torch.int64
    assert torch.equal(got, want)


@pytest.mark.parametrize("top", [1.0 - 2.0**-53, 1.0])
def test_the_top_of_the_unit_interval_draws_the_last_item_with_weight(top):
    """``u`` just below 1 takes the last interval; ``u = 1`` (outside ``[0, 1)``, where ``u * total`` is the
    total itself) is guarded to the same item rather than to none or to an item without weight."""
    theta = torch.tensor([[0.0, 0.0, float("-inf")], [0.5, 0.0, -1.0]], dtype=torch.float64)
    u = torch.full((1, 2, 1), top, dtype=torch.float64)
    z = COMPILED.sample_given(theta, torch.ones(2, dtype=torch.int64), 1, u)
    assert z.tolist() == [[[0, 1, 0], [0, 0, 1]]]
