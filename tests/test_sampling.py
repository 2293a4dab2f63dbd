"""Exact sampling: support, chi-square against the enumerated law, inclusion frequencies, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ksubset

from oracle import enumerate_row


def test_always_exactly_k(engine):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(5, 40, generator=g) * torch.tensor([0.01, 1, 10, 100, 1e4])[:, None]
    theta[0, :3] = float("inf")
    theta[1, 5:30] = float("-inf")
    mask = torch.ones(5, 40, dtype=torch.bool)
    mask[2, :20] = False
    k = torch.tensor([3, 15, 20, 0, 40 - 0])
    k[4] = 40
    z = ksubset.sample(theta, k, mask, sample_shape=(50,), generator=g)
    assert z.shape == (50, 5, 40)
    assert (z.sum(-1) == k.float()).all()
    assert (z[:, 0, :3] == 1).all() and (z[:, 1, 5:30] == 0).all() and (z[:, 2, :20] == 0).all()
    assert ((z == 0) | (z == 1)).all()


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_chi_square_against_enumerated_law(engine, scale):
    """n = 6, k = 3: 20 subsets, 20,000 samples; Gumbel top-k would fail this test (TV 0.07–0.10)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    theta = rng.standard_normal(6) * scale
    e = enumerate_row(theta, 3)
    g = torch.Generator().manual_seed(123)
    z = ksubset.sample(torch.tensor(theta), 3, sample_shape=(20_000,), generator=g).numpy()
    index = {tuple(s.astype(int)): i for i, s in enumerate(e.subsets)}
    counts = np.bincount([index[tuple(r.astype(int))] for r in z], minlength=len(index))
    stat, p = scipy_stats.chisquare(counts, e.probs * len(z))
    assert p > 1e-3, (stat, p)


def test_gumbel_top_k_is_rejected_by_the_same_test():
    """The chi-square test above has the power to tell the k-subset law from Gumbel top-k."""
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    theta = rng.standard_normal(6) * 3.0
    e = enumerate_row(theta, 3)
    g = torch.Generator().manual_seed(123)
    gumbel = -torch.log(-torch.log(torch.rand(20_000, 6, generator=g, dtype=torch.float64)))
    top = (torch.tensor(theta) + gumbel).topk(3, dim=-1).indices
    z = torch.zeros(20_000, 6).scatter_(-1, top, 1.0).numpy()
    index = {tuple(s.astype(int)): i for i, s in enumerate(e.subsets)}
    counts = np.bincount([index[tuple(r.astype(int))] for r in z], minlength=len(index))
    _, p = scipy_stats.chisquare(counts, e.probs * len(z))
    assert p < 1e-6


def test_inclusion_frequencies_match_marginals_with_per_row_k(fast_engine):
    g = torch.Generator().manual_seed(3)
    B, n, S = 4, 300, 4000
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * 2
    k = torch.tensor([1, 10, 150, 290])
    mu = ksubset.marginals(theta, k)
    freq = ksubset.sample(theta, k, sample_shape=(S,), generator=g).mean(0)
    se = torch.sqrt(mu * (1 - mu) / S)
    assert ((freq - mu).abs() <= 5 * se + 1e-3).all()


def test_same_generator_state_same_samples(engine):
    theta = torch.randn(3, 30)
    a = ksubset.sample(theta, 5, sample_shape=(4,), generator=torch.Generator().manual_seed(9))
    b = ksubset.sample(theta, 5, sample_shape=(4,), generator=torch.Generator().manual_seed(9))
    c = ksubset.sample(theta, 5, sample_shape=(4,), generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_shapes_and_dtypes():
    for dtype in [torch.float16, torch.bfloat16, torch.float32, torch.float64]:
        theta = torch.randn(2, 3, 9).to(dtype)
        z = ksubset.sample(theta, 4, sample_shape=(5, 2))
        assert z.shape == (5, 2, 2, 3, 9) and z.dtype == dtype
        assert (z.sum(-1) == 4).all()
    z = ksubset.sample(torch.randn(7), 2)
    assert z.shape == (7,) and z.sum() == 2
