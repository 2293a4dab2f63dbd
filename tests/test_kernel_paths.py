"""Every code path of the compiled CPU engine against the reference engine (float64, log space).

Paths: ``lanes`` (8 rows side by side, K <= LANES_MAX_K), ``dense`` (per row, every count up to a multiple of
16), ``banded`` (per row, only the counts that can still reach k), and both per-row layouts with a
``checkpointed`` forward table (blocks recomputed during the backward sweep). Engine-level tests on the
canonical problem (``theta [B, n]`` finite on free items and ``-inf`` elsewhere).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

from ksubset.core import kernels, reference  # noqa: E402

from oracle import enumerate_row  # noqa: E402

EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
PATHS = ["lanes", "dense", "banded", "checkpointed-dense", "checkpointed-banded"]


def force_path(monkeypatch, path: str) -> None:
    """Route every call of the kernels engine through ``path`` (see the module docstring)."""
    if path != "lanes":
        monkeypatch.setattr(kernels, "LANES_MAX_K", -1)
    if path.endswith("banded"):
        monkeypatch.setattr(kernels, "DENSE_MAX_K", -1)
    if path.startswith("checkpointed"):
        monkeypatch.setattr(kernels, "TABLE_LIMIT", 64)


def check_path(path: str, theta: torch.Tensor, K: int) -> None:
    """The configuration forced by :func:`force_path` really selects ``path`` for this problem."""
    B, n = theta.shape
    assert kernels._use_lanes(B, n, K) == (path == "lanes"), (path, B, n, K)
    if path != "lanes":
        assert (0 < K <= kernels.DENSE_MAX_K) == path.endswith("dense")
        assert (kernels._block_size(n, K, kernels.TABLE_LIMIT) < n + 1) == path.startswith("checkpointed")


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    force_path(monkeypatch, request.param)
    return request.param


def test_tiny_marginals_keep_relative_accuracy(path):
    """Marginals from 1e-150 down to 1e-300 (tilted probabilities far below the kernel's flush threshold
    2^-510) come back with full relative accuracy, not 0."""
    g = torch.Generator().manual_seed(0)
    B, n = 6, 24
    theta = torch.empty(B, n, dtype=torch.float64)
    theta[:, :8] = torch.randn(B, 8, generator=g, dtype=torch.float64)  # the items that carry the mass
    theta[:, 8:] = -torch.linspace(340.0, 690.0, n - 8, dtype=torch.float64)  # exp(-340) ~ 1e-148
    theta[:, 8:] += torch.rand(B, n - 8, generator=g, dtype=torch.float64)
    theta[::2, 12] = float("-inf")  # unavailable items (also below the flush threshold) stay exactly 0
    theta[1::2, 3] = float("-inf")
    k = torch.tensor([1, 2, 3, 5, 7, 7])
    K = int(k.max())
    check_path(path, theta, K)
    mu = kernels.marginals(theta, k, K)
    assert (mu[~torch.isfinite(theta)] == 0).all()
    expected = reference.marginals(theta, k, K)
    normal = expected > 1e-300
    assert ((expected < 1e-150) & normal).sum() >= 5 * B  # the test reaches the range it is about
    # Both engines take exp() of logit differences up to the spread s (relative error eps * s each), and every
    # marginal is a product over the n items: relative error at most ~ n * s * eps64 (first order).
    spread = float(theta.max() - theta.min())
    rtol = n * spread * EPS64
    rel = (mu[normal] - expected[normal]).abs() / expected[normal]
    assert float(rel.max()) <= rtol, (float(rel.max()), rtol)
    assert (mu[~normal] <= 1e-299).all()


@pytest.mark.parametrize("offset, dtype", [(1e6, torch.float64), (1e12, torch.float64), (1e6, torch.float32)])
def test_entropy_at_large_offsets(path, offset, dtype):
    """``H`` does not depend on a common offset of the logits: computed on the raw logits, ``log Z - theta . mu``
    cancels two numbers of size ``k * offset`` (error ``eps * k * offset``); the kernel uses the tilted ones."""
    g = torch.Generator().manual_seed(int(offset) % 1000 + (dtype == torch.float32))
    B, n = 6, 12
    theta = (torch.randn(B, n, generator=g, dtype=torch.float64) * 80.0 + offset).to(dtype)
    theta[2, 5] = float("-inf")
    k = torch.tensor([1, 2, 3, 4, 5, 6])
    K = int(k.max())
    check_path(path, theta, K)
    h = kernels.entropy(theta, k, K)
    assert h.dtype == dtype
    # the same distribution without the offset: theta - offset is exact (Sterbenz: both within a factor 2)
    base = theta.double() - offset
    expected = torch.tensor([enumerate_row(base[b].numpy(), int(k[b])).entropy for b in range(B)], dtype=torch.float64)
    # Kernel: each term softplus(y_i) - mu_i y_i of the tilted logits y (|y_i| <= spread) is off by a few
    # eps64 |y_i|; the oracle's log-weights (sums of k logits) by eps64 k max|base|. Then the cast to dtype.
    spread = float(base[torch.isfinite(base)].max() - base[torch.isfinite(base)].min())
    tol = 4 * EPS64 * (n * (1 + spread) + K * float(base[torch.isfinite(base)].abs().max()))
    tol = tol + (torch.finfo(dtype).eps / 2) * expected.abs()
    err = (h.double() - expected).abs()
    assert (err <= tol).all(), (err, tol)
