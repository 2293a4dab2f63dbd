"""Bad input raises a clear error naming the argument (and the row where rows differ)."""

from __future__ import annotations

import pytest
import torch

import ksubset

FUNCS = {
    "log_partition": lambda t, k, m=None: ksubset.log_partition(t, k, m),
    "marginals": lambda t, k, m=None: ksubset.marginals(t, k, m),
    "sample": lambda t, k, m=None: ksubset.sample(t, k, m),
    "entropy": lambda t, k, m=None: ksubset.entropy(t, k, m),
    "mode": lambda t, k, m=None: ksubset.mode(t, k, m),
    "simple": lambda t, k, m=None: ksubset.simple(t, k, m),
    "kl_uniform": lambda t, k, m=None: ksubset.kl_uniform(t, k, m),
    "KSubset": lambda t, k, m=None: ksubset.KSubset(t, k, m),
}


@pytest.mark.parametrize("name", list(FUNCS))
def test_bad_inputs(name):
    f = FUNCS[name]
    t = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"k must be >= 0"):
        f(t, -1)
    with pytest.raises(ValueError, match=r"k=6 is larger than the number of available items \(5\)"):
        f(t, 6)
    with pytest.raises(ValueError, match=r"k=3 is larger than the number of available items \(2\) in row \(1,\)"):
        m = torch.ones(3, 5, dtype=torch.bool)
        m[1, :3] = False
        f(t, 3, m)
    with pytest.raises(ValueError, match=r"in row \(2,\)"):
        t2 = t.clone()
        t2[2, :4] = float("-inf")
        f(t2, 2)
    with pytest.raises(ValueError, match=r"3 \+inf entries \(forced items\) in row \(0,\), more than k=2"):
        t2 = t.clone()
        t2[0, :3] = float("inf")
        f(t2, 2)
    with pytest.raises(TypeError, match="k must be an int or an integer tensor"):
        f(t, 2.0)
    with pytest.raises(TypeError, match="k must be an int or an integer tensor"):
        f(t, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="logits contains NaN in row \\(1,\\)"):
        t2 = t.clone()
        t2[1, 3] = float("nan")
        f(t2, 2)
    with pytest.raises(TypeError, match="floating-point dtype"):
        f(torch.arange(5), 2)
    with pytest.raises(ValueError, match="at least one dimension"):
        f(torch.tensor(1.0), 0)
    with pytest.raises(ValueError, match="no items: its last dimension is 0"):
        f(torch.zeros(3, 0), 0)
    with pytest.raises(ValueError, match="mask of shape"):
        f(t, 2, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        f(t, 2, torch.ones(3, 5))
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        f([1.0, 2.0], 1)
    with pytest.raises(ValueError, match="k of shape"):
        f(t, torch.tensor([1, 2]))


def test_per_row_k_error_names_row():
    t = torch.randn(2, 3, 4)
    k = torch.tensor([[1, 2, 3], [4, 5, 1]])
    with pytest.raises(ValueError, match=r"k=5 is larger than the number of available items \(4\) in row \(1, 1\)"):
        ksubset.marginals(t, k)


def test_log_prob_bad_z():
    t = torch.randn(3, 5)
    with pytest.raises(ValueError, match="z must have the items in its last dimension"):
        ksubset.log_prob(t, 2, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        ksubset.log_prob(t, 2, torch.zeros(2, 5))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        ksubset.log_prob(t, 2, [0, 1])


def test_kl_shape_mismatch():
    with pytest.raises(ValueError, match="do not broadcast"):
        ksubset.kl_divergence(torch.randn(3, 5), torch.randn(2, 5), 2)


def test_sample_shape_errors():
    with pytest.raises(ValueError, match="sample_shape must be non-negative"):
        ksubset.sample(torch.randn(5), 2, sample_shape=(-1,))
    with pytest.raises(TypeError, match="sample_shape"):
        ksubset.sample(torch.randn(5), 2, sample_shape="abc")
