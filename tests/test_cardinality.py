"""Count-constrained subsets against brute-force enumeration (tests/oracle.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import ksubset
from ksubset.core import cardinality as card
from ksubset.core.cardinality import AtMost, Between, CountPotential, Exactly

from oracle import enumerate_counts, kl_counts

SCALES = [0.01, 1.0, 30.0, 1000.0]


def phi_of(constraint, n: int, row: int = 0) -> np.ndarray:
    """The oracle's log-potentials over total counts for one row of a constraint (written independently)."""
    def val(x):
        return int(x[row]) if isinstance(x, torch.Tensor) and x.dim() else int(x)

    if isinstance(constraint, CountPotential):
        p = constraint.phi
        return (p[row] if p.dim() > 1 else p).detach().double().numpy()[: n + 1]
    if isinstance(constraint, Exactly):
        lo = hi = val(constraint.k)
    elif isinstance(constraint, AtMost):
        lo, hi = 0, val(constraint.k)
    else:
        lo, hi = val(constraint.a), n if constraint.b is None else val(constraint.b)
    out = np.full(min(hi, n) + 1, -np.inf)
    out[lo : min(hi, n) + 1] = 0.0
    return out


def families(n: int, gen: torch.Generator):
    """Every count set for n: exactly k and at most k for every k, between a and b for every a <= b when
    n <= 6 (a spread of pairs above), and random potentials with forbidden counts. Per-row tensors."""
    ks = torch.arange(n + 1)
    yield Exactly(ks)
    yield AtMost(ks)
    pairs = [(a, b) for a in range(n + 1) for b in range(a, n + 1)]
    if n > 6:
        pairs = pairs[:: max(1, len(pairs) // 12)]
    a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    yield Between(a, b)
    phi = torch.randn(4, n + 1, generator=gen, dtype=torch.float64) * 2
    phi[1, ::2] = -math.inf  # odd counts only
    phi[2, 0] = -math.inf
    phi[3, : n // 2] = -math.inf
    yield CountPotential(phi)


def rows_of(constraint) -> int:
    if isinstance(constraint, CountPotential):
        return constraint.phi.shape[0]
    if isinstance(constraint, Between):
        return constraint.a.shape[0]
    return constraint.k.shape[0]


@pytest.mark.parametrize("n", range(1, 13))
def test_against_enumeration(n):
    gen = torch.Generator().manual_seed(100 + n)
    for scale in SCALES:
        for cons in families(n, gen):
            R = rows_of(cons)
            theta = torch.randn(R, n, generator=gen, dtype=torch.float64) * scale
            q_theta = torch.randn(R, n, generator=gen, dtype=torch.float64) * scale
            lz = card.log_partition(theta, cons)
            mu = card.marginals(theta, cons)
            h = card.entropy(theta, cons)
            law = card.count_distribution(theta, cons)
            kl = card.kl_divergence(theta, q_theta, cons)
            z_mode = card.mode(theta, cons)
            for r in range(R):
                phi = phi_of(cons, n, r)
                e = enumerate_counts(theta[r].numpy(), phi)
                tol = 1e-9 * max(1.0, scale)
                where = f"n={n} scale={scale} {type(cons).__name__} row {r}"
                assert abs(lz[r].item() - e.log_z) <= tol * max(1, abs(e.log_z)), where
                np.testing.assert_allclose(mu[r].numpy(), e.marginals, atol=1e-10, err_msg=where)
                np.testing.assert_allclose(law[r].numpy()[: len(phi)], e.count_law, atol=1e-10, err_msg=where)
                assert law[r].numpy()[len(phi) :].sum() == 0, where
                assert abs(h[r].item() - e.entropy) <= 1e-9 * max(1.0, e.entropy), where
                kl_ref = kl_counts(theta[r].numpy(), phi, q_theta[r].numpy(), phi)
                assert abs(kl[r].item() - kl_ref) <= 1e-9 * max(1.0, abs(kl_ref)) * max(1.0, scale / 30), where
                score = float(z_mode[r].numpy() @ theta[r].numpy() + phi[int(z_mode[r].sum())])
                assert score == pytest.approx(e.log_weights.max(), abs=1e-9 * max(1.0, scale)), where


def test_log_prob_against_enumeration():
    gen = torch.Generator().manual_seed(3)
    n = 7
    theta = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    for cons in [Exactly(3), AtMost(4), Between(2, 5), CountPotential(torch.randn(n + 1, dtype=torch.float64))]:
        e = enumerate_counts(theta.numpy(), phi_of(cons, n))
        z = torch.from_numpy(e.subsets)
        lp = card.log_prob(theta, cons, z)
        np.testing.assert_allclose(lp.numpy(), e.log_weights - e.log_z, atol=1e-12)
    # off the support: a forbidden count, a non-binary entry
    z = torch.zeros(n, dtype=torch.float64)
    z[:5] = 1
    assert card.log_prob(theta, AtMost(4), z).item() == -math.inf
    z[0] = 0.5
    assert card.log_prob(theta, Between(0, 7), z).item() == -math.inf


def test_infinite_logits_and_mask():
    """Forced items shift the count (phi'_j = phi_{j + #forced}); -inf and masked items are never chosen."""
    gen = torch.Generator().manual_seed(4)
    n = 8
    theta = torch.randn(3, n, generator=gen, dtype=torch.float64)
    theta[0, 1] = math.inf
    theta[0, 4] = -math.inf
    theta[1, [0, 2]] = math.inf
    mask = torch.ones(3, n, dtype=torch.bool)
    mask[2, 5:] = False
    mask[1, 7] = False
    phi = torch.randn(3, n + 1, generator=gen, dtype=torch.float64)
    phi[:, 0] = -math.inf
    for cons in [AtMost(4), Between(2, 5), CountPotential(phi)]:
        mu = card.marginals(theta, cons, mask)
        law = card.count_distribution(theta, cons, mask)
        h = card.entropy(theta, cons, mask)
        lz = card.log_partition(theta, cons, mask)
        z = card.sample(theta, cons, mask, sample_shape=(50,))
        for r in range(3):
            e = enumerate_counts(theta[r].numpy(), phi_of(cons, n, r), mask[r].numpy())
            np.testing.assert_allclose(mu[r].numpy(), e.marginals, atol=1e-12)
            np.testing.assert_allclose(law[r].numpy()[: len(e.count_law)], e.count_law, atol=1e-12)
            assert h[r].item() == pytest.approx(e.entropy, abs=1e-12)
            assert lz[r].item() == pytest.approx(e.log_z, abs=1e-12)
            support = {tuple(s) for s in e.subsets}
            assert all(tuple(s) in support for s in z[:, r].numpy())


def test_at_most_is_the_sum_of_exactly():
    """AtMost(k) with phi = 0: log Z = logsumexp_j of the exactly-j log-partitions of the k-subset core."""
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(4, 30, generator=gen, dtype=torch.float64) * 3
    k = 7
    exact = torch.stack([ksubset.log_partition(theta, j) for j in range(k + 1)], -1)
    torch.testing.assert_close(card.log_partition(theta, AtMost(k)), exact.logsumexp(-1), rtol=1e-13, atol=1e-12)
    law = card.count_distribution(theta, AtMost(k))
    torch.testing.assert_close(law, torch.softmax(exact, -1), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0, 1000.0])
def test_exactly_agrees_with_the_core(engine, scale):
    gen = torch.Generator().manual_seed(6)
    theta = torch.randn(5, 200, generator=gen, dtype=torch.float64) * scale
    theta[0, 3] = math.inf
    theta[1, 5] = -math.inf
    k = torch.tensor([1, 10, 50, 199, 0])
    k[4] = 1  # row 0 has a forced item
    torch.testing.assert_close(card.log_partition(theta, k), ksubset.log_partition(theta, k), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(card.marginals(theta, k), ksubset.marginals(theta, k), rtol=0, atol=1e-11)
    torch.testing.assert_close(card.entropy(theta, k), ksubset.entropy(theta, k), rtol=1e-9, atol=1e-9)
    q = torch.randn(5, 200, generator=gen, dtype=torch.float64) * scale
    q[0, 3] = math.inf
    q[1, 5] = -math.inf
    kl = card.kl_divergence(theta, q, k)
    torch.testing.assert_close(kl, ksubset.kl_divergence(theta, q, k), rtol=1e-9, atol=1e-8 * scale)
    torch.testing.assert_close(card.mode(theta, k), ksubset.mode(theta, k))


def test_float32_at_large_scale_keeps_precision():
    gen = torch.Generator().manual_seed(7)
    theta = torch.randn(3, 40, generator=gen, dtype=torch.float64) * 1000
    for cons in [AtMost(6), Between(3, 9)]:
        mu64 = card.marginals(theta, cons)
        mu32 = card.marginals(theta.float(), cons)
        assert (mu32.double() - mu64).abs().max() < 1e-5
        h64, h32 = card.entropy(theta, cons), card.entropy(theta.float(), cons)
        assert (h32.double() - h64).abs().max() < 1e-4
        assert torch.isfinite(card.log_partition(theta.float(), cons)).all()


@pytest.mark.parametrize(
    "cons",
    [AtMost(3), Between(2, 4), Exactly(3), CountPotential(torch.tensor([-1.0, 0.3, -math.inf, 1.2, 0.0, 0.5, -2.0]))],
    ids=["at_most", "between", "exactly", "potential"],
)
def test_chi_square_on_samples(cons):
    n, S = 6, 30000
    gen = torch.Generator().manual_seed(8)
    theta = torch.randn(n, generator=gen, dtype=torch.float64)
    e = enumerate_counts(theta.numpy(), phi_of(cons, n))
    z = card.sample(theta, cons, sample_shape=(S,), generator=gen)
    index = {tuple(s): i for i, s in enumerate(e.subsets)}
    counts = np.zeros(len(e.subsets))
    for s in z.numpy():
        counts[index[tuple(s)]] += 1  # KeyError = a draw off the support
    assert stats.chisquare(counts, e.probs * S).pvalue > 1e-4


def test_gradients_in_theta_and_phi():
    gen = torch.Generator().manual_seed(9)
    theta = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    phi = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    phi[0, 4:] = -math.inf
    phi = phi.requires_grad_(True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 2] = False
    for fn in [card.log_partition, card.marginals, card.entropy, card.count_distribution]:
        torch.autograd.gradcheck(lambda t, p, fn=fn: fn(t, CountPotential(p), mask), (theta, phi))
    torch.autograd.gradgradcheck(lambda t, p: card.log_partition(t, CountPotential(p)), (theta, phi))
    torch.autograd.gradcheck(lambda t: card.log_prob(t, AtMost(3), torch.tensor([1.0, 0, 1, 0, 0, 0])), (theta,))
    q = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t, u, p: card.kl_divergence(t, u, CountPotential(p)), (theta, q, phi))


def test_marginals_jacobian_is_the_enumerated_covariance():
    gen = torch.Generator().manual_seed(10)
    n = 7
    theta = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    phi = torch.randn(n + 1, generator=gen, dtype=torch.float64)
    e = enumerate_counts(theta.detach().numpy(), phi.numpy())
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    (vjp,) = torch.autograd.grad(card.marginals(theta, CountPotential(phi)), theta, g)
    np.testing.assert_allclose(vjp.numpy(), e.covariance @ g.numpy(), atol=1e-12)


def test_errors():
    theta = torch.randn(2, 5)
    with pytest.raises(ValueError, match="allows no subset"):
        card.marginals(theta, Exactly(6))
    t = theta.clone()
    t[1, :4] = math.inf
    with pytest.raises(ValueError, match=r"allows no subset.*row \(1,\)"):
        card.marginals(t, AtMost(3))
    with pytest.raises(ValueError, match="a <= b"):
        Between(4, 2)
    with pytest.raises(ValueError, match=">= 0"):
        AtMost(-1)
    with pytest.raises(TypeError, match="CountPotential"):
        card.marginals(theta, torch.zeros(6))
    with pytest.raises(ValueError, match=r"\+inf"):
        CountPotential(torch.tensor([0.0, math.inf]))
    with pytest.raises(ValueError, match="NaN"):
        CountPotential(torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="does not broadcast"):
        card.marginals(theta, CountPotential(torch.zeros(3, 6)))
    with pytest.raises(ValueError, match="NaN"):
        card.marginals(torch.tensor([0.0, math.nan]), AtMost(1))
    with pytest.raises(TypeError, match="counts must be"):
        card.marginals(theta, "3")
    with pytest.raises(ValueError, match="allows no subset"):
        card.marginals(theta, CountPotential(torch.full((3,), -math.inf)))


def test_kl_between_different_count_sets_and_masks():
    gen = torch.Generator().manual_seed(14)
    n = 7
    p = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    q = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    phi_q = torch.randn(n + 1, generator=gen, dtype=torch.float64)
    pairs = [(Exactly(2), AtMost(3)), (Between(1, 3), CountPotential(phi_q)), (AtMost(4), Between(2, 6))]
    for pc, qc in pairs:
        kl = card.kl_divergence(p, q, pc, q_counts=qc).item()
        ref = kl_counts(p.numpy(), phi_of(pc, n), q.numpy(), phi_of(qc, n))
        assert kl == pytest.approx(ref, rel=1e-10, abs=1e-12), (pc, qc)
    # q forbids an item that p may select: +inf; p never selects an item that q cannot: finite
    q2 = q.clone()
    q2[0] = -math.inf
    assert card.kl_divergence(p, q2, AtMost(3)).item() == math.inf
    p2 = p.clone()
    p2[0] = -math.inf
    ref = kl_counts(p2.numpy(), phi_of(AtMost(3), n), q2.numpy(), phi_of(AtMost(3), n))
    assert card.kl_divergence(p2, q2, AtMost(3)).item() == pytest.approx(ref, rel=1e-10)
