"""Tests for ksubset.nn.KSubsetLayer. Tests whose estimator or evaluation mode runs an exact engine run on every
engine."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from ksubset import core
from ksubset.nn import KSubsetLayer

from oracle import enumerate_row

N, K = 8, 3
PATHWISE = ["simple", "simple_f", "simple_b", "ste", "relaxed_topk", "st_relaxed_topk", "imle", "aimle"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits(rows: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, N, dtype=torch.float64, generator=gen(seed)).requires_grad_()


@pytest.mark.parametrize("name", PATHWISE)
def test_train_uses_the_estimator_eval_returns_top_k(name, engine):
    layer = KSubsetLayer(K, name)
    assert layer.training
    x = logits()
    y = layer(x, generator=gen(1))
    assert torch.allclose(y.sum(-1), torch.full((6,), float(K), dtype=torch.float64))
    y.backward(torch.randn(6, N, dtype=torch.float64, generator=gen(2)))
    assert x.grad is not None and bool((x.grad != 0).any())
    layer.eval()
    z = layer(x)
    assert torch.equal(z, core.mode(x.detach(), K))
    assert not z.requires_grad


def test_training_output_is_the_estimators():
    layer = KSubsetLayer(K, "imle", lam=5.0, noise_scale=0.5)
    x = logits()
    from ksubset.estimators import imle

    assert torch.equal(layer(x, generator=gen(3)), imle(x, K, generator=gen(3), lam=5.0, noise_scale=0.5))


def test_eval_modes(engine):
    x = logits()
    sampler = KSubsetLayer(K, eval_mode="sample").eval()
    z = sampler(x, generator=gen(4))
    assert torch.equal(z, core.sample(x.detach(), K, generator=gen(4)))
    marg = KSubsetLayer(K, eval_mode="marginals").eval()
    mu = marg(x)
    torch.testing.assert_close(mu, core.marginals(x.detach(), K))
    oracle = torch.stack([torch.from_numpy(enumerate_row(r.detach().numpy(), K).marginals) for r in x])
    torch.testing.assert_close(mu, oracle, rtol=1e-10, atol=1e-12)
    mu.sum().backward()  # differentiable in evaluation mode
    assert x.grad is not None


@pytest.mark.parametrize("name", ["simple", "imle", "relaxed_topk"])
def test_masks_and_per_row_k_pass_through(name, engine):
    x = logits()
    mask = torch.ones(6, N, dtype=torch.bool)
    mask[:, 0] = False
    mask[2, 4:] = False
    k = torch.tensor([1, 2, 2, 4, 5, 3])
    layer = KSubsetLayer(K, name)
    for mode in ("train", "eval"):
        layer.train(mode == "train")
        y = layer(x, mask, k=k, generator=gen(5))
        assert torch.allclose(y.sum(-1), k.to(y.dtype)), mode
        assert bool((y[~mask] == 0).all()), mode
    # the default k applies when no override is given
    layer.eval()
    assert torch.equal(layer(x, mask).sum(-1), torch.full((6,), float(K), dtype=torch.float64))
    # int override
    assert torch.equal(layer(x, k=2).sum(-1), torch.full((6,), 2.0, dtype=torch.float64))


def test_extra_repr_shows_the_configuration():
    layer = KSubsetLayer(5, "relaxed_topk", eval_mode="marginals", temperature=0.5)
    assert repr(layer) == "KSubsetLayer(k=5, estimator='relaxed_topk', eval_mode='marginals', temperature=0.5)"
    assert "lam=2.5" in repr(KSubsetLayer(2, "imle"))


def test_state_dict_round_trip():
    layer = KSubsetLayer(4, "imle", eval_mode="sample", lam=7.0, noise="gumbel", num_samples=2)
    other = KSubsetLayer(1)
    other.load_state_dict(layer.state_dict())
    assert repr(other) == repr(layer)
    x = logits()
    assert torch.equal(other(x, generator=gen(6)), layer(x, generator=gen(6)))
    # through torch.save / torch.load(weights_only=True), inside a model
    model = torch.nn.Sequential(torch.nn.Linear(3, N), KSubsetLayer(2, "st_relaxed_topk", temperature=0.3))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, N), KSubsetLayer(6))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert repr(fresh) == repr(model)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_state_dict_keeps_the_adaptive_aimle_state():
    layer = KSubsetLayer(K, "aimle", initial_beta=1.0, step=0.25, target=100.0)
    x = logits()
    for i in range(2):
        layer(x, generator=gen(7 + i)).sum().backward()
    assert layer.estimator.state.beta == pytest.approx(1.5)
    other = KSubsetLayer(K, "aimle")
    other.load_state_dict(layer.state_dict())
    assert other.estimator.state == layer.estimator.state
    assert other.hyperparameters == layer.hyperparameters
    # the loaded state is a copy: training one layer does not move the other
    layer(x, generator=gen(9)).sum().backward()
    assert other.estimator.state.beta == pytest.approx(1.5)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="available: "):
        KSubsetLayer(K, "gumbel_topk")
    with pytest.raises(ValueError, match="valid hyper-parameters"):
        KSubsetLayer(K, "simple_f", temperature=2.0)
    with pytest.raises(ValueError, match="score_function"):
        KSubsetLayer(K, "score_function")
    with pytest.raises(ValueError, match="eval_mode"):
        KSubsetLayer(K, eval_mode="argmax")
    with pytest.raises(ValueError, match="k must be an int"):
        KSubsetLayer(-1)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        KSubsetLayer(K, "relaxed_topk", temperature=0.0)
    with pytest.raises(ValueError, match="not a KSubsetLayer"):
        KSubsetLayer(K).load_state_dict({"_extra_state": {"k": 3}})


@pytest.mark.parametrize("name, old, new", [("relaxed_topk", "t", "temperature"), ("imle", "tau", "noise_scale"),
                                            ("aimle", "lam", "initial_beta")])
def test_old_hyperparameter_names_warn_and_configure_the_new_ones(name, old, new):
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated.*use '{new}'") as record:
        layer = KSubsetLayer(K, name, **{old: 0.25})
    assert [w.filename for w in record] == [__file__]  # points at the caller, not at the library
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = KSubsetLayer(K, name, **{new: 0.25})
    assert repr(layer) == repr(fresh) and f"{new}=0.25" in repr(layer) and f" {old}=" not in repr(layer)
    x = logits()
    assert torch.equal(layer(x, generator=gen(10)), fresh(x, generator=gen(10)))


def test_a_state_dict_saved_with_an_old_name_still_loads():
    state = KSubsetLayer(2, "st_relaxed_topk", temperature=0.3).state_dict()
    state["_extra_state"]["hyperparameters"] = {"t": 0.3}  # as saved before the rename
    layer = KSubsetLayer(1)
    with pytest.warns(DeprecationWarning, match="'t' is deprecated.*'temperature'"):
        layer.load_state_dict(state)
    assert layer.hyperparameters == {"temperature": 0.3}
