"""Hypothesis property tests over n, k, masks, ±inf, dtypes, every engine, and logits across the whole finite
range of each dtype (``finfo.min``/``finfo.max``, mixes of ``1e30`` and ``1e-30``).

Two properties: outputs and gradients are sane for any logits (finite, in range, k ones, ...); and on rows built
of clusters far apart (levels up to ``finfo.max``), every quantity equals that of the *limit problem* (the same
logits with the far clusters replaced by ``±inf``), enumerated in float64 by tests/oracle.py.

How many examples, and whether they are the same on every run: the Hypothesis profile (tests/conftest.py,
environment variable ``HYPOTHESIS_PROFILE``: ``ci`` by default, ``thorough``).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import ksubset
from ksubset.core import available_engines, use_engine

from oracle import enumerate_row

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _to_dtype(theta64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast float64 logits to ``dtype`` without overflowing finite values to ±inf (clamped to its range)."""
    fi = torch.finfo(dtype)
    finite = torch.isfinite(theta64)
    return torch.where(finite, theta64.clamp(fi.min, fi.max), theta64).to(dtype)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 60))
    B = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    fi = torch.finfo(dtype)
    scale = draw(st.sampled_from([1e-30, 1e-4, 1e-2, 1.0, 10.0, 300.0, 1e4, 1e30, fi.max]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * scale
    theta = theta.nan_to_num(posinf=fi.max, neginf=fi.min)  # scale = finfo(float64).max overflows
    if draw(st.booleans()):  # ties
        theta = theta.round()
    if draw(st.booleans()):  # sprinkle the extremes of the range among the others
        extremes = torch.tensor([fi.max, fi.min, 1e30, -1e30, 1e-30, -1e-30], dtype=torch.float64)
        pick = torch.randint(0, len(extremes), (B, n), generator=g)
        theta = torch.where(torch.rand(B, n, generator=g) < 0.3, extremes[pick], theta)
    kind = torch.randint(0, 10, (B, n), generator=g)
    theta[kind == 0] = float("-inf")
    mask = torch.rand(B, n, generator=g) > draw(st.sampled_from([0.0, 0.3]))
    avail = mask & (theta != float("-inf"))
    forced_candidates = (kind == 1) & avail
    ks = []
    for b in range(B):
        m = int(avail[b].sum())
        k = draw(st.integers(0, m))
        # force at most k items
        idx = torch.nonzero(forced_candidates[b]).flatten()[:k]
        theta[b, idx] = float("inf")
        ks.append(k)
    # every engine; the sequential reference only on small float64 rows: it is slow, and it is the float64
    # oracle (in float32 its marginals may exceed 1 by an ulp, which this property would flag)
    engines = [e for e in available_engines() if e != "reference" or (n <= 20 and dtype == torch.float64)]
    return _to_dtype(theta, dtype), torch.tensor(ks), mask, draw(st.sampled_from(engines))


@given(problems())
def test_outputs_and_gradients_are_sane(problem):
    theta, k, mask, engine = problem
    with use_engine(engine):
        t = theta.clone().requires_grad_(True)
        mu = ksubset.marginals(t, k, mask)
        mu32 = mu.float()
        assert mu.dtype == theta.dtype
        assert torch.isfinite(mu32).all()
        assert (mu32 >= 0).all() and (mu32 <= 1).all(), (engine, theta.dtype, mu32.max())
        tol = 1e-6 * theta.shape[-1] if theta.dtype == torch.float64 else 2e-2
        assert torch.allclose(mu32.sum(-1), k.float(), atol=tol * max(1, int(k.max())))
        avail = mask & (theta != float("-inf"))
        assert (mu32[~avail] == 0).all()

        h = ksubset.entropy(t, k, mask)
        lz = ksubset.log_partition(t, k, mask)
        assert torch.isfinite(h.float()).all()
        assert (h.float() >= -1e-3).all(), (engine, theta.dtype, h)
        # log Z is never NaN, and finite unless its true value is beyond the output dtype's range (the sum of
        # logits forced at finfo.max overflows). Below float64, the float64 computation tells which.
        assert not torch.isnan(lz).any(), lz
        if theta.dtype != torch.float64:
            lz64 = ksubset.log_partition(theta.double(), k, mask)
            assert torch.isfinite(lz64).all()
            big = torch.finfo(theta.dtype).max
            assert torch.isfinite(lz[lz64.abs() < 0.99 * big]).all(), (lz, lz64)
            assert torch.isinf(lz[lz64.abs() > 1.01 * big]).all(), (lz, lz64)

        z = ksubset.simple(t, k, mask)
        assert torch.equal(z.sum(-1).long(), k)
        assert (z[~avail] == 0).all() and (z[theta == float("inf")] == 1).all()
        (z * torch.randn_like(z)).sum().backward(retain_graph=False)
        assert torch.isfinite(t.grad.float()).all()
        t.grad = None
        (h.sum() + lz.sum()).backward()
        assert not torch.isnan(t.grad.float()).any()
        assert torch.isfinite(t.grad.float()).all()


# --------------------------------------------------------------------------------------------------------------
# the limit problem

#: Per dtype: the magnitudes of the far clusters (each more than the limit's gap from the next), and the one
#: at which distinct logits (cluster + offset in [-5, 5]) are representable.
LEVELS = {
    torch.float16: ([torch.finfo(torch.float16).max, 1e4, 1e3], 1e3),
    torch.bfloat16: ([torch.finfo(torch.bfloat16).max, 1e30, 1e6], None),
    torch.float32: ([torch.finfo(torch.float32).max, 1e30, 1e6], 1e6),
    torch.float64: ([torch.finfo(torch.float64).max, 1e300, 1e30, 1e12], 1e12),
}


@st.composite
def clustered_rows(draw):
    """One row of logits made of clusters (a moderate one around 0, and ``±level`` ones), ±inf and masked items,
    with each item's cluster: ``(x [n] in dtype, cluster ids, k, mask, engine)``."""
    dtype = draw(st.sampled_from(DTYPES))
    levels, with_offsets = LEVELS[dtype]
    n = draw(st.integers(1, 8))
    values, cluster, mask = [], [], []
    for _ in range(n):
        kind = draw(st.sampled_from(["moderate", "moderate", "level", "level", "+inf", "-inf", "masked"]))
        mask.append(kind != "masked")
        if kind in ("moderate", "masked"):
            v = draw(st.sampled_from([1e-30, -1e-30, 0.0]) | st.floats(-5, 5))
            values.append(v)
            cluster.append(0)
        elif kind == "level":
            i = draw(st.integers(0, len(levels) - 1))
            sign = draw(st.sampled_from([1, -1]))
            off = draw(st.floats(-5, 5)) if levels[i] == with_offsets else 0.0
            values.append(sign * (levels[i] + off))
            cluster.append(sign * (len(levels) - i))  # ordered like the levels
        else:
            values.append(math.inf if kind == "+inf" else -math.inf)
            cluster.append(None)
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    avail = [m and v != -math.inf for m, v in zip(mask, values, strict=True)]
    n_inf = sum(a and v == math.inf for a, v in zip(avail, values, strict=True))
    n_avail = sum(avail)
    k = draw(st.integers(n_inf, max(n_inf, n_avail)))
    engine = draw(st.sampled_from(available_engines()))
    return x, cluster, k, torch.tensor(mask), engine


def limit_problem(x: torch.Tensor, cluster: list, k: int, mask: torch.Tensor) -> tuple[np.ndarray, Fraction | None]:
    """The limit of a clustered row: clusters taken whole from the top while they fit in k are forced (+inf),
    the one that crosses k keeps its logits relative to its top, the ones below are removed (-inf). Returns the
    limit logits and ``log Z - log Z(limit logits)`` exactly (a Fraction): the forced logits plus the crossing
    cluster's top times the number it still chooses."""
    x64 = x.double().numpy()
    out = x64.copy()
    avail = mask.numpy() & (x64 != -np.inf)
    need = k - int((avail & (x64 == np.inf)).sum())
    offset = Fraction(0)
    ids = sorted({c for c, a in zip(cluster, avail, strict=True) if c is not None and a}, reverse=True)
    for c in ids:
        members = [i for i, (ci, a) in enumerate(zip(cluster, avail, strict=True)) if ci == c and a]
        if len(members) <= need:
            out[members] = np.inf
            offset += sum(Fraction(float(x64[i])) for i in members)
            need -= len(members)
        elif need > 0:
            top = max(x64[members])
            out[members] = x64[members] - top
            offset += need * Fraction(float(top))
            need = 0
        else:
            out[members] = -np.inf
    return out, offset


def _rounded(value: Fraction, dtype: torch.dtype) -> float:
    """``value`` rounded to float64, then to ``dtype`` (±inf beyond the range), as a Python float."""
    try:
        v = float(value)
    except OverflowError:
        v = math.inf if value > 0 else -math.inf
    return float(torch.tensor(v, dtype=torch.float64).to(dtype))


#: Absolute/relative tolerance per logits dtype (half dtypes are computed in float32, returned rounded).
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@given(clustered_rows())
def test_every_quantity_is_that_of_the_limit_problem(row):
    x, cluster, k, mask, engine = row
    dtype = x.dtype
    tol = TOL[dtype]
    limit, offset = limit_problem(x, cluster, k, mask)
    e = enumerate_row(limit, k, mask.numpy())
    hard = np.isinf(x.double().numpy())  # ±inf logits of the caller: no gradient
    with use_engine(engine):
        t = x.clone().requires_grad_(True)
        lz = ksubset.log_partition(t, k, mask)
        want = _rounded(offset + Fraction(e.log_z), dtype)
        got = float(lz.detach())
        near_overflow = abs(want) > 0.99 * torch.finfo(dtype).max
        assert got == want or abs(got - want) <= tol * max(1.0, abs(want)) or (near_overflow and math.isinf(got)), (
            engine, got, want)

        mu = ksubset.marginals(t, k, mask)
        np.testing.assert_allclose(mu.double().detach().numpy(), e.marginals, atol=tol, err_msg=engine)
        h = ksubset.entropy(t, k, mask)
        assert abs(float(h.detach()) - e.entropy) <= tol * max(1.0, e.entropy), (engine, float(h), e.entropy)

        # KL to the uniform k-subsets of every item the caller left available; KL(p || p) = 0
        n_avail = int((mask & (x != -math.inf)).sum())
        kl_u = float(ksubset.kl_uniform(x, k, mask))
        want_kl = math.log(math.comb(n_avail, k)) - e.entropy
        assert abs(kl_u - want_kl) <= tol * max(1.0, abs(want_kl)), (engine, kl_u, want_kl)
        assert abs(float(ksubset.kl_divergence(x, x, k, mask))) <= tol, engine

        z = ksubset.sample(x, k, mask, sample_shape=(32,), generator=torch.Generator().manual_seed(0))
        assert (z.sum(-1) == k).all()
        assert (z[:, limit == np.inf] == 1).all() and (z[:, (limit == -np.inf) | ~mask.numpy()] == 0).all()
        lp = float(ksubset.log_prob(x, k, z[0], mask))
        i = int(np.flatnonzero((e.subsets == z[0].double().numpy()).all(-1))[0])
        assert abs(lp - (e.log_weights[i] - e.log_z)) <= tol * max(1.0, abs(lp)), (engine, lp)

        # d log Z = marginals (1 on items the limit forces, whose logits are in log Z); d H = -Cov theta and
        # d (mu . v) = Cov v with the limit's covariance (0 on every item the limit decides)
        v = torch.linspace(-1, 1, len(x), dtype=torch.float64)
        g_lz, = torch.autograd.grad(lz, t, retain_graph=True)
        g_h, = torch.autograd.grad(h, t, retain_graph=True)
        g_mu, = torch.autograd.grad((mu * v.to(dtype)).sum(), t)
        rel = np.where(np.isfinite(limit), limit, 0.0)
        np.testing.assert_allclose(g_lz.double().numpy(), np.where(hard, 0.0, e.marginals), atol=tol, err_msg=engine)
        np.testing.assert_allclose(g_h.double().numpy(), -e.covariance @ rel, atol=tol * 10, err_msg=engine)
        np.testing.assert_allclose(g_mu.double().numpy(), e.covariance @ v.to(dtype).double().numpy(),
                                   atol=tol * 10, err_msg=engine)
