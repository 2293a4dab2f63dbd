"""The tree engine at extreme logit spreads, on complemented rows (2k > m), with chunked convolutions, and on
expanded (stride-0) inputs; every value against brute-force enumeration (tests/oracle.py) or the float64
reference engine.

The engine is called directly on canonical inputs (finite free logits, ``-inf`` elsewhere, ``0 <= k <= m``),
as the public functions call it, and through the public API under ``use_engine("tree")``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ksubset
from ksubset.core import numerics, reference, tree, use_engine

from oracle import Enumerated, enumerate_row

NINF = float("-inf")
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5}
#: Spread per step beyond which items are decided to float precision: -log(min subnormal) + log(2 n).
G = {torch.float64: 760.0, torch.float32: 110.0}


def _rows(dtype: torch.dtype, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical rows at extreme spreads, each with several k (some above m / 2: solved as complements)."""
    rng = np.random.default_rng(5)
    rows = []
    for s in [1e4, 1e6, 1e8, 1e20, 1e30]:
        rows.append(rng.standard_normal(n) * s)
    big = 1e30
    rows.append(np.array([big, -big, big, 0.5, -0.3, big, -big, 2.0]))  # ties among ±1e30 items
    rows.append(np.array([big, big, big, -big, -big, -big, 0.0, 1.0]))
    rows.append(np.concatenate([1e4 + np.array([0.3, -0.2, 0.5]), rng.standard_normal(n - 3)]))  # few far above
    rows.append(np.concatenate([-1e4 + np.array([0.3, -0.2]), rng.standard_normal(n - 2)]))  # few far below
    rows.append(np.arange(n) * G[dtype] + rng.standard_normal(n))  # spread n * G, the widest the API passes on
    rows.append(1e6 + np.arange(n) * 0.5 * G[dtype])
    theta, ks = [], []
    for r in rows:
        for k in range(n + 1):
            t = r.copy()
            if k % 3 == 1:  # some non-free items (still k <= m)
                t[rng.choice(n, size=min(2, n - k), replace=False)] = NINF
            theta.append(t)
            ks.append(k)
    return torch.tensor(np.array(theta), dtype=dtype), torch.tensor(ks)


def _exact(theta_row: np.ndarray, k: int) -> Enumerated:
    """The enumeration of tests/oracle.py with every subset's log weight taken relative to one subset ``z*``.

    ``logw(z) - logw(z*)`` is summed exactly (``math.fsum`` of the logits in one subset and not the other,
    correctly rounded), and the law is ``w / sum(w)``. The oracle's ``z @ theta`` rounds ``1e30 + 1e30 + 0.5``
    to ``2e30`` before any comparison, and its ``exp(logw - log_z)`` rounds ``log_z`` first.
    """
    e = enumerate_row(theta_row, k)
    score = np.where(np.isfinite(theta_row), theta_row, 0.0)
    sub = e.subsets.astype(bool)
    best = sub[int(np.argmax(e.log_weights))]
    rel = np.array([math.fsum(list(score[z & ~best]) + list(-score[best & ~z])) for z in sub])
    top = rel.max()
    rel = rel - top
    w = np.exp(rel)
    probs = w / w.sum()
    log_p = rel - np.log(w.sum())
    log_z = math.fsum(score[best]) + top + float(np.log(w.sum()))
    mu = probs @ e.subsets
    cov = (e.subsets * probs[:, None]).T @ e.subsets - np.outer(mu, mu)
    ent = float(-(probs[probs > 0] * log_p[probs > 0]).sum())
    return Enumerated(e.subsets, e.log_weights, log_z, probs, mu, cov, ent)


def _close_log(actual: float, expected: float, dtype, theta_row: np.ndarray, mu: np.ndarray) -> None:
    """Relative to the condition number of ``log Z`` (``sum_i mu_i |theta_i|``: relative input errors of
    ``eps`` move it by that much, e.g. ``log Z = 1`` for ``[1e30, -1e30, 1]`` all chosen is a cancelling sum);
    in float32 also to ``max |theta|``, the rounding of the inputs themselves."""
    fin = np.isfinite(theta_row)
    scale = max(1.0, abs(expected), float((mu[fin] * np.abs(theta_row[fin])).sum()))
    if dtype == torch.float32:
        scale = max(scale, float(np.abs(theta_row[fin]).max(initial=0.0)))
    assert abs(actual - expected) <= RTOL[dtype] * scale, (actual, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_spreads_against_enumeration(dtype):
    theta, k = _rows(dtype)
    K = int(k.max())
    lz = tree.log_partition(theta, k, K)
    mu = tree.marginals(theta, k, K)
    ent = tree.entropy(theta, k, K)
    v = torch.randn(theta.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    cv = tree.cov_vec(theta, k, K, v)
    assert torch.isfinite(lz).all() and torch.isfinite(mu).all() and torch.isfinite(ent).all()
    th64 = theta.double().numpy()
    for r in range(theta.shape[0]):
        e = _exact(th64[r], int(k[r]))
        _close_log(float(lz[r]), e.log_z, dtype, th64[r], e.marginals)
        np.testing.assert_allclose(mu[r].double().numpy(), e.marginals, rtol=0, atol=RTOL[dtype])
        assert abs(float(ent[r]) - e.entropy) <= RTOL[dtype] * max(1.0, e.entropy), (r, float(ent[r]), e.entropy)
        vr = np.where(np.isfinite(th64[r]), v[r].double().numpy(), 0.0)
        np.testing.assert_allclose(cv[r].double().numpy(), e.covariance @ vr, rtol=0, atol=10 * RTOL[dtype])


def _law_ok(theta_row: np.ndarray, k: int, z: np.ndarray) -> None:
    """Samples ``z [S, n]`` against the enumerated law: no subset of probability < 1e-12 ever drawn, and a
    chi-square test over the others (those expected fewer than 5 times pooled)."""
    e = _exact(theta_row, k)
    index = {tuple(s.astype(int)): i for i, s in enumerate(e.subsets)}
    counts = np.bincount([index[tuple(row.astype(int))] for row in z], minlength=len(index))
    assert counts[e.probs < 1e-12].sum() == 0
    expected = e.probs * len(z)
    big = expected >= 5
    if big.sum() <= 1:
        assert counts[big].sum() >= len(z) - 5 * len(index)
        return
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    scipy_stats = pytest.importorskip("scipy.stats")
    _, p = scipy_stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum())
    assert p > 1e-4, (theta_row, k, p)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_extreme_spread_samples_follow_the_law(dtype):
    theta, k = _rows(dtype)
    g = torch.Generator().manual_seed(1)
    z = tree.sample(theta, k, int(k.max()), 2000, g)
    z2, mu = tree.sample_and_marginals(theta, k, int(k.max()), 1, g)
    assert (z.sum(-1) == k).all() and (z2.sum(-1) == k).all()
    assert (z[:, torch.isinf(theta)] == 0).all()
    torch.testing.assert_close(mu, tree.marginals(theta, k, int(k.max())))
    th64 = theta.double().numpy()
    for r in range(theta.shape[0]):
        _law_ok(th64[r], int(k[r]), z[:, r].numpy())


def test_small_marginals_keep_relative_precision_on_complemented_rows():
    """k = n - 1 (solved as choosing the one left out): the marginal of an item 30 below the rest comes out of
    the outside pass, not as 1 - (1 - tiny)."""
    theta = torch.tensor([[0.0, 0.3, -0.2, 0.1, -30.0, 0.2], [5.0, -40.0, -41.0, 4.0, 3.5, 6.0]], dtype=torch.float64)
    k = torch.tensor([5, 4])
    mu = tree.marginals(theta, k, 5)
    for r in range(2):
        e = _exact(theta[r].numpy(), int(k[r]))
        np.testing.assert_allclose(mu[r].numpy(), e.marginals, rtol=1e-10)


def test_log_partition_has_no_cancellation_between_huge_terms():
    """Four items at 0 and one at -1e30, k = 3: log Z = log 4, though sum(theta) and the complement's log Z are
    both ±1e30 (adding those loses the log 4)."""
    theta = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1e30], [1e30, 1e30, 0.0, 0.0, -1e30]], dtype=torch.float64)
    k = torch.tensor([3, 3])
    lz = tree.log_partition(theta, k, 3)
    assert abs(float(lz[0]) - np.log(4.0)) < 1e-12
    assert float(lz[1]) == pytest.approx(2e30 + np.log(2.0), rel=1e-15)
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1e30]], dtype=dtype)
        assert abs(float(tree.log_partition(t, torch.tensor([3]), 3)[0]) - np.log(4.0)) < RTOL[dtype]


def test_complemented_rows_truncate_at_min_k_m_minus_k():
    theta = torch.randn(4, 12, dtype=torch.float64)
    theta[1, :3] = NINF
    k = torch.tensor([11, 8, 6, 2])
    s = tree._setup(theta, k)
    assert s.flip.tolist() == [True, True, False, False]
    assert s.kw.tolist() == [1, 1, 6, 2]
    assert s.Kw == 6


def _third_cumulant(e, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = e.subsets - e.marginals
    return (e.probs * (d @ v) * (d @ w)) @ d


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_cov3_on_complemented_and_extreme_rows(scale):
    rng = np.random.default_rng(3)
    n = 7
    base = rng.standard_normal(n)
    base[:2] += scale  # two items far above the rest when scale = 1e4
    theta = torch.tensor(np.stack([base] * (n + 1)))
    theta[3, 4] = NINF
    k = torch.arange(n + 1)
    k[3] = min(int(k[3]), n - 1)
    v = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c3 = tree.cov3(theta, k, n, v, w)
    for r in range(n + 1):
        e = _exact(theta[r].numpy(), int(k[r]))
        fin = np.isfinite(theta[r].numpy())
        want = _third_cumulant(e, np.where(fin, v[r].numpy(), 0), np.where(fin, w[r].numpy(), 0))
        np.testing.assert_allclose(c3[r].numpy(), want, rtol=0, atol=1e-10)


def test_public_api_hessian_on_complemented_rows():
    """torch.func.hessian of log Z (= Cov z) and jacobian of the entropy for k > n / 2, against enumeration."""
    rng = np.random.default_rng(4)
    theta = torch.tensor(rng.standard_normal(6) * 2)
    with use_engine("tree"):
        for k in (4, 5, 6):
            e = _exact(theta.numpy(), k)
            h = torch.func.hessian(lambda t, k=k: ksubset.log_partition(t, k))(theta)
            np.testing.assert_allclose(h.numpy(), e.covariance, atol=1e-10)
            g = torch.func.grad(lambda t, k=k: ksubset.entropy(t, k))(theta)
            np.testing.assert_allclose(g.numpy(), -e.covariance @ theta.numpy(), atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e6, 1e8, 1e12, 1e20, 1e30])
def test_public_api_at_extreme_spreads(dtype, scale):
    """n = 1000 with gaps ~scale / n between consecutive logits: the top k are chosen to float precision, so
    samples and SIMPLE's forward are the top k (they were all zeros), marginals are 0/1, the entropy is 0 (was
    NaN) and log Z is the sum of the top k (was inf); at 1e6 also against the float64 reference engine."""
    g = torch.Generator().manual_seed(int(np.log10(scale)))
    n, ks = 1000, torch.tensor([1, 100, 500, 501, 900, 999])
    theta = (torch.randn(len(ks), n, dtype=torch.float64, generator=g) * scale).to(dtype)
    with use_engine("tree"):
        lz = ksubset.log_partition(theta, ks)
        mu = ksubset.marginals(theta, ks)
        ent = ksubset.entropy(theta, ks)
        z = ksubset.sample(theta, ks, sample_shape=(3,), generator=g)
        s = ksubset.simple(theta.clone().requires_grad_(True), ks, generator=g).detach()
    srt = theta.double().sort(-1, descending=True)
    for r, kr in enumerate(ks.tolist()):
        assert float(srt.values[r, kr - 1] - srt.values[r, kr]) > 200  # decided, in float32 too
        top = torch.zeros(n, dtype=torch.int64).index_fill_(0, srt.indices[r, :kr], 1)
        assert (z[:, r] == top).all() and (s[r] == top).all()
        assert (mu[r] == top).all()
        assert float(ent[r]) == pytest.approx(0.0, abs=RTOL[dtype])
        assert float(lz[r]) == pytest.approx(float(srt.values[r, :kr].sum()), rel=RTOL[dtype])
    if scale == 1e6:
        t64 = theta.double()
        torch.testing.assert_close(lz.double(), reference.log_partition(t64, ks, 999), rtol=RTOL[dtype], atol=0)


def test_tilt_solves_any_spread():
    """|sum sigmoid(x) - k| within the tolerance for spreads up to the float range, both variants."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        n = 500
        rows = [torch.randn(n, generator=g, dtype=torch.float64) * s for s in (1.0, 1e3, 1e6, 1e12, 1e30)]
        rows.append(torch.arange(n, dtype=torch.float64) * G[dtype])
        rows.append(torch.where(torch.rand(n, generator=g) < 0.5, 1e30, -1e30).double() + torch.randn(n, generator=g))
        theta = torch.stack(rows).to(dtype)
        for kk in (0, 1, 7, 250, 499, 500):
            k = torch.full((theta.shape[0],), kk)
            for K in (kk, None):
                ref, delta = numerics.tilt_parts(theta, k, K)
                x = numerics.shifted(theta, ref) + delta.unsqueeze(-1)
                target = min(max(kk, 0.5), n - 0.5)
                got = torch.sigmoid(x.double()).sum(-1)
                assert ((got - target).abs() <= numerics.TILT_TOLERANCE + 1e-3).all(), (dtype, kk, K, got)


def test_chunked_convolutions_match(monkeypatch):
    """Tiny chunks exercise both chunked paths of the banded products (over nodes, over output entries)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 37, dtype=torch.float64, generator=g)
    theta[1, 5:9] = NINF
    k = torch.tensor([9, 20, 30])
    v = torch.randn(theta.shape, dtype=torch.float64, generator=g)
    u = tree.uniforms(theta, 5, g)
    outs = []
    for chunk in (tree.CHUNK_ELEMENTS, 7, 40):
        monkeypatch.setattr(tree, "CHUNK_ELEMENTS", chunk)
        outs.append(
            (
                tree.log_partition(theta, k, 30),
                tree.marginals(theta, k, 30),
                tree.cov_vec(theta, k, 30, v),
                tree.entropy(theta, k, 30),
                tree.sample_given(theta, k, 30, u),
                tree.cov3(theta, k, 30, v, v.flip(-1)),
            )
        )
    for other in outs[1:]:
        for a, b in zip(outs[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1][0], reference.log_partition(theta, k, 30), rtol=1e-12, atol=0)
    torch.testing.assert_close(outs[1][1], reference.marginals(theta, k, 30), rtol=0, atol=1e-12)
    torch.testing.assert_close(outs[1][2], reference.cov_vec(theta, k, 30, v), rtol=0, atol=1e-12)
    torch.testing.assert_close(outs[1][5], reference.cov3(theta, k, 30, v, v.flip(-1)), rtol=0, atol=1e-12)


def test_expanded_logits():
    """Stride-0 (expanded) logits through SIMPLE's backward, the marginals' backward and jvp, the entropy's
    backward: the forward-mode duals must not be written into the shared memory."""
    n = 10
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, n, dtype=torch.float64, generator=g)
    gout = torch.randn(64, n, dtype=torch.float64, generator=g)
    tangent = torch.randn(1, n, dtype=torch.float64, generator=g)
    with use_engine("tree"):
        results = []
        for expand in (True, False):
            b = base.clone().requires_grad_(True)
            logits = b.expand(64, n) if expand else b.repeat(64, 1)
            (ksubset.marginals(logits, 3) * gout).sum().backward()
            ksubset.entropy(logits, 7).sum().backward()
            (ksubset.simple(logits, 4, generator=torch.Generator().manual_seed(1)) * gout).sum().backward()
            t_in = base.expand(64, n) if expand else base.repeat(64, 1)
            v_in = tangent.expand(64, n) if expand else tangent.repeat(64, 1)
            _, jv = torch.func.jvp(lambda t: ksubset.marginals(t, 6), (t_in,), (v_in,))
            results.append((b.grad, jv))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    e = _exact(base[0].numpy(), 6)
    np.testing.assert_allclose(results[0][1][0].numpy(), e.covariance @ tangent[0].numpy(), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_public_api_gradients_at_extreme_spreads(dtype):
    """Through the public functions under the tree engine: d log Z = mu, entropy and kl_uniform with their
    gradients (``dH = -Cov(z, theta . z)``, taken over the exact relative log weights), against enumeration."""
    theta, k = _rows(dtype)
    t = theta.clone().requires_grad_(True)
    with use_engine("tree"):
        (g_lz,) = torch.autograd.grad(ksubset.log_partition(t, k).sum(), t)
        ent = ksubset.entropy(t, k)
        (g_h,) = torch.autograd.grad(ent.sum(), t)
        klu = ksubset.kl_uniform(t, k)
        (g_kl,) = torch.autograd.grad(klu.sum(), t)
    tol = RTOL[dtype]
    th64 = theta.double().numpy()
    for r in range(theta.shape[0]):
        e = _exact(th64[r], int(k[r]))
        np.testing.assert_allclose(g_lz[r].double().numpy(), e.marginals, rtol=0, atol=tol)
        rel = np.log(np.maximum(e.probs, 1e-320))  # theta . z up to a constant (log p only where p > 0 counts)
        rel = np.where(e.probs > 0, rel, 0.0)
        centred = rel - e.probs @ rel
        grad_h = -((e.probs * centred) @ (e.subsets - e.marginals))
        np.testing.assert_allclose(g_h[r].double().numpy(), grad_h, rtol=0, atol=10 * tol)
        m = int(np.isfinite(th64[r]).sum())
        log_binom = math.lgamma(m + 1) - math.lgamma(int(k[r]) + 1) - math.lgamma(m - int(k[r]) + 1)
        assert abs(float(klu[r].detach()) - (log_binom - e.entropy)) <= tol * max(1.0, log_binom), r
        np.testing.assert_allclose(g_kl[r].double().numpy(), -grad_h, rtol=0, atol=10 * tol)


def test_compiled_entropy_and_simple_backward_run_on_the_tree_engine():
    """The engine behind compiled models on CUDA: the entropy's backward (Cov times the tilted logits) used to
    hit a torch-internal assertion in forward-mode duals inside the compiled backward."""
    x = torch.randn(4, 8)
    with use_engine("tree"):
        f = torch.compile(lambda t: ksubset.entropy(t, 3).sum())
        a = x.clone().requires_grad_(True)
        f(a).backward()
        b = x.clone().requires_grad_(True)
        ksubset.entropy(b, 3).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
