"""Tests for ksubset.estimators (issue 4). Oracles are brute-force enumerations written here, in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ksubset import core
from ksubset import estimators as E

N, K = 8, 3
HARD = ["simple", "simple_f", "simple_b", "ste", "st_relaxed_topk", "imle", "aimle"]
RELAXED = ["relaxed_topk"]


# ------------------------------------------------------------------------------------------------ oracles


def all_subsets(n: int, k: int) -> torch.Tensor:
    rows = []
    for c in itertools.combinations(range(n), k):
        z = [0.0] * n
        for i in c:
            z[i] = 1.0
        rows.append(z)
    return torch.tensor(rows, dtype=torch.float64)


def brute(theta: torch.Tensor, k: int):
    """Probabilities over all k-subsets, marginals and covariance of one row ``theta [n]`` (float64)."""
    Z = all_subsets(theta.shape[-1], k)
    w = Z @ theta.double()
    p = torch.softmax(w, 0)
    mu = p @ Z
    cov = (Z * p[:, None]).T @ Z - torch.outer(mu, mu)
    return Z, p, mu, cov


def brute_expectation(theta: torch.Tensor, k: int, f) -> torch.Tensor:
    Z, p, _, _ = brute(theta, k)
    return (p * f(Z)).sum()


def quadratic(b: torch.Tensor):
    return lambda z: ((z - b) ** 2).sum(-1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def k_of(name: str) -> int:
    return 1 if "gumbel" in name else K


def own_topk(keys: torch.Tensor, k: int) -> torch.Tensor:
    z = torch.zeros_like(keys)
    return z.scatter_(-1, keys.topk(k, dim=-1).indices, 1.0)


# ---------------------------------------------------------------------------------- outputs: hard / relaxed


@pytest.mark.parametrize("name", HARD + ["st_gumbel_softmax"])
def test_hard_estimators_output_exactly_k_ones(name):
    k = k_of(name)
    theta = torch.randn(32, N, dtype=torch.float64, generator=gen(1), requires_grad=True)
    z = E.get(name)(theta, k, generator=gen(2))
    assert z.shape == theta.shape and z.dtype == theta.dtype
    assert bool(((z == 0) | (z == 1)).all())
    assert bool((z.sum(-1) == k).all())
    z.backward(torch.randn(32, N, dtype=torch.float64, generator=gen(3)))
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())


@pytest.mark.parametrize("name", HARD + RELAXED)
def test_masks_and_per_row_k(name):
    theta = torch.randn(6, N, dtype=torch.float64, generator=gen(4), requires_grad=True)
    mask = torch.ones(6, N, dtype=torch.bool)
    mask[:, :2] = False
    mask[3, 5] = False
    k = torch.tensor([1, 2, 3, 4, 5, 6])[:, None].squeeze(-1).clamp_max(5)
    z = E.get(name)(theta, k, mask, generator=gen(5))
    assert torch.allclose(z.sum(-1), k.to(z.dtype))
    assert bool((z[~mask] == 0).all())
    z.backward(torch.randn(6, N, dtype=torch.float64, generator=gen(6)))
    assert bool((theta.grad[~mask] == 0).all()) and bool(torch.isfinite(theta.grad).all())


@pytest.mark.parametrize("name", HARD + RELAXED)
def test_forced_items(name):
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(7))
    theta[:, 0] = float("inf")
    theta[:, 1] = float("-inf")
    theta.requires_grad_()
    z = E.get(name)(theta, K, generator=gen(8))
    assert bool((z[:, 0] == 1).all()) and bool((z[:, 1] == 0).all())
    assert torch.allclose(z.sum(-1), torch.full((4,), float(K), dtype=torch.float64))
    z.backward(torch.randn(4, N, dtype=torch.float64, generator=gen(9)))
    assert bool(torch.isfinite(theta.grad).all()) and bool((theta.grad[:, :2] == 0).all())


@pytest.mark.parametrize("name", RELAXED + ["gumbel_softmax"])
def test_relaxed_estimators_sum_to_k(name):
    k = k_of(name)
    theta = torch.randn(32, N, dtype=torch.float64, generator=gen(10))
    for t in (0.1, 1.0, 5.0):
        hp = {"tau": t} if "gumbel" in name else {"t": t}
        y = E.get(name, **hp)(theta, k, generator=gen(11))
        assert bool((y >= 0).all())
        if "gumbel" in name:
            assert bool((y <= 1).all())
        assert torch.allclose(y.sum(-1), torch.full((32,), float(k), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("name", [n for n in E.available() if n != "score_function"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtype_is_kept(name, dtype):
    theta = torch.randn(3, N, generator=gen(12)).to(dtype).requires_grad_()
    z = E.get(name)(theta, k_of(name), generator=gen(13))
    assert z.dtype == dtype
    z.float().sum().backward()
    assert theta.grad.dtype == dtype


# ------------------------------------------------------------------------------------------------ SIMPLE


def test_simple_gradient_is_cov_times_g():
    theta = torch.randn(5, N, dtype=torch.float64, generator=gen(20), requires_grad=True)
    g = torch.randn(5, N, dtype=torch.float64, generator=gen(21))
    E.simple(theta, K, generator=gen(22)).backward(g)
    for r in range(5):
        _, _, _, cov = brute(theta[r].detach(), K)
        torch.testing.assert_close(theta.grad[r], cov @ g[r], rtol=1e-9, atol=1e-11)


def test_simple_k1_is_softmax_jacobian():
    theta = torch.randn(N, dtype=torch.float64, generator=gen(23), requires_grad=True)
    g = torch.randn(N, dtype=torch.float64, generator=gen(24))
    E.simple(theta, 1, generator=gen(25)).backward(g)
    s = torch.softmax(theta.detach(), 0)
    jac = torch.diag(s) - torch.outer(s, s)
    torch.testing.assert_close(theta.grad, jac @ g, rtol=1e-9, atol=1e-12)


def test_simple_b_backward_is_difference_of_marginals():
    theta = torch.randn(N, dtype=torch.float64, generator=gen(26), requires_grad=True)
    g = torch.randn(N, dtype=torch.float64, generator=gen(27))
    for scale in (False, True):
        theta.grad = None
        E.simple_b(theta, K, generator=gen(28), lam=2.5, scale=scale).backward(g)
        mu = brute(theta.detach(), K)[2]
        mu2 = brute(theta.detach() - 2.5 * g, K)[2]
        torch.testing.assert_close(theta.grad, (mu - mu2) / (2.5 if scale else 1.0))
    # with 1/lam scaling and a small lam, SIMPLE-B's backward tends to SIMPLE's Cov(z) g
    theta.grad = None
    E.simple_b(theta, K, generator=gen(28), lam=1e-5, scale=True).backward(g)
    torch.testing.assert_close(theta.grad, brute(theta.detach(), K)[3] @ g, rtol=1e-4, atol=1e-5)


def test_simple_f_backward_is_difference_of_exact_samples():
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(29), requires_grad=True)
    g = torch.randn(4, N, dtype=torch.float64, generator=gen(30))
    z = E.simple_f(theta, K, generator=gen(31), lam=2.5, scale=True)
    z.backward(g)
    g2 = gen(31)  # replay the generator: forward sample, then the backward's sample at theta - lam g
    z_ref = core.sample(theta.detach(), K, generator=g2)
    z2_ref = core.sample(theta.detach() - 2.5 * g, K, generator=g2)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(theta.grad, (z_ref - z2_ref) / 2.5)


# ---------------------------------------------------------------------------------------- score function

R = 20_000  # independent estimates, one per row of a batch
S = 4  # samples per estimate


@pytest.fixture(scope="module")
def sf_problem():
    theta = torch.randn(N, dtype=torch.float64, generator=gen(40))
    b = torch.rand(N, dtype=torch.float64, generator=gen(41))
    return theta, b


@pytest.fixture(scope="module")
def sf_estimates(sf_problem):
    theta, b = sf_problem
    out = {}
    for i, baseline in enumerate(("none", "mean", "leave_one_out")):
        logits = theta.expand(R, N).clone().requires_grad_()
        surrogate = E.score_function(logits, K, quadratic(b), num_samples=S, baseline=baseline,
                                     generator=gen(42 + i))
        assert surrogate.shape == (R,)
        surrogate.sum().backward()
        out[baseline] = logits.grad
    return out


@pytest.mark.parametrize("baseline", ["none", "mean", "leave_one_out"])
def test_score_function_is_unbiased(sf_problem, sf_estimates, baseline):
    theta, b = sf_problem
    est = sf_estimates[baseline]
    exact = E.exact_gradient(theta, K, quadratic(b))
    se = est.std(0) / math.sqrt(R)
    assert bool(((est.mean(0) - exact).abs() <= 4 * se).all()), (est.mean(0), exact, se)


def test_leave_one_out_has_lower_variance_than_none(sf_estimates):
    var = {name: est.var(0).sum().item() for name, est in sf_estimates.items()}
    assert var["leave_one_out"] < 0.5 * var["none"], var
    assert var["mean"] < var["none"], var


def test_score_function_value_and_checks(sf_problem):
    theta, b = sf_problem
    logits = theta.expand(3, N)
    v = E.score_function(logits, K, quadratic(b), num_samples=2, generator=gen(50))
    z = core.sample(logits, K, sample_shape=(2,), generator=gen(50))
    torch.testing.assert_close(v, quadratic(b)(z).mean(0))
    with pytest.raises(ValueError, match="one value per sample and row"):
        E.score_function(logits, K, lambda z: z, num_samples=2)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        E.score_function(logits, K, quadratic(b), num_samples=1, baseline="leave_one_out")
    with pytest.raises(ValueError, match="baseline"):
        E.score_function(logits, K, quadratic(b), baseline="median")


# -------------------------------------------------------------------------------------------- I-MLE/AIMLE


@pytest.mark.parametrize("noise", ["sum_of_gamma", "gumbel"])
@pytest.mark.parametrize("scale", [False, True])
def test_imle_gradient_is_difference_of_map_states_with_shared_noise(noise, scale):
    B, S_, lam, kappa, tau = 5, 3, 2.5, 3.0, 1.5
    theta = torch.randn(B, N, dtype=torch.float64, generator=gen(60), requires_grad=True)
    g = torch.randn(B, N, dtype=torch.float64, generator=gen(61))
    z = E.imle(theta, K, generator=gen(62), lam=lam, noise=noise, kappa=kappa, tau=tau, num_samples=S_,
               scale=scale)
    z.backward(g)
    # replay the documented draw: one noise tensor [num_samples, *batch, n] from the generator
    if noise == "gumbel":
        eps = tau * E.gumbel_noise((S_, B, N), dtype=torch.float64, generator=gen(62))
    else:
        eps = E.sum_of_gamma_noise((S_, B, N), kappa, s=10, tau=tau, dtype=torch.float64, generator=gen(62))
    th = theta.detach()
    map_theta = own_topk(th + eps, K)
    map_target = own_topk(th - lam * g + eps, K)
    torch.testing.assert_close(z, map_theta[0])
    expected = (map_theta - map_target).mean(0) / (lam if scale else 1.0)
    torch.testing.assert_close(theta.grad, expected)
    assert bool((expected != 0).any())


def test_aimle_central_differences_and_adaptation():
    B, lam = 6, 0.7
    theta = torch.randn(B, N, dtype=torch.float64, generator=gen(63), requires_grad=True)
    g = torch.randn(B, N, dtype=torch.float64, generator=gen(64))
    state = E.AIMLEState(beta=lam)
    z = E.aimle(theta, K, generator=gen(65), state=state, step=0.01, target=100.0)
    z.backward(g)
    eps = E.sum_of_gamma_noise((1, B, N), torch.full((B, 1), float(K), dtype=torch.float64), s=10,
                               dtype=torch.float64, generator=gen(65))[0]
    th = theta.detach()
    lam_r = lam * th.norm(dim=-1, keepdim=True) / g.norm(dim=-1, keepdim=True)
    hi, lo = own_topk(th + lam_r * g + eps, K), own_topk(th - lam_r * g + eps, K)
    torch.testing.assert_close(z, own_topk(th + eps, K))
    torch.testing.assert_close(theta.grad, (hi - lo) / 2 / lam_r)
    # the gradient is far sparser than the target density, so beta grows by one step
    assert state.beta == pytest.approx(lam + 0.01)
    nnz = float(((hi - lo) != 0).sum(-1).double().mean())
    assert state.nonzero_ema == pytest.approx(0.9 * 1.0 + 0.1 * nnz)
    # and shrinks when the target is below the density
    theta.grad = None
    E.aimle(theta, K, generator=gen(66), state=state, step=0.01, target=0.0).backward(g)
    assert state.beta == pytest.approx(lam)


def test_registry_aimle_keeps_state_across_calls():
    est = E.get("aimle", lam=1.0, step=0.5, target=100.0)
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(67), requires_grad=True)
    for i in range(3):
        est(theta, K, generator=gen(68 + i)).sum().backward()
    assert est.state.beta == pytest.approx(2.5)


def harmonic(s: int) -> float:
    return sum(1.0 / i for i in range(1, s + 1))


EULER_GAMMA = 0.5772156649015329


@pytest.mark.parametrize("kappa", [1, 5])
def test_sum_of_gamma_pieces_sum_to_the_finite_s_gumbel_moments(kappa):
    """kappa pieces sum to tau (sum_{i<=s} E_i/i - log s): mean H_s - log s, variance sum_{i<=s} 1/i^2."""
    n, s = 40_000, 10
    g = gen(70 + kappa)
    total = sum(E.sum_of_gamma_noise((n,), kappa, s=s, dtype=torch.float64, generator=g) for _ in range(kappa))
    mean, var = harmonic(s) - math.log(s), sum(1.0 / i**2 for i in range(1, s + 1))
    assert abs(total.mean().item() - mean) < 4 * math.sqrt(var / n)
    assert abs(total.var().item() - var) < 4 * var * math.sqrt(4.5 / n)  # Gumbel-like excess kurtosis 2.4
    # one piece alone is not Gumbel-like: its mean is (H_s - log s) / kappa
    one = E.sum_of_gamma_noise((n,), kappa, s=s, dtype=torch.float64, generator=g)
    assert abs(one.mean().item() - mean / kappa) < 4 * math.sqrt(var / n)


def test_sum_of_gamma_tends_to_gumbel_moments():
    """As s grows the kappa-piece sum has Gumbel(0, 1)'s mean (Euler's gamma) and variance (pi^2 / 6)."""
    for s in (10, 100, 10_000):  # the finite-s moments converge at rate 1/s
        mean, var = harmonic(s) - math.log(s), sum(1.0 / i**2 for i in range(1, s + 1))
        assert abs(mean - EULER_GAMMA) < 1 / s and abs(var - math.pi**2 / 6) < 1.01 / s
    n, s, kappa, tau = 20_000, 100, 2, 1.0
    g = gen(75)
    total = sum(E.sum_of_gamma_noise((n,), kappa, s=s, tau=tau, dtype=torch.float64, generator=g)
                for _ in range(kappa))
    v = math.pi**2 / 6
    assert abs(total.mean().item() - EULER_GAMMA) < 4 * math.sqrt(v / n) + 1 / s
    assert abs(total.var().item() - v) < 4 * v * math.sqrt(4.5 / n) + 1.01 / s
    # and the Gumbel noise itself
    G = E.gumbel_noise((n,), dtype=torch.float64, generator=g)
    assert abs(G.mean().item() - EULER_GAMMA) < 4 * math.sqrt(v / n)
    assert abs(G.var().item() - v) < 4 * v * math.sqrt(4.5 / n)


# ---------------------------------------------------------------------------------------- relaxed top-k


def test_relaxed_topk_tends_to_topk_of_the_same_perturbed_keys():
    theta = torch.randn(16, N, dtype=torch.float64, generator=gen(80))
    G = E.gumbel_noise((16, N), dtype=torch.float64, generator=gen(81))  # the draw relaxed_topk makes
    target = own_topk(theta + G, K)
    errors = [
        (E.relaxed_topk(theta, K, generator=gen(81), t=t) - target).abs().max().item()
        for t in (1.0, 0.1, 0.01, 0.001, 0.0001)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-6
    hard = E.st_relaxed_topk(theta, K, generator=gen(81), t=1.0)
    assert torch.equal(hard, target)


def test_gumbel_softmax_is_relaxed_topk_at_k1():
    theta = torch.randn(8, N, dtype=torch.float64, generator=gen(82))
    G = E.gumbel_noise((8, N), dtype=torch.float64, generator=gen(83))
    y = E.gumbel_softmax(theta, 1, generator=gen(83), tau=0.5)
    torch.testing.assert_close(y, torch.softmax((theta + G) / 0.5, -1))
    torch.testing.assert_close(y, E.relaxed_topk(theta, 1, generator=gen(83), t=0.5))
    hard = E.st_gumbel_softmax(theta, 1, generator=gen(83))
    assert torch.equal(hard, own_topk(theta + G, 1))
    for bad in (3, torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="k = 1 only"):
            E.gumbel_softmax(theta[:2], bad)
        with pytest.raises(ValueError, match="k = 1 only"):
            E.st_gumbel_softmax(theta[:2], bad)


@pytest.mark.parametrize("pair", [("relaxed_topk", "st_relaxed_topk", "t", K),
                                  ("gumbel_softmax", "st_gumbel_softmax", "tau", 1)])
def test_straight_through_relaxation_forward_hard_gradient_relaxed(pair):
    soft_name, st_name, temp, k = pair
    theta = torch.randn(8, N, dtype=torch.float64, generator=gen(84))
    g = torch.randn(8, N, dtype=torch.float64, generator=gen(85))
    a = theta.clone().requires_grad_()
    b = theta.clone().requires_grad_()
    soft = getattr(E, soft_name)(a, k, generator=gen(86), **{temp: 0.7})
    hard = getattr(E, st_name)(b, k, generator=gen(86), **{temp: 0.7})
    assert bool(((hard == 0) | (hard == 1)).all()) and bool((hard.sum(-1) == k).all())
    soft.backward(g)
    hard.backward(g)
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
    assert bool((a.grad != 0).any())


def test_relaxed_topk_gradient_matches_autograd_check():
    theta = torch.randn(2, 6, dtype=torch.float64, generator=gen(87), requires_grad=True)
    torch.autograd.gradcheck(lambda x: E.relaxed_topk(x, 2, generator=gen(88), t=0.8), (theta,))


# ---------------------------------------------------------------------------------------- exact gradient


def test_exact_gradient_matches_central_finite_differences():
    theta = torch.randn(N, dtype=torch.float64, generator=gen(90))
    b = torch.rand(N, dtype=torch.float64, generator=gen(91))
    w = torch.randn(N, dtype=torch.float64, generator=gen(92))

    def f(z):
        return ((z - b) ** 2).sum(-1) + torch.sin(z @ w) * (z[..., 0] + 0.5)

    grad = E.exact_gradient(theta, K, f)
    h = 1e-5
    fd = torch.zeros(N, dtype=torch.float64)
    for i in range(N):
        e = torch.zeros(N, dtype=torch.float64)
        e[i] = h
        fd[i] = (brute_expectation(theta + e, K, f) - brute_expectation(theta - e, K, f)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(E.exact_expectation(theta, K, f), brute_expectation(theta, K, f))


def test_exact_gradient_batched_masked_per_row_k():
    theta = torch.randn(3, N, dtype=torch.float64, generator=gen(93))
    b = torch.rand(N, dtype=torch.float64, generator=gen(94))
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[1, 2] = False
    k = torch.tensor([2, 3, 4])
    grad = E.exact_gradient(theta, k, quadratic(b), mask)
    for r in range(3):
        avail = mask[r].nonzero().flatten()
        sub = theta[r, avail]
        Z, p, mu, cov = brute(sub, int(k[r]))
        fz = ((Z - b[avail]) ** 2).sum(-1) + (b[~mask[r]] ** 2).sum()
        expected = torch.zeros(N, dtype=torch.float64)
        expected[avail] = (p * fz) @ (Z - mu)
        torch.testing.assert_close(grad[r], expected)


def test_exact_gradient_refuses_large_n():
    with pytest.raises(ValueError, match="n <= 20"):
        E.exact_gradient(torch.zeros(21), 3, lambda z: z.sum(-1))


# -------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_estimator():
    assert set(E.available()) == {
        "simple", "simple_f", "simple_b", "simple_fd", "ste", "gumbel_softmax", "st_gumbel_softmax", "relaxed_topk",
        "st_relaxed_topk", "imle", "aimle", "score_function",
    }
    assert E.hyperparameters("imle")["lam"] == 2.5
    assert E.hyperparameters("simple") == {}


def test_registry_rejects_unknown_names_and_hyperparameters():
    with pytest.raises(ValueError, match="available: .*'simple'.*'imle'"):
        E.get("gumbel_topk")
    with pytest.raises(ValueError, match=r"valid hyper-parameters: \['lam', 'noise', 'kappa'"):
        E.get("imle", temperature=1.0)
    with pytest.raises(ValueError, match="valid hyper-parameters: none"):
        E.get("simple", lam=1.0)


@pytest.mark.parametrize(
    "name, hp",
    [("relaxed_topk", {"t": 0}), ("gumbel_softmax", {"tau": -1.0}), ("imle", {"lam": float("nan")}),
     ("imle", {"noise": "uniform"}), ("imle", {"kappa": 0}), ("imle", {"num_samples": 0}),
     ("simple_f", {"lam": 0.0}), ("simple_b", {"s": 0}), ("aimle", {"momentum": 1.0}),
     ("score_function", {"baseline": "median"}), ("imle", {"scale": "yes"})],
)
def test_registry_rejects_bad_values(name, hp):
    with pytest.raises((ValueError, TypeError), match=list(hp)[0]):
        E.get(name, **hp)


def test_registry_binds_hyperparameters():
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(95))
    est = E.get("relaxed_topk", t=0.3)
    assert est.hyperparameters == {"t": 0.3} and est.pathwise
    torch.testing.assert_close(est(theta, K, generator=gen(96)), E.relaxed_topk(theta, K, generator=gen(96), t=0.3))
    with pytest.raises(TypeError, match="bound by get"):
        est(theta, K, t=1.0)
    sf = E.get("score_function", num_samples=2, baseline="leave_one_out")
    assert not sf.pathwise
    v = sf(theta, K, lambda z: z.sum(-1), generator=gen(97))
    assert v.shape == (4,)
