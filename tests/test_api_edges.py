"""API edges: int sample shapes in rsample, huge k, wrong generator types, and the k-hot
support of KSubset as a torch.distributions constraint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.distributions import constraints

import ksubset
from ksubset import KSubset
from ksubset import estimators as E
from ksubset.nn import KSubsetLayer

from oracle import enumerate_row


def test_rsample_accepts_an_int_sample_shape_like_sample():
    d = KSubset(torch.randn(3, 6, requires_grad=True), 2)
    z = d.rsample(5)  # before: TypeError "'int' object is not iterable"
    assert z.shape == d.sample(5).shape == (5, 3, 6)
    assert torch.equal(z.sum(-1), torch.full((5, 3), 2.0))
    z.sum().backward()


@pytest.mark.parametrize("call", [
    lambda k: ksubset.sample(torch.randn(4), k),
    lambda k: ksubset.marginals(torch.randn(2, 4), k),
    lambda k: KSubset(torch.randn(4), k),
    lambda k: ksubset.simple(torch.randn(4), k),
    lambda k: E.get("imle")(torch.randn(4), k),
])
def test_huge_k_raises_a_value_error_naming_k(call):
    with pytest.raises(ValueError, match=r"^k="):  # before: OverflowError "int too big to convert"
        call(2**70)
    with pytest.raises(ValueError, match=r"^k="):
        call(np.uint64(2**64 - 1))


@pytest.mark.parametrize("call", [
    lambda g: KSubset(torch.randn(4), 2).sample(generator=g),
    lambda g: KSubset(torch.randn(4), 2).rsample(generator=g),
    lambda g: ksubset.simple(torch.randn(4), 2, generator=g),
    lambda g: E.get("imle")(torch.randn(4), 2, generator=g),
    lambda g: E.get("relaxed_topk")(torch.randn(4), 2, generator=g),
    lambda g: KSubsetLayer(2)(torch.randn(4), generator=g),
    lambda g: KSubsetLayer(2, eval_mode="sample").eval()(torch.randn(4), generator=g),
])
def test_numpy_generator_raises_a_type_error_naming_generator(call):
    with pytest.raises(TypeError, match=r"^generator must be a torch\.Generator"):
        call(np.random.default_rng(0))
    call(torch.Generator().manual_seed(0))  # the right type works


def _all_binary(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def test_support_is_exactly_the_enumerated_k_subsets_with_masks_and_forced_items():
    logits = torch.tensor([[0.3, float("inf"), -1.0, 2.0, float("-inf"), 0.0],
                           [1.0, 0.5, -0.5, 0.0, 0.2, -2.0]])
    mask = torch.tensor([[True, True, True, False, True, True], [True] * 6])
    k = torch.tensor([3, 2])
    d = KSubset(logits, k, mask)
    assert isinstance(d.support, constraints.Constraint)
    assert d.support.is_discrete and d.support.event_dim == 1
    assert constraints.is_dependent(KSubset.support)  # depends on k, the mask and the logits
    cands = _all_binary(6)
    got = d.support.check(cands.unsqueeze(1))  # [64, 2]
    assert torch.equal(d.support.check(cands.bool().unsqueeze(1)), got)  # bool vectors too
    for row in range(2):
        e = enumerate_row(logits[row].numpy(), int(k[row]), mask[row].numpy())
        want = {tuple(s) for s in e.subsets.tolist()}
        assert {tuple(c) for c, ok in zip(cands.tolist(), got[:, row].tolist(), strict=True) if ok} == want
    # non-binary values are not in the support, even with the right sum
    assert not d.support.check(torch.tensor([0.5, 1.0, 0.5, 0.0, 0.0, 1.0]))[0]


def test_validate_args_rejects_values_off_the_support_in_log_prob():
    logits = torch.tensor([0.3, float("inf"), -1.0, 2.0, 0.0])
    mask = torch.tensor([True, True, True, False, True])
    d = KSubset(logits, 2, mask, validate_args=True)
    good = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(d.log_prob(good), ksubset.log_prob(logits, 2, good, mask))
    for bad in ([0.5, 1.0, 0.5, 0.0, 0.0],    # not binary
                [1.0, 1.0, 1.0, 0.0, 0.0],    # three ones
                [0.0, 1.0, 0.0, 1.0, 0.0],    # a masked-out item
                [1.0, 0.0, 0.0, 0.0, 1.0]):   # misses the forced item
        with pytest.raises(ValueError, match="not a k-subset.*KHot"):
            d.log_prob(torch.tensor(bad))
    assert KSubset(logits, 2, mask, validate_args=False).log_prob(torch.tensor([0.5, 1.0, 0.5, 0.0, 0.0])) \
        == float("-inf")


def test_arg_constraints_describe_logits_and_k():
    ac = KSubset.arg_constraints
    assert bool(ac["logits"].check(torch.tensor([0.0, float("inf"), float("-inf")])))
    assert not bool(ac["logits"].check(torch.tensor([0.0, float("nan")])))
    assert bool(ac["k"].check(torch.tensor(3))) and not bool(ac["k"].check(torch.tensor(-1)))
