"""The VAE experiment's KL terms against independent oracles: enumeration and a transcription of the original."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import ksubset
from ksubset.experiments.vae import methods
from ksubset.experiments.vae.official_kl import official_entropy, official_kl


def _subsets(n: int, k: int) -> torch.Tensor:
    idx = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long).reshape(-1, k)
    return torch.zeros(idx.shape[0], n, dtype=torch.float64).scatter_(1, idx, 1.0)


def _enumerated_q(theta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    Z = _subsets(theta.shape[-1], k)
    return Z, torch.softmax(Z @ theta, 0)


@pytest.mark.parametrize("n,k", [(6, 3), (8, 2), (20, 10)])
def test_kl_uniform_equals_the_enumerated_kl(n, k):
    theta = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n * 10 + k)) * 2
    _, q = _enumerated_q(theta, k)
    kl = float((q * (q.log() + math.log(math.comb(n, k)))).sum())
    assert float(ksubset.kl_uniform(theta, k)) == pytest.approx(kl, abs=1e-9)


def test_monte_carlo_kl_is_unbiased_in_value_and_gradient():
    n, k, N = 8, 3, 40_000
    theta = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    exact = ksubset.kl_uniform(theta, k)
    exact_grad = torch.autograd.grad(exact, theta)[0]
    logits = theta.detach().expand(N, 1, n).clone().requires_grad_()
    z = ksubset.simple(logits, k, generator=torch.Generator().manual_seed(0))
    mc = methods._mc_kl(logits, k, z)  # [N] (one block per row)
    # its value equals log q(z) - log p(z) from the public log_prob
    assert torch.allclose(mc, ksubset.log_prob(logits, k, z).sum(-1) + math.log(math.comb(n, k)))
    se = mc.std() / math.sqrt(N)
    assert abs(float(mc.mean() - exact.detach())) < 4 * float(se)
    (grad,) = torch.autograd.grad(mc.sum(), logits)
    g = grad[:, 0, :]
    assert ((g.mean(0) - exact_grad).abs() <= 4 * g.std(0) / math.sqrt(N) + 1e-12).all()


def _transcription(p: list[float], k: int, start: int) -> float:
    """The original recurrence, written out with Python floats (probabilities, not logs), 1-based items.

    ``a[i][l] = Pr(z_1 + … + z_i = l)`` for independent Bernoulli(p_i); ``pi = p_i a[i-1][l-1] / a[i][l]``;
    ``H_i(l) = h(pi) + pi H_{i-1}(l-1) + (1 - pi) H_{i-1}(l)`` for ``i = start..n`` from ``H = 0``.
    """
    n = len(p)
    a = [[0.0] * (k + 1) for _ in range(n + 1)]
    a[0][0] = 1.0
    for i in range(1, n + 1):
        for m in range(k + 1):
            a[i][m] = a[i - 1][m] * (1 - p[i - 1]) + (a[i - 1][m - 1] * p[i - 1] if m > 0 else 0.0)
    H = [0.0] * (k + 1)
    for i in range(start, n + 1):
        new = [0.0] * (k + 1)
        for m in range(k + 1):
            if a[i][m] == 0:
                continue
            pi = p[i - 1] * a[i - 1][m - 1] / a[i][m] if m > 0 else 0.0
            h = -sum(x * math.log(x) for x in (pi, 1 - pi) if x > 0)
            new[m] = h + pi * (H[m - 1] if m > 0 else 0.0) + (1 - pi) * H[m]
        H = new
    return H[k]


@pytest.mark.parametrize("n,k,start", [(20, 10, 10), (8, 3, 4), (7, 2, 1), (12, 5, 12)])
def test_official_entropy_equals_a_direct_transcription_and_the_enumerated_tail_entropy(n, k, start):
    theta = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n + k + start)) * 1.5
    ours = official_entropy(theta, k, start)
    for row in range(3):
        p = torch.sigmoid(theta[row]).tolist()
        assert float(ours[row]) == pytest.approx(_transcription(p, k, start), rel=1e-10, abs=1e-12)
    if n <= 12:  # the chain rule: the truncated recurrence is the entropy of the items start..n
        for row in range(3):
            Z, q = _enumerated_q(theta[row], k)
            tails: dict[tuple, float] = {}
            for z, qz in zip(Z, q.tolist(), strict=True):
                key = tuple(z[start - 1 :].tolist())
                tails[key] = tails.get(key, 0.0) + qz
            h_tail = -sum(v * math.log(v) for v in tails.values() if v > 0)
            assert float(ours[row]) == pytest.approx(h_tail, abs=1e-10)


def test_official_kl_is_the_truncated_one_and_the_full_start_is_exact():
    theta = torch.randn(50, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(official_entropy(theta, 10, 1), ksubset.entropy(theta, 10), atol=1e-10)
    off = official_kl(theta, 10)
    assert torch.allclose(off, math.log(math.comb(20, 10)) - official_entropy(theta, 10).clamp_min(0))
    assert (off > ksubset.kl_uniform(theta, 10) + 1).all()  # nine items ignored: a much larger KL


def test_official_kl_gradient_is_finite_and_correct():
    theta = (torch.randn(2, 3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3)
    assert torch.autograd.gradcheck(lambda t: official_entropy(t, 4, 3), (theta.requires_grad_(),))
    extreme = torch.tensor([[40.0, -40.0] * 10, [0.0] * 20], requires_grad=True)
    official_kl(extreme, 10).sum().backward()
    assert torch.isfinite(extreme.grad).all()


def test_official_entropy_rejects_bad_arguments():
    with pytest.raises(ValueError, match="start"):
        official_entropy(torch.zeros(5), 2, start=6)
    with pytest.raises(ValueError, match="k must be"):
        official_entropy(torch.zeros(5), 6, start=1)
