"""Hypothesis property tests over n, k, scales, masks, ±inf and dtypes."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ksubset
from ksubset.core import available_engines, use_engine


@st.composite
def problems(draw):
    n = draw(st.integers(1, 60))
    B = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-4, 1e-2, 1.0, 10.0, 300.0, 1e4]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * scale
    if draw(st.booleans()):  # ties
        theta = theta.round()
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
    # the production engines (the sequential reference is a float64 oracle, checked against enumeration)
    engines = [e for e in available_engines() if e != "reference"]
    return theta.to(dtype), torch.tensor(ks), mask, draw(st.sampled_from(engines))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
        # log Z is finite unless it exceeds the output dtype's range (float16 tops out at 65504)
        lz32 = ksubset.log_partition(theta.float(), k, mask)
        representable = lz32.abs() < torch.finfo(theta.dtype).max
        assert torch.isfinite(lz.float()[representable]).all() and torch.isfinite(lz32).all()
        assert (h.float() >= -1e-3).all(), (engine, theta.dtype, h)

        z = ksubset.simple(t, k, mask)
        assert torch.equal(z.sum(-1).long(), k)
        assert (z[~avail] == 0).all() and (z[theta == float("inf")] == 1).all()
        (z * torch.randn_like(z)).sum().backward(retain_graph=False)
        assert torch.isfinite(t.grad.float()).all()
        t.grad = None
        (h.sum() + lz.sum()).backward()
        assert torch.isfinite(t.grad.float()).all()
