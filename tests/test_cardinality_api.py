"""Count constraints through the public API: top-level functions, estimators, distribution, layer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ksubset
from ksubset import AtMost, Between, CountPotential

from oracle import enumerate_counts


def test_top_level_functions_dispatch_and_keep_exactly_k():
    theta = torch.randn(3, 9, dtype=torch.float64)
    assert torch.equal(ksubset.marginals(theta, 4), ksubset.core.marginals(theta, 4))
    assert torch.equal(ksubset.marginals(theta, k=4), ksubset.core.marginals(theta, 4))
    torch.testing.assert_close(ksubset.marginals(theta, AtMost(4)), ksubset.cardinality.marginals(theta, AtMost(4)))
    h = ksubset.cardinality.entropy(theta, Between(2, 5))
    torch.testing.assert_close(ksubset.entropy(theta, k=Between(2, 5)), h)
    q = torch.randn(3, 9, dtype=torch.float64)
    torch.testing.assert_close(
        ksubset.kl_divergence(theta, q, AtMost(3)), ksubset.cardinality.kl_divergence(theta, q, AtMost(3))
    )
    assert (ksubset.sample(theta, AtMost(4), sample_shape=(5,)).sum(-1) <= 4).all()
    assert (ksubset.mode(theta, Between(2, 3)).sum(-1) >= 2).all()
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[:, 0] = False
    torch.testing.assert_close(  # the exactly-k argument order (p, q, k, mask) carries over
        ksubset.kl_divergence(theta, q, AtMost(3), mask), ksubset.cardinality.kl_divergence(theta, q, AtMost(3), mask)
    )
    with pytest.raises(ValueError, match="no count-constraint version"):
        ksubset.nn.KSubsetLayer(AtMost(3), estimator="aimle")


def test_simple_backward_is_the_enumerated_covariance_in_theta_and_phi():
    gen = torch.Generator().manual_seed(11)
    n = 6
    theta = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    phi = torch.randn(n + 1, generator=gen, dtype=torch.float64)
    phi[0] = -math.inf
    phi = phi.requires_grad_(True)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    z = ksubset.simple(theta, CountPotential(phi), generator=gen)
    e = enumerate_counts(theta.detach().numpy(), phi.detach().numpy())
    assert any(np.array_equal(z.detach().numpy(), s) for s in e.subsets)
    gt, gp = torch.autograd.grad(z, (theta, phi), g)
    np.testing.assert_allclose(gt.numpy(), e.covariance @ g.numpy(), atol=1e-12)
    # d E[z·g] / d phi_j = Cov(1[|z| = j], z·g)
    size = e.subsets.sum(1).astype(int)
    zg = e.subsets @ g.numpy()
    expected = np.array([(e.probs * (size == j) * (zg - e.probs @ zg)).sum() for j in range(n + 1)])
    np.testing.assert_allclose(gp.numpy(), expected, atol=1e-12)


def test_learning_the_count_prior():
    """A learned phi recovers the count law of data drawn from a known count-constrained distribution."""
    gen = torch.Generator().manual_seed(12)
    n = 8
    theta = torch.randn(n, generator=gen, dtype=torch.float64)
    true_phi = torch.tensor([-math.inf, 0.0, 2.0, 1.0, -1.0, -math.inf, -math.inf, -math.inf, -math.inf])
    data = ksubset.sample(theta, CountPotential(true_phi.double()), sample_shape=(4000,), generator=gen)
    phi = torch.zeros(n + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=0.1)
    for _ in range(300):
        loss = -ksubset.log_prob(theta, CountPotential(phi), data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = ksubset.count_distribution(theta, CountPotential(phi.detach()))
    empirical = torch.bincount(data.sum(-1).long(), minlength=n + 1).double() / len(data)
    torch.testing.assert_close(learned, empirical, atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", ["simple", "ste", "imle"])
def test_estimators_by_name(name):
    theta = torch.randn(4, 10, requires_grad=True)
    est = ksubset.estimators.get(name)
    z = est(theta, AtMost(3), generator=torch.Generator().manual_seed(0))
    assert ((z == 0) | (z == 1)).all() and (z.sum(-1) <= 3).all()
    z.backward(torch.randn(4, 10))
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


def test_score_function_and_unsupported_estimator():
    theta = torch.randn(10, dtype=torch.float64, requires_grad=True)
    est = ksubset.estimators.get("score_function", num_samples=4, baseline="leave_one_out")
    out = est(theta, Between(2, 4), lambda z: (z * torch.arange(10.0, dtype=z.dtype)).sum(-1))
    out.backward()
    assert torch.isfinite(theta.grad).all()
    with pytest.raises(ValueError, match="no count-constraint version"):
        ksubset.estimators.get("aimle")(theta, AtMost(2))


def test_imle_map_is_the_best_counts_top_set():
    theta = torch.tensor([3.0, 2.0, -0.5, -1.0, -4.0])
    z = ksubset.estimators.get("imle", noise_scale=1e-6)(theta, AtMost(4))  # ~no noise: the MAP
    assert z.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_distribution():
    gen = torch.Generator().manual_seed(13)
    theta = torch.randn(2, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    d = ksubset.CardinalitySubset(theta, AtMost(3))
    z = d.sample((100,), generator=gen)
    assert z.shape == (100, 2, 7) and (z.sum(-1) <= 3).all()
    e = enumerate_counts(theta[0].detach().numpy(), np.zeros(4))
    assert d.entropy()[0].item() == pytest.approx(e.entropy, abs=1e-12)
    np.testing.assert_allclose(d.mean[0].detach().numpy(), e.marginals, atol=1e-12)
    np.testing.assert_allclose(d.count_distribution()[0].detach().numpy(), e.count_law, atol=1e-12)
    r = d.rsample()
    r.sum().backward()
    assert theta.grad is not None
    assert d.expand((3, 2)).sample().shape == (3, 2, 7)
    q = ksubset.CardinalitySubset(torch.zeros(2, 7, dtype=torch.float64), AtMost(3))
    assert (torch.distributions.kl_divergence(d, q) >= 0).all()
    exact = ksubset.KSubset(theta.detach(), 2)
    assert torch.isinf(torch.distributions.kl_divergence(d, exact)).all()  # d puts mass on |z| != 2
    assert torch.isfinite(torch.distributions.kl_divergence(exact, d)).all()
    with pytest.raises(ValueError, match="allows no subset"):
        ksubset.CardinalitySubset(theta, Between(8, 9))


def test_layer_with_a_count_constraint_round_trips_its_state():
    layer = ksubset.nn.KSubsetLayer(AtMost(3))
    theta = torch.randn(5, 9, requires_grad=True)
    z = layer(theta)
    assert (z.sum(-1) <= 3).all()
    layer.eval()
    assert torch.equal(layer(theta), ksubset.mode(theta, AtMost(3)))
    other = ksubset.nn.KSubsetLayer(2)
    other.load_state_dict(layer.state_dict())
    assert other.k == AtMost(3)


def test_readme_beyond_k_examples_run():
    import contextlib
    import io
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = dict(re.findall(r"<!-- beyond-k: (\S+) -->\s*```python\n(.*?)```", text, re.S))
    assert set(blocks) == {"at-most", "learn-how-many", "inclusion"}, sorted(blocks)
    for name, code in blocks.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README beyond-k {name}", "exec"), {})
        if name == "learn-how-many":
            assert out.getvalue().strip() == "tensor(3)", out.getvalue()
