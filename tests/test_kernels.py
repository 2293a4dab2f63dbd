"""The compiled CPU engine (numba) against brute-force enumeration, the tree engine and the reference.

Engine-level tests on the canonical problem (``theta [B, n]`` finite on free items, ``-inf`` elsewhere).
Skipped when numba is not installed (it is the optional extra ``ksubset[fast]``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

import ksubset  # noqa: E402
from ksubset.core import functions, kernels, reference, tree, use_engine  # noqa: E402

from oracle import enumerate_row, subset_chi_square  # noqa: E402

SCALES = [0.01, 1.0, 30.0, 1000.0]


def random_rows(rng, n: int, scale: float, dtype):
    """One canonical row per k in 0..#free, some items unavailable (-inf)."""
    theta = rng.standard_normal(n) * scale
    theta[rng.random(n) < 0.25] = -np.inf
    m = int(np.isfinite(theta).sum())
    rows = torch.tensor(np.tile(theta, (m + 1, 1)), dtype=dtype)
    return rows, torch.arange(m + 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
def test_against_brute_force(dtype, scale):
    rng = np.random.default_rng(int(scale * 100) + (dtype == torch.float32))
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    for n in range(1, 10):
        theta, k = random_rows(rng, n, scale, dtype)
        K = int(k.max())
        lz = kernels.log_partition(theta, k, K)
        mu = kernels.marginals(theta, k, K)
        assert lz.dtype == dtype and mu.dtype == dtype
        th64 = theta.double().numpy()  # the oracle sees the same (rounded) inputs
        for r in range(theta.shape[0]):
            e = enumerate_row(th64[r], int(k[r]))
            e_lz, e_mu, e_cov = e.log_z, e.marginals, e.covariance
            finite = th64[r][np.isfinite(th64[r])]
            size = max(1.0, abs(e_lz), float(np.abs(finite).max()) if finite.size else 0.0)
            assert abs(float(lz[r]) - e_lz) <= rtol * size, (n, r, float(lz[r]), e_lz)
            np.testing.assert_allclose(mu[r].double().numpy(), e_mu, rtol=rtol, atol=rtol)
            # Cov, column by column: Cov e_j
            eye = torch.eye(n, dtype=dtype)
            cov = kernels.cov_vec(theta[r].expand(n, n).contiguous(), k[r].expand(n), K, eye)
            np.testing.assert_allclose(cov.double().numpy(), e_cov, rtol=rtol, atol=rtol)


def _larger_problem(n: int, dtype=torch.float64, seed=0, kmax=None):
    """Five rows (scales 0.3 to 300, 10% unavailable items) with per-row k: 1, 17, m/3, m - 2, m/2."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.3, 3.0, 30.0, 1.0, 300.0])[:, None]
    theta = torch.randn(5, n, generator=g, dtype=torch.float64) * scales
    theta[torch.rand(5, n, generator=g) < 0.1] = float("-inf")
    m = torch.isfinite(theta).sum(-1)
    k = torch.stack([torch.tensor(1), torch.tensor(17), m[2] // 3, m[3] - 2, m[4] // 2])
    if kmax is not None:  # keeps the tree engine's (padded, O(n K)-memory) comparison quick
        k = torch.minimum(k, torch.tensor(kmax))
    return theta.to(dtype), k


@pytest.mark.parametrize("n, kmax", [(300, None), (1000, None), (3000, 120)])
def test_agrees_with_tree_at_larger_n(n, kmax):
    theta, k = _larger_problem(n, seed=n, kmax=kmax)
    K = int(k.max())
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(
        kernels.log_partition(theta, k, K), tree.log_partition(theta, k, K), rtol=1e-10, atol=1e-9
    )
    mu = kernels.marginals(theta, k, K)
    torch.testing.assert_close(mu, tree.marginals(theta, k, K), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(mu.sum(-1), k.double(), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(
        kernels.cov_vec(theta, k, K, v), tree.cov_vec(theta, k, K, v), rtol=1e-7, atol=1e-9
    )


def test_float32_inputs_agree_with_float64():
    theta, k = _larger_problem(1000, dtype=torch.float32, seed=5)
    K = int(k.max())
    mu32 = kernels.marginals(theta, k, K)
    mu64 = tree.marginals(theta.double(), k, K)
    assert mu32.dtype == torch.float32
    torch.testing.assert_close(mu32.double(), mu64, rtol=1e-5, atol=1e-6)


def test_cov_vec_matches_double_autograd_of_reference():
    g = torch.Generator().manual_seed(3)
    theta = torch.randn(4, 40, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [5.0], [20.0]])
    theta[1, :7] = float("-inf")
    k = torch.tensor([1, 9, 20, 39])
    v = torch.randn(4, 40, generator=g, dtype=torch.float64)
    K = int(k.max())
    expected = reference.cov_vec(theta, k, K, v)
    got = kernels.cov_vec(theta, k, K, v)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    assert (got[1, :7] == 0).all()
    # Cov 1 = 0: adding a constant to v changes nothing
    torch.testing.assert_close(kernels.cov_vec(theta, k, K, v + 1e3), got, rtol=1e-6, atol=1e-9)


def test_trivial_rows():
    inf = float("-inf")
    theta = torch.tensor(
        [[0.5, -1.0, 2.0, inf], [0.5, -1.0, 2.0, inf], [inf, inf, inf, inf], [3.0, inf, inf, inf]],
        dtype=torch.float64,
    )
    k = torch.tensor([0, 3, 0, 1])
    K = 3
    torch.testing.assert_close(
        kernels.log_partition(theta, k, K), torch.tensor([0.0, 1.5, 0.0, 3.0], dtype=torch.float64)
    )
    mu = kernels.marginals(theta, k, K)
    expected = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    assert torch.equal(mu, expected)
    assert (kernels.cov_vec(theta, k, K, torch.ones_like(theta)) == 0).all()
    z = kernels.sample(theta, k, K, 3, torch.Generator().manual_seed(0))
    assert torch.equal(z, expected.long().expand(3, -1, -1))


def test_checkpointed_table_matches_full_table(monkeypatch):
    theta, k = _larger_problem(700, seed=2)
    K = int(k.max())
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = (
        kernels.marginals(theta, k, K),
        kernels.cov_vec(theta, k, K, v),
        kernels.sample(theta, k, K, 4, torch.Generator().manual_seed(9)),
    )
    monkeypatch.setattr(kernels, "TABLE_LIMIT", 64)  # ~sqrt(n)-row blocks, recomputed in the sweep
    assert kernels._block_size(700, K, kernels.TABLE_LIMIT) < 701
    ckpt = (
        kernels.marginals(theta, k, K),
        kernels.cov_vec(theta, k, K, v),
        kernels.sample(theta, k, K, 4, torch.Generator().manual_seed(9)),
    )
    torch.testing.assert_close(ckpt[0], full[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ckpt[1], full[1], rtol=1e-12, atol=1e-14)
    assert torch.equal(ckpt[2], full[2])


def test_parallel_and_serial_paths_agree(monkeypatch):
    theta, k = _larger_problem(400, seed=4)
    K = int(k.max())
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    par = kernels.marginals(theta, k, K), kernels.log_partition(theta, k, K)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 1 << 62)
    ser = kernels.marginals(theta, k, K), kernels.log_partition(theta, k, K)
    assert torch.equal(par[0], ser[0]) and torch.equal(par[1], ser[1])


def test_samples_follow_the_law():
    """Exactly k ones on available items; subset frequencies pass a chi-square test against enumeration."""
    theta = torch.tensor([[0.3, -1.2, 2.0, float("-inf"), 0.0, 1.1, -0.4]], dtype=torch.float64)
    k = torch.tensor([3])
    S = 20_000
    z = kernels.sample(theta, k, 3, S, torch.Generator().manual_seed(0))[:, 0]
    assert z.dtype == torch.int64 and z.shape == (S, 7)
    assert (z.sum(-1) == 3).all() and (z[:, 3] == 0).all()
    chi2, dof = subset_chi_square(z.numpy(), theta[0].numpy(), 3)
    # 19 degrees of freedom: P(chi2 > 50) ~ 1e-4
    assert dof == 19 and chi2 < 50.0, chi2


def test_inclusion_frequencies_match_marginals():
    theta, k = _larger_problem(60, seed=7)
    K = int(k.max())
    S = 4000
    z, mu = kernels.sample_and_marginals(theta, k, K, S, torch.Generator().manual_seed(1))
    assert torch.equal(z.sum(-1), k.expand(S, -1))
    assert (z[:, ~torch.isfinite(theta)] == 0).all()
    torch.testing.assert_close(mu, kernels.marginals(theta, k, K))
    freq = z.double().mean(0)
    sd = (mu * (1 - mu) / S).sqrt()
    assert ((freq - mu).abs() <= 5 * sd + 1e-3).all()


def test_same_generator_state_same_samples():
    theta, k = _larger_problem(200, seed=8)
    K = int(k.max())
    a = kernels.sample(theta, k, K, 5, torch.Generator().manual_seed(123))
    b = kernels.sample(theta, k, K, 5, torch.Generator().manual_seed(123))
    c = kernels.sample(theta, k, K, 5, torch.Generator().manual_seed(124))
    zb, _ = kernels.sample_and_marginals(theta, k, K, 5, torch.Generator().manual_seed(123))
    assert torch.equal(a, b) and torch.equal(a, zb) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = kernels.sample(theta, k, K, 5)
    torch.manual_seed(5)
    assert torch.equal(d, kernels.sample(theta, k, K, 5))


@pytest.mark.parametrize("scale", [1e-6, 1e2, 1e4])
def test_extreme_logit_scales(scale):
    """Logit spreads beyond the one-exp tilt path (1200 nats) and tiny ones; float32 inputs."""
    g = torch.Generator().manual_seed(11)
    theta = (torch.randn(3, 300, generator=g, dtype=torch.float64) * scale).float()
    k = torch.tensor([1, 17, 150])
    mu = kernels.marginals(theta, k, 150)
    assert torch.isfinite(mu).all() and (mu >= 0).all() and (mu <= 1).all()
    torch.testing.assert_close(mu.sum(-1), k.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mu.double(), tree.marginals(theta.double(), k, 150), rtol=1e-5, atol=1e-6)
    lz = kernels.log_partition(theta, k, 150).double()
    torch.testing.assert_close(lz, tree.log_partition(theta.double(), k, 150), rtol=1e-6, atol=1e-4)
    v = torch.randn(3, 300, generator=g)
    cv = kernels.cov_vec(theta, k, 150, v)
    assert torch.isfinite(cv).all()
    z = kernels.sample(theta, k, 150, 2, g)
    assert torch.equal(z.sum(-1), k.expand(2, -1))


def test_dispatch_and_public_api():
    x = torch.randn(3, 50)
    assert kernels.available() and kernels.supports(x) and kernels.supports(x.double())
    assert not kernels.supports(x.half()) and not kernels.supports(torch.empty(3, 50, device="meta"))
    assert functions.engine_for(x) is kernels
    # SIMPLE's backward through the public API equals the tree engine's (the same Cov g)
    theta = torch.randn(4, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    g = torch.randn(4, 80, dtype=torch.float64)
    grads = {}
    for name in ["kernels", "tree"]:
        with use_engine(name):
            t = theta.clone().requires_grad_(True)
            z = ksubset.simple(t, 7, generator=torch.Generator().manual_seed(0))
            assert torch.equal(z.sum(-1), torch.full((4,), 7.0, dtype=torch.float64))
            z.backward(g)
            grads[name] = t.grad
    torch.testing.assert_close(grads["kernels"], grads["tree"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("path", ["lanes", "dense", "banded"])
def test_code_paths_agree(monkeypatch, path):
    """The lanes kernel (rows side by side), the dense and the banded per-row kernel give the same numbers."""
    g = torch.Generator().manual_seed(21)
    B, n = 19, 40
    theta = (
        torch.randn(B, n, generator=g, dtype=torch.float64)
        * torch.tensor([0.1, 1.0, 5.0, 50.0, 1e3]).repeat(4)[:B, None]
    )
    theta[torch.rand(B, n, generator=g) < 0.2] = float("-inf")
    theta[1, 9:] = float("-inf")
    m = torch.isfinite(theta).sum(-1)
    k = torch.minimum(torch.randint(0, 12, (B,), generator=g), m)
    k[0], k[1] = 0, m[1]  # trivial rows: nothing / everything selected
    K = int(k.max())
    v = torch.randn(B, n, generator=g, dtype=torch.float64)
    if path != "lanes":
        monkeypatch.setattr(kernels, "LANES_MAX_K", -1)
    if path == "banded":
        monkeypatch.setattr(kernels, "DENSE_MAX_K", -1)
    assert kernels._use_lanes(B, n, K) == (path == "lanes")
    mu = kernels.marginals(theta, k, K)
    cov = kernels.cov_vec(theta, k, K, v)
    z = kernels.sample(theta, k, K, 3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(mu, reference.marginals(theta, k, K), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cov, reference.cov_vec(theta, k, K, v), rtol=1e-8, atol=1e-11)
    assert torch.equal(z.sum(-1), k.expand(3, -1)) and (z[:, ~torch.isfinite(theta)] == 0).all()
    torch.testing.assert_close(kernels.log_partition(theta, k, K), reference.log_partition(theta, k, K))


def test_wide_logit_spread_needs_no_fallback():
    """Spreads of ~1200 nats: exp(-(theta_i + c)) overflows for the lowest items; the kernel must still
    compute every row itself (the autouse fixture turns a fallback into an error)."""
    theta = torch.tensor([[534.0, -303.0, 896.0], [-1e3, 150.0, 199.0], [0.0, -1199.0, 1.0]], dtype=torch.float64)
    for kk in (1, 2):
        k = torch.full((3,), kk)
        before = kernels.fallback_count()
        torch.testing.assert_close(
            kernels.log_partition(theta, k, kk), reference.log_partition(theta, k, kk), rtol=1e-15, atol=0
        )
        torch.testing.assert_close(kernels.marginals(theta, k, kk), reference.marginals(theta, k, kk))
        assert kernels.fallback_count() == before


def _broken_log_z_rows(theta, k, K, out, dense, b0, b1):
    out[b0:b1] = np.nan


def _broken_lanes_log_z_rows(theta, k, K, out, b0, b1):
    out[b0:b1] = np.nan


@pytest.mark.kernel_fallback
def test_fallback_policy(monkeypatch):
    """A row the kernel cannot compute is counted, and warned about / refused / recomputed as the policy says."""
    theta = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = torch.tensor([1, 4, 9])
    expected = tree.log_partition(theta, k, 9)
    monkeypatch.setattr(kernels, "_log_z_rows", _broken_log_z_rows)
    monkeypatch.setattr(kernels, "_lanes_log_z_rows", _broken_lanes_log_z_rows)  # (3 rows: the lanes layout)
    assert kernels._use_lanes(3, 10, 9)
    before = kernels.fallback_count()
    with pytest.warns(kernels.KernelFallbackWarning, match="3 row"):
        torch.testing.assert_close(kernels.log_partition(theta, k, 9), expected)
    assert kernels.fallback_count() == before + 3
    with kernels.fallback_policy("silent"):
        torch.testing.assert_close(kernels.log_partition(theta, k, 9), expected)
    with kernels.fallback_policy("raise"), pytest.raises(kernels.KernelFallbackError, match="tree engine"):
        kernels.log_partition(theta, k, 9)
    assert kernels.fallback_count() == before + 9
    assert kernels.FALLBACK_POLICY == "warn"
    with pytest.raises(ValueError, match="policy"):
        with kernels.fallback_policy("ignore"):
            pass
