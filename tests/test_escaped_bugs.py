"""Regression tests for bugs that an earlier suite let through (outside the kernel).

Each test was checked by planting the bug it names and watching it fail. Oracles are independent: enumeration
in float64 (tests/oracle.py), ``math.comb``, numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ksubset
from ksubset.experiments import bias_variance as bv
from ksubset.nn import KSubsetLayer

from oracle import enumerate_row, kl_rows

INF = float("inf")


def _kl_uniform_oracle(theta, k: int, mask=None) -> float:
    """KL(p || uniform over the k-subsets of the available items) = sum_z p(z) log(p(z) · C(m, k))."""
    e = enumerate_row(theta, k, mask)
    avail = np.asarray(theta) != -np.inf
    if mask is not None:
        avail &= np.asarray(mask, dtype=bool)
    log_c = math.log(math.comb(int(avail.sum()), k))
    p = e.probs[e.probs > 0]
    return float((p * (np.log(p) + log_c)).sum())


def test_kl_uniform_value_matches_enumeration_with_masks_forced_items_and_per_row_k(engine):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 7, generator=g, dtype=torch.float64) * 2
    theta[1, 2] = INF
    theta[2, [0, 5]] = -INF
    theta[3, 1] = INF
    theta[3, 4] = -INF
    mask = torch.ones(6, 7, dtype=torch.bool)
    mask[4, :3] = False
    mask[5, 6] = False
    k = torch.tensor([3, 2, 1, 4, 2, 0])
    got = ksubset.kl_uniform(theta, k, mask)
    for r in range(6):
        want = _kl_uniform_oracle(theta[r].numpy(), int(k[r]), mask[r].numpy())
        assert abs(float(got[r]) - want) < 1e-9 * max(1.0, abs(want)), (r, float(got[r]), want)
    # uniform logits: p is the uniform law itself
    assert torch.allclose(ksubset.kl_uniform(torch.zeros(3, 9, dtype=torch.float64), 4), torch.zeros(3,
                          dtype=torch.float64), atol=1e-12)


def test_log_prob_of_a_non_binary_z_with_the_right_count_is_minus_inf_or_an_error(engine):
    t = torch.tensor([0.3, -1.0, 2.0, -INF, INF], dtype=torch.float64)
    k = 3
    for z in ([0.5, 0.5, 1.0, 0.0, 1.0], [2.0, -1.0, 1.0, 0.0, 1.0], [1.5, 0.0, 0.5, 0.0, 1.0]):
        z = torch.tensor(z, dtype=torch.float64)  # sums to k, nothing on the unavailable item, forced item on
        assert ksubset.log_prob(t, k, z) == -INF
        with pytest.raises(ValueError, match="not a k-subset"):
            ksubset.log_prob(t, k, z, validate=True)
        with pytest.raises(ValueError, match="not a k-subset"):
            ksubset.KSubset(t, k, validate_args=True).log_prob(z)


def test_kl_divergence_at_k0_with_masks_is_zero_and_matches_enumeration_for_other_k(engine):
    g = torch.Generator().manual_seed(1)
    p = torch.randn(3, 6, generator=g, dtype=torch.float64)
    q = torch.randn(3, 6, generator=g, dtype=torch.float64)
    q[:, 0] = -INF  # q can never select item 0; p can (unless k = 0)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[:, 5] = False
    k = torch.tensor([0, 1, 2])
    got = ksubset.kl_divergence(p, q, k, mask)
    for r in range(3):
        pr = torch.where(mask[r], p[r], -INF).numpy()
        qr = torch.where(mask[r], q[r], -INF).numpy()
        want = kl_rows(pr, qr, int(k[r]))
        assert (float(got[r]) == want) if math.isinf(want) else abs(float(got[r]) - want) < 1e-12
    assert abs(float(got[0])) < 1e-12  # both are the point mass on the empty set
    # the same through the distributions, and for kl_uniform
    d0 = torch.distributions.kl_divergence(ksubset.KSubset(p, 0, mask), ksubset.KSubset(q, 0, mask))
    assert d0.abs().max() < 1e-12
    assert ksubset.kl_uniform(p, 0, mask).abs().max() < 1e-12


def test_layer_eval_marginals_respects_the_mask():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, :2] = False
    mask[2, 3:] = False
    layer = KSubsetLayer(2, eval_mode="marginals").eval()
    mu = layer(x, mask)
    for r in range(4):
        want = enumerate_row(x[r].numpy(), 2, mask[r].numpy()).marginals
        np.testing.assert_allclose(mu[r].numpy(), want, atol=1e-12)
    assert (mu[~mask] == 0).all()


def test_bias_variance_variance_metric_matches_an_independent_computation():
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((50, 7))
    grads[4] = 0.0  # a zero estimate: its cosine counts as 0
    exact = rng.standard_normal(7)
    g_bar = grads.mean(0)
    cos = np.array([g @ g_bar / (np.linalg.norm(g) * np.linalg.norm(g_bar)) if np.linalg.norm(g) else 0.0
                    for g in grads])
    m = bv.metrics(torch.tensor(grads), torch.tensor(exact))
    assert abs(m["variance"] - np.mean((cos - cos.mean()) ** 2)) < 1e-12  # population variance of the cosines
    assert abs(m["bias"] - (1 - exact @ g_bar / (np.linalg.norm(exact) * np.linalg.norm(g_bar)))) < 1e-12
    cos_exact = np.array([g @ exact / (np.linalg.norm(g) * np.linalg.norm(exact)) if np.linalg.norm(g) else 0.0
                          for g in grads])
    assert abs(m["avg_error"] - np.mean(1 - cos_exact)) < 1e-12


@pytest.mark.parametrize("same_k", [True, False])
def test_identical_rows_of_a_batch_draw_independent_samples(engine, same_k):
    """Two identical rows in one batch: their joint law must be the product law (chi-square), not the diagonal."""
    scipy_stats = pytest.importorskip("scipy.stats")
    theta = torch.tensor([0.4, -0.3, 0.1, 0.0], dtype=torch.float64)
    k = torch.tensor([2, 2]) if same_k else torch.tensor([2, 1])
    batch = torch.stack([theta, theta, torch.zeros(4, dtype=torch.float64)])  # a third, different row
    S = 12_000
    z = ksubset.sample(batch, torch.cat([k, torch.tensor([2])]), sample_shape=(S,),
                       generator=torch.Generator().manual_seed(5))
    laws = [enumerate_row(theta.numpy(), int(kk)) for kk in k]
    index = [{tuple(s.astype(int)): i for i, s in enumerate(e.subsets)} for e in laws]
    a = np.array([index[0][tuple(r)] for r in z[:, 0].numpy().astype(int)])
    b = np.array([index[1][tuple(r)] for r in z[:, 1].numpy().astype(int)])
    n0, n1 = len(index[0]), len(index[1])
    counts = np.bincount(a * n1 + b, minlength=n0 * n1)
    expected = S * np.outer(laws[0].probs, laws[1].probs).ravel()
    assert expected.min() > 5  # the chi-square approximation holds
    p_value = scipy_stats.chisquare(counts, expected).pvalue
    assert p_value > 1e-4, f"rows of one batch are not independent (p = {p_value:.2e})"
