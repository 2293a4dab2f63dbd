"""Tests for ksubset.estimators against the enumeration oracle (tests/oracle.py), in float64.

Tests whose estimator runs an exact engine (sampling, marginals, log-probabilities) take the ``engine`` fixture
and run once per engine; the perturb-and-MAP and relaxation tests use only ``mode``/``prepare``, which no engine
changes.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch

from ksubset import AtMost, core
from ksubset import estimators as E

from oracle import enumerate_row, expectation, expected_gradient, topk_indicator

N, K = 8, 3
HARD = ["simple", "simple_f", "simple_b", "ste", "st_relaxed_topk", "imle", "aimle"]
RELAXED = ["relaxed_topk"]
ENGINES = core.available_engines()


# ------------------------------------------------------------------------------------------------ helpers


def row(theta: torch.Tensor, k: int, mask: torch.Tensor | None = None):
    """The oracle's enumeration of one row (a torch tensor)."""
    return enumerate_row(theta.detach().numpy(), int(k), None if mask is None else mask.numpy())


def on_numpy(f):
    """``f`` (torch ``z [S, n]`` → ``[S]``) as a function of numpy subsets, for the oracle."""
    return lambda Z: f(torch.from_numpy(Z)).numpy()


def quadratic(b: torch.Tensor):
    return lambda z: ((z - b) ** 2).sum(-1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def k_of(name: str) -> int:
    return 1 if "gumbel" in name else K


def own_topk(keys: torch.Tensor, k: int) -> torch.Tensor:
    return torch.from_numpy(topk_indicator(keys.detach().numpy(), k)).to(keys.dtype)


# ---------------------------------------------------------------------------------- outputs: hard / relaxed


@pytest.mark.parametrize("name", HARD + ["st_gumbel_softmax"])
def test_hard_estimators_output_exactly_k_ones(name, engine):
    k = k_of(name)
    theta = torch.randn(32, N, dtype=torch.float64, generator=gen(1), requires_grad=True)
    z = E.get(name)(theta, k, generator=gen(2))
    assert z.shape == theta.shape and z.dtype == theta.dtype
    assert bool(((z == 0) | (z == 1)).all())
    assert bool((z.sum(-1) == k).all())
    z.backward(torch.randn(32, N, dtype=torch.float64, generator=gen(3)))
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())


@pytest.mark.parametrize("name", HARD + RELAXED)
def test_masks_and_per_row_k(name, engine):
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
def test_forced_items(name, engine):
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
        y = E.get(name, temperature=t)(theta, k, generator=gen(11))
        assert bool((y >= 0).all())
        if "gumbel" in name:
            assert bool((y <= 1).all())
        assert torch.allclose(y.sum(-1), torch.full((32,), float(k), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("name", [n for n in E.available() if n != "score_function"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtype_is_kept(name, dtype, engine):
    theta = torch.randn(3, N, generator=gen(12)).to(dtype).requires_grad_()
    z = E.get(name)(theta, k_of(name), generator=gen(13))
    assert z.dtype == dtype
    z.float().sum().backward()
    assert theta.grad.dtype == dtype


# ------------------------------------------------------------------------------------------------ SIMPLE


def test_simple_gradient_is_cov_times_g(engine):
    theta = torch.randn(5, N, dtype=torch.float64, generator=gen(20), requires_grad=True)
    g = torch.randn(5, N, dtype=torch.float64, generator=gen(21))
    E.simple(theta, K, generator=gen(22)).backward(g)
    for r in range(5):
        cov = torch.from_numpy(row(theta[r], K).covariance)
        torch.testing.assert_close(theta.grad[r], cov @ g[r], rtol=1e-9, atol=1e-11)


def test_simple_k1_is_softmax_jacobian(engine):
    theta = torch.randn(N, dtype=torch.float64, generator=gen(23), requires_grad=True)
    g = torch.randn(N, dtype=torch.float64, generator=gen(24))
    E.simple(theta, 1, generator=gen(25)).backward(g)
    s = torch.softmax(theta.detach(), 0)
    jac = torch.diag(s) - torch.outer(s, s)
    torch.testing.assert_close(theta.grad, jac @ g, rtol=1e-9, atol=1e-12)


def test_simple_b_backward_is_difference_of_marginals(engine):
    theta = torch.randn(N, dtype=torch.float64, generator=gen(26), requires_grad=True)
    g = torch.randn(N, dtype=torch.float64, generator=gen(27))
    for scale in (False, True):
        theta.grad = None
        E.simple_b(theta, K, generator=gen(28), lam=2.5, scale=scale).backward(g)
        mu = torch.from_numpy(row(theta, K).marginals)
        mu2 = torch.from_numpy(row(theta.detach() - 2.5 * g, K).marginals)
        torch.testing.assert_close(theta.grad, (mu - mu2) / (2.5 if scale else 1.0))
    # with 1/lam scaling and a small lam, SIMPLE-B's backward tends to SIMPLE's Cov(z) g
    theta.grad = None
    E.simple_b(theta, K, generator=gen(28), lam=1e-5, scale=True).backward(g)
    cov = torch.from_numpy(row(theta, K).covariance)
    torch.testing.assert_close(theta.grad, cov @ g, rtol=1e-4, atol=1e-5)


def test_simple_f_backward_is_difference_of_exact_samples(engine):
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


@pytest.fixture(scope="module", params=ENGINES)
def sf_estimates(request, sf_problem):
    """R independent estimates per baseline, drawn with each engine (module-scoped: drawn once per engine)."""
    theta, b = sf_problem
    out = {}
    with core.use_engine(request.param):
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
    exact = torch.from_numpy(expected_gradient(theta.numpy(), K, on_numpy(quadratic(b))))
    se = est.std(0) / math.sqrt(R)
    assert bool(((est.mean(0) - exact).abs() <= 4 * se).all()), (est.mean(0), exact, se)


def test_leave_one_out_has_lower_variance_than_none(sf_estimates):
    var = {name: est.var(0).sum().item() for name, est in sf_estimates.items()}
    assert var["leave_one_out"] < 0.5 * var["none"], var
    assert var["mean"] < var["none"], var


def test_score_function_value_and_checks(sf_problem, engine):
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
    B, S_, lam, kappa, scale_ = 5, 3, 2.5, 3.0, 1.5
    theta = torch.randn(B, N, dtype=torch.float64, generator=gen(60), requires_grad=True)
    g = torch.randn(B, N, dtype=torch.float64, generator=gen(61))
    z = E.imle(theta, K, generator=gen(62), lam=lam, noise=noise, kappa=kappa, noise_scale=scale_,
               num_samples=S_, scale=scale)
    z.backward(g)
    # replay the documented draw: one noise tensor [num_samples, *batch, n] from the generator
    if noise == "gumbel":
        eps = scale_ * E.gumbel_noise((S_, B, N), dtype=torch.float64, generator=gen(62))
    else:
        eps = E.sum_of_gamma_noise((S_, B, N), kappa, s=10, scale=scale_, dtype=torch.float64, generator=gen(62))
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
    est = E.get("aimle", initial_beta=1.0, step=0.5, target=100.0)
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(67), requires_grad=True)
    for i in range(3):
        est(theta, K, generator=gen(68 + i)).sum().backward()
    assert est.state.beta == pytest.approx(2.5)


def harmonic(s: int) -> float:
    return sum(1.0 / i for i in range(1, s + 1))


EULER_GAMMA = 0.5772156649015329


@pytest.mark.parametrize("kappa", [1, 5])
def test_sum_of_gamma_pieces_sum_to_the_finite_s_gumbel_moments(kappa):
    """kappa pieces sum to scale (sum_{i<=s} E_i/i - log s): mean H_s - log s, variance sum_{i<=s} 1/i^2."""
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
    n, s, kappa = 20_000, 100, 2
    g = gen(75)
    total = sum(E.sum_of_gamma_noise((n,), kappa, s=s, scale=1.0, dtype=torch.float64, generator=g)
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
        (E.relaxed_topk(theta, K, generator=gen(81), temperature=t) - target).abs().max().item()
        for t in (1.0, 0.1, 0.01, 0.001, 0.0001)
    ]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-6
    hard = E.st_relaxed_topk(theta, K, generator=gen(81), temperature=1.0)
    assert torch.equal(hard, target)


def test_gumbel_softmax_is_relaxed_topk_at_k1():
    theta = torch.randn(8, N, dtype=torch.float64, generator=gen(82))
    G = E.gumbel_noise((8, N), dtype=torch.float64, generator=gen(83))
    y = E.gumbel_softmax(theta, 1, generator=gen(83), temperature=0.5)
    torch.testing.assert_close(y, torch.softmax((theta + G) / 0.5, -1))
    torch.testing.assert_close(y, E.relaxed_topk(theta, 1, generator=gen(83), temperature=0.5))
    hard = E.st_gumbel_softmax(theta, 1, generator=gen(83))
    assert torch.equal(hard, own_topk(theta + G, 1))
    for bad in (3, torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="k = 1 only"):
            E.gumbel_softmax(theta[:2], bad)
        with pytest.raises(ValueError, match="k = 1 only"):
            E.st_gumbel_softmax(theta[:2], bad)


@pytest.mark.parametrize("pair", [("relaxed_topk", "st_relaxed_topk", K), ("gumbel_softmax", "st_gumbel_softmax", 1)])
def test_straight_through_relaxation_forward_hard_gradient_relaxed(pair):
    soft_name, st_name, k = pair
    theta = torch.randn(8, N, dtype=torch.float64, generator=gen(84))
    g = torch.randn(8, N, dtype=torch.float64, generator=gen(85))
    a = theta.clone().requires_grad_()
    b = theta.clone().requires_grad_()
    soft = getattr(E, soft_name)(a, k, generator=gen(86), temperature=0.7)
    hard = getattr(E, st_name)(b, k, generator=gen(86), temperature=0.7)
    assert bool(((hard == 0) | (hard == 1)).all()) and bool((hard.sum(-1) == k).all())
    soft.backward(g)
    hard.backward(g)
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
    assert bool((a.grad != 0).any())


def test_relaxed_topk_gradient_matches_autograd_check():
    theta = torch.randn(2, 6, dtype=torch.float64, generator=gen(87), requires_grad=True)
    torch.autograd.gradcheck(lambda x: E.relaxed_topk(x, 2, generator=gen(88), temperature=0.8), (theta,))


# ---------------------------------------------------------------------------------------- exact gradient


def test_exact_gradient_matches_central_finite_differences(engine):
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
        fd[i] = (expectation((theta + e).numpy(), K, on_numpy(f)) - expectation((theta - e).numpy(), K, on_numpy(f)))
        fd[i] /= 2 * h
    torch.testing.assert_close(grad, fd, rtol=1e-7, atol=1e-9)
    exact = torch.tensor(expectation(theta.numpy(), K, on_numpy(f)), dtype=torch.float64)
    torch.testing.assert_close(E.exact_expectation(theta, K, f), exact)


def test_exact_gradient_batched_masked_per_row_k(engine):
    theta = torch.randn(3, N, dtype=torch.float64, generator=gen(93))
    b = torch.rand(N, dtype=torch.float64, generator=gen(94))
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[1, 2] = False
    k = torch.tensor([2, 3, 4])
    grad = E.exact_gradient(theta, k, quadratic(b), mask)
    for r in range(3):
        expected = expected_gradient(theta[r].numpy(), int(k[r]), on_numpy(quadratic(b)), mask[r].numpy())
        torch.testing.assert_close(grad[r], torch.from_numpy(expected))


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
    [("relaxed_topk", {"temperature": 0}), ("gumbel_softmax", {"temperature": -1.0}), ("imle", {"lam": float("nan")}),
     ("imle", {"noise": "uniform"}), ("imle", {"kappa": 0}), ("imle", {"num_samples": 0}),
     ("simple_f", {"lam": 0.0}), ("simple_b", {"s": 0}), ("aimle", {"momentum": 1.0}),
     ("imle", {"noise_scale": 0.0}), ("aimle", {"initial_beta": -1.0}),
     ("score_function", {"baseline": "median"}), ("imle", {"scale": "yes"})],
)
def test_registry_rejects_bad_values(name, hp):
    with pytest.raises((ValueError, TypeError), match=list(hp)[0]):
        E.get(name, **hp)


def test_registry_binds_hyperparameters():
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(95))
    est = E.get("relaxed_topk", temperature=0.3)
    assert est.hyperparameters == {"temperature": 0.3} and est.pathwise
    expected = E.relaxed_topk(theta, K, generator=gen(96), temperature=0.3)
    torch.testing.assert_close(est(theta, K, generator=gen(96)), expected)
    with pytest.raises(TypeError, match="bound by get"):
        est(theta, K, temperature=1.0)
    sf = E.get("score_function", num_samples=2, baseline="leave_one_out")
    assert not sf.pathwise
    v = sf(theta, K, lambda z: z.sum(-1), generator=gen(97))
    assert v.shape == (4,)


# ------------------------------------------------------------------------------ renamed hyper-parameters

# (estimator, old name, new name, a value far from the default, k)
RENAMED = [
    ("relaxed_topk", "t", "temperature", 0.2, K),
    ("st_relaxed_topk", "t", "temperature", 0.2, K),
    ("gumbel_softmax", "tau", "temperature", 0.2, 1),
    ("st_gumbel_softmax", "tau", "temperature", 0.2, 1),
    ("imle", "tau", "noise_scale", 3.0, K),
    ("aimle", "tau", "noise_scale", 3.0, K),
    ("aimle", "lam", "initial_beta", 0.05, K),
    ("simple_b", "tau", "noise_scale", 3.0, K),
]


def _run(fn, hp: dict, k: int, seed: int = 100):
    """Forward value and gradient of ``fn(theta, k, **hp)`` on fixed logits, noise and incoming gradient."""
    theta = torch.randn(16, N, dtype=torch.float64, generator=gen(seed), requires_grad=True)
    z = fn(theta, k, generator=gen(seed + 1), **hp)
    z.backward(torch.randn(16, N, dtype=torch.float64, generator=gen(seed + 2)))
    return z.detach(), theta.grad


def _no_warning(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("name, old, new, value, k", RENAMED)
def test_old_name_warns_and_gives_the_new_names_result(name, old, new, value, k):
    fn = getattr(E, name)
    with pytest.warns(DeprecationWarning, match=rf"{name}: .*'{old}' is deprecated.*use '{new}'") as record:
        z_old, g_old = _run(fn, {old: value}, k)
    assert [w.filename for w in record] == [__file__]  # the warning points at the caller
    z_new, g_new = _no_warning(_run, fn, {new: value}, k)
    assert torch.equal(z_old, z_new) and torch.equal(g_old, g_new)
    # the old name's value was used, not dropped for the default
    z_def, g_def = _no_warning(_run, fn, {}, k)
    assert not (torch.equal(z_old, z_def) and torch.equal(g_old, g_def))


@pytest.mark.parametrize("name, old, new, value, k", RENAMED)
def test_registry_accepts_the_old_name_with_a_warning(name, old, new, value, k):
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated.*use '{new}'") as record:
        est_old = E.get(name, **{old: value})
    assert [w.filename for w in record] == [__file__]
    est_new = _no_warning(E.get, name, **{new: value})
    assert est_old.hyperparameters == est_new.hyperparameters and old not in est_old.hyperparameters
    z_old, g_old = _no_warning(_run, est_old, {}, k)
    z_new, g_new = _run(est_new, {}, k)
    assert torch.equal(z_old, z_new) and torch.equal(g_old, g_new)
    if name == "aimle" and new == "initial_beta":
        assert est_old.state == est_new.state and est_old.state.beta != E.AIMLEState().beta


@pytest.mark.parametrize("name, old, new, value, k", RENAMED)
def test_old_and_new_name_together_are_rejected(name, old, new, value, k):
    with pytest.raises(TypeError, match=rf"both '{old}' \(deprecated\) and '{new}'"):
        getattr(E, name)(torch.zeros(2, N), k, **{old: value, new: value})
    with pytest.raises(TypeError, match=rf"both '{old}' \(deprecated\) and '{new}'"):
        E.get(name, **{old: value, new: value})


def test_only_the_new_names_are_listed():
    old_names = {"t", "tau"}
    for name in E.available():
        assert not old_names & set(E.hyperparameters(name)), name
    assert "initial_beta" in E.hyperparameters("aimle") and "lam" not in E.hyperparameters("aimle")
    assert "lam" in E.hyperparameters("imle")  # I-MLE's lam is a perturbation size: not renamed


def test_count_constrained_imle_takes_the_new_noise_name():
    theta = torch.randn(4, N, dtype=torch.float64, generator=gen(110))
    counts = E.cardinality.SUPPORTED  # the count-constraint versions share the hyper-parameters
    with pytest.warns(DeprecationWarning, match="'tau' is deprecated.*'noise_scale'"):
        z_old = counts["imle"](theta, AtMost(4), generator=gen(111), tau=2.0)
    z_new = _no_warning(counts["imle"], theta, AtMost(4), generator=gen(111), noise_scale=2.0)
    assert torch.equal(z_old, z_new)
    z_reg = _no_warning(E.get("imle", noise_scale=2.0), theta, AtMost(4), generator=gen(111))
    assert torch.equal(z_reg, z_new)
    with pytest.raises(ValueError, match="imle: noise_scale must be a positive"):
        counts["imle"](theta, AtMost(4), noise_scale=-1.0)


def test_sum_of_gamma_noise_scale_was_tau():
    with pytest.warns(DeprecationWarning, match="'tau' is deprecated.*'scale'"):
        old = E.sum_of_gamma_noise((50,), 3.0, tau=2.0, dtype=torch.float64, generator=gen(120))
    new = _no_warning(E.sum_of_gamma_noise, (50,), 3.0, scale=2.0, dtype=torch.float64, generator=gen(120))
    unit = E.sum_of_gamma_noise((50,), 3.0, dtype=torch.float64, generator=gen(120))
    assert torch.equal(old, new)
    torch.testing.assert_close(new, 2.0 * unit)


# ------------------------------------------------------------------------------------------ module layout


def test_public_names_are_the_functions_not_modules():
    for name in E.available():
        fn = getattr(E, name)
        assert inspect.isfunction(fn), (name, fn)
        # no submodule of the same name shadows (or is shadowed by) the function
        assert importlib.util.find_spec(f"ksubset.estimators.{name}") is None, name
    from ksubset.estimators import simple

    assert simple is E.simple and callable(simple)


def test_estimator_modules_import_no_private_names_of_each_other():
    """Shared helpers come from _common (public names there); ``from . import _module`` is only in __init__."""
    package = Path(E.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            names = [a.name for a in node.names]
            if node.module is None:  # from . import x: registration imports of modules
                assert path.name == "__init__.py", (path.name, names)
                continue
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.name} imports private {private} from .{node.module}"


def test_registry_refuses_a_second_registration_and_unknown_count_versions():
    from ksubset.estimators import _registry

    with pytest.raises(ValueError, match="'simple' is already registered"):
        _registry.register("simple", E.simple)
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        _registry.register_counts("nope", E.simple)
    assert E.available()[0] == "simple"  # nothing was added or replaced
    # every estimator is registered by the private module that defines it
    for name in E.available():
        assert getattr(E, name).__module__.startswith("ksubset.estimators._"), name
