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
    rtol = n * _spread(theta) * EPS64
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


def _path_problem(K: int, dtype=torch.float64, seed: int = 0):
    """Nine rows of 64 items (lanes: one full group of 8 and a partial one). Free counts m = 64, 63, 62, 55, 54,
    45, 36, 50 and K: with TABLE_LIMIT = 64 the checkpoint blocks have s = 9 rows, so some free counts are
    multiples of s (the last block then holds the single row m) and some are not. Every row but two selects
    K or close to it (the padded dense width is reached exactly at K = 16, 32, 48); row 0 selects nothing and
    the last row everything."""
    g = torch.Generator().manual_seed(seed + K)
    free_counts = [64, 63, 62, 55, 54, 45, 36, 50, K]
    ks = [0, K, K, K - 1, max(1, K // 2), 1, K, K, K]
    scales = torch.tensor([0.3, 1.0, 3.0, 10.0, 30.0, 1.0, 3.0, 0.3, 2.0], dtype=torch.float64)
    B, n = len(free_counts), 64
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * scales[:, None]
    for b, m in enumerate(free_counts):
        theta[b, torch.randperm(n, generator=g)[: n - m]] = float("-inf")
    k = torch.tensor([min(kb, m) for kb, m in zip(ks, free_counts, strict=True)])
    assert (k <= torch.isfinite(theta).sum(-1)).all() and int(k.max()) == K
    v = torch.randn(B, n, generator=g, dtype=torch.float64)
    return theta, k, v


def _spread(theta: torch.Tensor) -> float:
    fin = theta[torch.isfinite(theta)]
    return float(fin.max() - fin.min())


@pytest.mark.parametrize("K", [5, 16, 32, 48])
def test_paths_agree_with_reference(path, K):
    """log Z, marginals, entropy, Cov v and samples of every path against the reference engine (float64)."""
    if path == "lanes" and K > kernels.LANES_MAX_K:
        pytest.skip("the lanes layout is used only for K <= LANES_MAX_K")
    theta, k, v = _path_problem(K)
    B, n = theta.shape
    check_path(path, theta, K)
    if path.startswith("checkpointed"):
        s = kernels._block_size(n, K, kernels.TABLE_LIMIT)
        m = torch.isfinite(theta).sum(-1)
        assert (m % s == 0).any() and (m % s != 0).any()
    # Both engines: every tilted probability / log-space step is rounded relative to the logits' spread, and
    # every quantity is a product or sum over the n items: relative error ~ n * spread * eps64 (first order).
    tol = n * (1.0 + _spread(theta)) * EPS64
    lz = kernels.log_partition(theta, k, K)
    torch.testing.assert_close(lz, reference.log_partition(theta, k, K), rtol=tol, atol=tol)
    mu = kernels.marginals(theta, k, K)
    mu_ref = reference.marginals(theta, k, K)
    torch.testing.assert_close(mu, mu_ref, rtol=tol, atol=tol * 1e-3)
    torch.testing.assert_close(mu.sum(-1), k.double(), rtol=0, atol=tol)
    # H and Cov v are sums over items of terms of size |theta| (resp. |v|) times a marginal
    h = kernels.entropy(theta, k, K)
    fin = torch.where(torch.isfinite(theta), theta, 0.0)
    torch.testing.assert_close(h, reference.entropy(theta, k, K), rtol=0, atol=tol * (1 + float(fin.abs().sum())))
    cov = kernels.cov_vec(theta, k, K, v)
    torch.testing.assert_close(cov, reference.cov_vec(theta, k, K, v), rtol=tol, atol=tol * float(v.abs().max()))
    # samples: the same uniforms give the same draws (both walk the items from the last, taking item i with
    # probability Pr(z_i = 1 | j still needed) when u < it) ...
    u = kernels.uniforms(theta, 6, torch.Generator().manual_seed(K))
    z = kernels.sample_given(theta, k, K, u)
    assert torch.equal(z, reference.sample_given(theta, k, K, u))
    z2, mu2 = kernels.sample_and_marginals_given(theta, k, K, u)
    assert torch.equal(z2, z) and torch.equal(mu2, mu)
    # ... and the draws' frequencies match the reference marginals (5 standard deviations)
    S = 3000
    zs = kernels.sample(theta, k, K, S, torch.Generator().manual_seed(100 + K))
    assert torch.equal(zs.sum(-1), k.expand(S, -1)) and (zs[:, ~torch.isfinite(theta)] == 0).all()
    freq = zs.double().mean(0)
    sd = (mu_ref * (1 - mu_ref)).clamp(min=0).div(S).sqrt()  # (a marginal of 1 may come back as 1 + 2e-16)
    assert ((freq - mu_ref).abs() <= 5 * sd + 1.0 / S).all()


def test_lanes_entropy_of_rows_longer_than_its_product_run():
    """The lanes layout takes the logarithms in the entropy of runs of 512 items at once: rows of 1100 items
    (three runs, the last one partial) against the reference engine."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 1100, generator=g, dtype=torch.float64) * 3
    theta[1, ::7] = -float("inf")
    k = torch.tensor([3, 2, 1])
    assert kernels._use_lanes(3, 1100, 3)
    fin = torch.where(torch.isfinite(theta), theta, 0.0)
    tol = 1100 * (1.0 + _spread(theta)) * EPS64 * (1 + float(fin.abs().sum()))
    torch.testing.assert_close(kernels.entropy(theta, k, 3), reference.entropy(theta, k, 3), rtol=0, atol=tol)


def test_lanes_log_partition_of_every_kind_of_row():
    """The lanes layout's log Z (tilt and forward table only): ordinary rows, k = 0, k = m (every free item),
    a row spanning more than the vectorised tilt's 1200 nats, and masked items, against the reference."""
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(11, 9, generator=g, dtype=torch.float64) * 2
    theta[1, ::3] = -float("inf")  # 6 free items
    theta[4, 0] = 1500.0  # a wide row
    k = torch.tensor([3, 6, 0, 9, 4, 1, 8, 2, 5, 7, 3])  # row 1: k = m; row 2: k = 0; row 3: k = n
    assert kernels._use_lanes(11, 9, 9)
    torch.testing.assert_close(kernels.log_partition(theta, k, 9), reference.log_partition(theta, k, 9),
                               rtol=1e-12, atol=1e-12)


def test_lanes_rows_use_their_own_uniforms(monkeypatch):
    """Eight identical rows in one lanes group, different uniforms: the draws must differ from row to row and
    each row's draw must be the one the per-row kernel makes from that row's uniforms."""
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(1, 30, generator=g, dtype=torch.float64).expand(8, -1).contiguous()
    k = torch.full((8,), 6)
    assert kernels._use_lanes(8, 30, 6)
    u = kernels.uniforms(theta, 5, g)
    z = kernels.sample_given(theta, k, 6, u)
    assert len({tuple(z[:, b].flatten().tolist()) for b in range(8)}) == 8
    monkeypatch.setattr(kernels, "LANES_MAX_K", -1)
    assert torch.equal(z, kernels.sample_given(theta, k, 6, u))


@pytest.mark.parametrize("K", [5, 16, 48])
def test_float32_paths_within_input_rounding(path, K):
    """float32 logits: the kernel computes in float64 inside, so its float32 outputs may differ from the exact
    float64 answer only by what rounding the logits to float32 changes (first order, bounds below) plus the
    rounding of the outputs to float32."""
    if path == "lanes" and K > kernels.LANES_MAX_K:
        pytest.skip("the lanes layout is used only for K <= LANES_MAX_K")
    theta64, k, v64 = _path_problem(K, seed=7)
    theta, v = theta64.float(), v64.float()
    check_path(path, theta, K)
    free = torch.isfinite(theta64)
    delta = torch.where(free, theta.double() - theta64, 0.0)  # the input rounding, |delta| <= eps32/2 |theta|
    dmax = delta.abs().amax(-1, keepdim=True)
    half32 = EPS32 / 2  # rounding of an output to float32
    tol64 = theta.shape[1] * (1.0 + _spread(theta64)) * EPS64  # float64 error of either engine (see above)
    lz_ref = reference.log_partition(theta64, k, K)
    mu_ref = reference.marginals(theta64, k, K)
    # d log Z = mu . delta
    lz = kernels.log_partition(theta, k, K)
    assert lz.dtype == torch.float32
    bound = (mu_ref * delta.abs()).sum(-1) + half32 * lz_ref.abs() + tol64 * (1 + lz_ref.abs())
    assert ((lz.double() - lz_ref).abs() <= 2 * bound).all()  # 2: room for the second-order terms
    # d mu = Cov delta, and for a k-subset law sum_j |Cov_ij| = 2 Var(z_i) (Cov_ij <= 0 off the diagonal and
    # every row of Cov sums to 0), so |d mu_i| <= 2 mu_i (1 - mu_i) max|delta|
    mu = kernels.marginals(theta, k, K)
    bound = 2 * (mu_ref * (1 - mu_ref)).clamp(min=0) * dmax + half32 * mu_ref + tol64 * mu_ref
    # (2^-150: half the smallest float32 subnormal, the rounding of marginals below float32's normal range)
    assert ((mu.double() - mu_ref).abs() <= 2 * bound + 2.0**-150).all()
    # H = log Z - theta . mu, dH = -(Cov theta) . delta
    h = kernels.entropy(theta, k, K)
    h_ref = reference.entropy(theta64, k, K)
    cov_theta = reference.cov_vec(theta64, k, K, torch.where(free, theta64, 0.0))
    fin = torch.where(free, theta64, 0.0)
    bound = (cov_theta * delta).abs().sum(-1) + half32 * h_ref.abs() + tol64 * (1 + fin.abs().sum(-1))
    assert ((h.double() - h_ref).abs() <= 2 * bound).all()
    # Cov v has no simple first-order bound (its derivative is the third cumulant): compared on the rounded
    # inputs, where only the outputs' rounding to float32 remains
    cov = kernels.cov_vec(theta, k, K, v)
    cov_ref = reference.cov_vec(theta.double(), k, K, v.double())
    scale = tol64 * float(v64.abs().max())
    assert ((cov.double() - cov_ref).abs() <= half32 * cov_ref.abs() + scale).all()
    # samples depend on the (rounded) logits only through the float64 computation
    u = kernels.uniforms(theta, 4, torch.Generator().manual_seed(K))
    assert torch.equal(kernels.sample_given(theta, k, K, u), reference.sample_given(theta.double(), k, K, u))
