"""The closed forms for k ≤ 1 and k ≥ n − 1 (softmax, Gumbel-max, the categorical's cumulants) against the
enumeration oracle, the general engines and autograd's own derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import ksubset
from ksubset.core import use_engine
from ksubset.core._problem import prepare
from ksubset.core.engine import CLOSED_FORMS

from oracle import enumerate_row


def _cases():
    """(n, k, with a mask and a forced item) for every k the closed forms serve."""
    for n in (1, 2, 3, 6):
        for k in sorted({0, 1, n - 1, n}):
            yield n, k, False
            if n >= 3 and 1 <= k <= n - 1:
                yield n, k, True


def _problem(n: int, k: int, masked: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(3, n, generator=g, dtype=torch.float64) * 3
    mask = None
    if masked:  # row 0: one item masked out; row 1: one item forced (+inf); row 2: both
        mask = torch.ones(3, n, dtype=torch.bool)
        mask[0, -1] = mask[2, -1] = False
        theta[1, 0] = theta[2, 0] = float("inf")
        if k == n - 1:  # keep every row feasible: at most n - 1 available after the mask
            mask[2, -1] = True
    return theta, mask


@pytest.mark.parametrize(("n", "k", "masked"), list(_cases()))
def test_closed_form_is_chosen_and_matches_enumeration(n, k, masked):
    theta, mask = _problem(n, k, masked, seed=10 * n + k)
    assert prepare(theta, k, mask).engine in CLOSED_FORMS
    log_z = ksubset.log_partition(theta, k, mask)
    mu = ksubset.marginals(theta, k, mask)
    ent = ksubset.entropy(theta, k, mask)
    for r in range(3):
        ref = enumerate_row(theta[r].numpy(), k, None if mask is None else mask[r].numpy())
        # the library's log Z counts the forced items' logits as 0 as the oracle does (conditioned on)
        np.testing.assert_allclose(float(log_z[r]), ref.log_z, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mu[r].numpy(), ref.marginals, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(float(ent[r]), ref.entropy, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(("n", "k", "masked"), list(_cases()))
def test_closed_form_covariance_products_match_enumeration(n, k, masked):
    theta, mask = _problem(n, k, masked, seed=7 * n + k)
    theta.requires_grad_(True)
    v = torch.randn(3, n, dtype=torch.float64)
    (jvp,) = torch.autograd.grad((ksubset.marginals(theta, k, mask) * v).sum(), theta)
    for r in range(3):
        ref = enumerate_row(theta[r].detach().numpy(), k, None if mask is None else mask[r].numpy())
        free = np.isfinite(theta[r].detach().numpy()) & (True if mask is None else mask[r].numpy())
        expect = np.where(free, ref.covariance @ np.where(free, v[r].numpy(), 0.0), 0.0)
        np.testing.assert_allclose(jvp[r].numpy(), expect, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("k", [1, 5])
def test_closed_form_second_and_third_derivatives_match_autograd_checks(k):
    theta = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ksubset.log_partition(t, k), (theta,))
    assert torch.autograd.gradgradcheck(lambda t: ksubset.log_partition(t, k), (theta,))
    assert torch.autograd.gradgradcheck(lambda t: ksubset.marginals(t, k), (theta,))
    assert torch.autograd.gradgradcheck(lambda t: ksubset.entropy(t, k), (theta,))


@pytest.mark.parametrize("k", [1, 5])
def test_closed_form_hessians_equal_the_general_engines(k):
    theta = torch.randn(2, 6, dtype=torch.float64)

    def f(t):
        return ksubset.entropy(t, k).sum() + (ksubset.marginals(t, k) ** 2).sum()

    h = torch.func.hessian(f)(theta)
    with use_engine("tree"):
        h_tree = torch.func.hessian(f)(theta)
    torch.testing.assert_close(h, h_tree, rtol=1e-10, atol=1e-12)


def test_closed_form_keeps_tiny_marginals_of_all_but_one_rows():
    # choosing 2 of 3: the item at -600 is left out except with probability ~ 2 exp(-600) (about 5e-261)
    theta = torch.tensor([[-600.0, 0.0, 0.3]], dtype=torch.float64)
    mu = ksubset.marginals(theta, 2)
    with use_engine("reference"):
        ref = ksubset.marginals(theta, 2)
    assert float(ref[0, 0]) > 0
    np.testing.assert_allclose(mu.numpy(), ref.numpy(), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 4])
def test_closed_form_samples_follow_the_exact_law(k):
    theta = torch.tensor([[1.0, -0.5, 0.3, 2.0, -1.2]], dtype=torch.float64)
    z = ksubset.sample(theta, k, sample_shape=(40000,), generator=torch.Generator().manual_seed(3))
    assert (z.sum(-1) == k).all()
    ref = enumerate_row(theta[0].numpy(), k)
    index = {tuple(s.astype(int)): i for i, s in enumerate(ref.subsets)}
    counts = np.zeros(len(ref.subsets))
    for row in z[:, 0].to(torch.int64).numpy():
        counts[index[tuple(row)]] += 1
    assert stats.chisquare(counts, ref.probs * counts.sum()).pvalue > 1e-4


def test_closed_form_is_only_chosen_for_a_python_int_k_without_a_forced_engine():
    theta = torch.randn(4, 6)
    assert prepare(theta, 1).engine in CLOSED_FORMS
    assert prepare(theta, 5).engine in CLOSED_FORMS
    assert prepare(theta, 2).engine not in CLOSED_FORMS
    assert prepare(theta, torch.ones(4, dtype=torch.int64)).engine not in CLOSED_FORMS
    with use_engine("tree"):
        assert prepare(theta, 1).engine == "tree"


def test_closed_form_simple_and_layer_run_compiled_and_vmapped():
    x = torch.randn(8, 5, requires_grad=True)
    compiled = torch.compile(lambda t: ksubset.simple(t, 1))
    z = compiled(x)
    assert (z.sum(-1) == 1).all()
    z.sum().backward()
    mu = torch.func.vmap(lambda t: ksubset.marginals(t, 4))(x.detach())
    torch.testing.assert_close(mu, 1 - torch.softmax(-x.detach(), -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", ["one", "all_but_one"])
def test_closed_form_agrees_with_the_general_engine_at_the_extremes_of_the_float_range(dtype, which):
    fi = torch.finfo(dtype)
    rows = torch.tensor([
        [fi.max, 0.0, 1.0, fi.min, -3.0],  # one item beyond the range above, one below
        [1e30, 1e30, 0.5, -2.0, 1e-30],  # a tie of huge logits
        [0.3, fi.min, fi.min, -1.0, 2.0],  # finfo.min as a mask
        [-1e30, 1e30, 1e-30, -1e-30, 0.0],
        [20.0, -15.0, 3.0, 1e4, -1e4],
    ], dtype=dtype)
    k = 1 if which == "one" else rows.shape[-1] - 1
    got = [ksubset.log_partition(rows, k), ksubset.marginals(rows, k), ksubset.entropy(rows, k)]
    with use_engine("tree"):
        want = [ksubset.log_partition(rows, k), ksubset.marginals(rows, k), ksubset.entropy(rows, k)]
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=4 * fi.eps, atol=4 * fi.eps)
    assert (ksubset.entropy(rows, k) >= 0).all()
