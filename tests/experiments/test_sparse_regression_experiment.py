"""The sparse-regression experiment (E4): vertex gradients, the finite-difference estimator, learning on a small
grid, and the experiment end to end with resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import ksubset
from ksubset import experiments
from ksubset.estimators import simple_fd

pytest.importorskip("pysindy")
pytest.importorskip("matplotlib")

from ksubset.experiments.sparse_regression.baselines import RidgeGram  # noqa: E402
from ksubset.experiments.sparse_regression.learner import METHODS, learn_support  # noqa: E402
from ksubset.experiments.sparse_regression.problem import RIDGE_ALPHA, SubsetProblem, subset_loss  # noqa: E402
from ksubset.experiments.sparse_regression.report import PAPER_EQUATION  # noqa: E402
from ksubset.experiments.sparse_regression.study import FULL, QUICK  # noqa: E402

SMALL = {"ks_n": 256, "ks_tmax": 40.0}  # a small grid where exhaustive search still finds the true support


@pytest.fixture(scope="module")
def small_problem():
    from ksubset.experiments.sparse_regression.ks_solver import solve_ks
    from ksubset.experiments.sparse_regression.library import build_library

    ks = solve_ks(N=SMALL["ks_n"], t_max=SMALL["ks_tmax"])
    lib = build_library(ks.u, ks.x, ks.t)
    return SubsetProblem(RidgeGram(lib.theta, lib.u_t, alpha=RIDGE_ALPHA), lib.support_of()), lib


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    theta = rng.standard_normal((300, 8))
    theta[:, 4] = theta[:, 1] + 0.2 * rng.standard_normal(300)  # a correlated decoy
    y = theta[:, [1, 3, 6]] @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.standard_normal(300)
    return SubsetProblem(RidgeGram(theta, y, alpha=1e-5), [1, 3, 6])


def _f(problem, subset) -> float:
    return float(problem.f(np.sort(np.asarray(subset))[None])[0])


def test_vertex_gradients_match_brute_force(planted):
    S = [0, 4, 6]
    out = [j for j in range(8) if j not in S]
    f0 = _f(planted, S)
    # multilinear: f(S ∪ i) − f(S \ i)
    g, value = planted.vertex_gradient(S, "multilinear")
    ref = np.array([(f0 - _f(planted, [s for s in S if s != i])) if i in S else (_f(planted, S + [i]) - f0)
                    for i in range(8)])
    assert value == pytest.approx(f0)
    np.testing.assert_allclose(g, ref - ref.mean(), atol=1e-12)
    # swap: best single swap per term
    delta = {(i, j): _f(planted, [s for s in S if s != i] + [j]) - f0 for i in S for j in out}
    ref = np.zeros(8)
    for j in out:
        ref[j] = min(delta[i, j] for i in S)
    for i in S:
        ref[i] = -min(delta[i, j] for j in out)
    g, _ = planted.vertex_gradient(S, "swap")
    np.testing.assert_allclose(g, ref - ref.mean(), atol=1e-12)
    # masked: zero (before centring) on the unselected terms, by construction of the masked loss
    g, _ = planted.vertex_gradient(S, "masked")
    np.testing.assert_allclose(g[out], g[out][0], atol=1e-15)
    assert abs(g.sum()) < 1e-12
    with pytest.raises(ValueError, match="unknown loss"):
        planted.vertex_gradient(S, "nope")


def test_masked_gradient_is_the_derivative_of_the_masked_loss(planted):
    S = np.array([1, 3, 5])
    coef, _ = planted.gram.fit_batch(S[None])
    w = np.zeros(8)
    w[S] = coef[0] * planted.gram.norms[S]
    G = torch.tensor(planted.gram.gram)
    b = torch.tensor(planted.gram.rhs)
    z = torch.zeros(8, dtype=torch.float64)
    z[S] = 1
    z.requires_grad_(True)
    v = z * torch.tensor(w)
    loss = (planted.gram.yy - 2 * b @ v + v @ G @ v) / planted.gram.yy
    (auto,) = torch.autograd.grad(loss, z)
    g, _ = planted.vertex_gradient(S, "masked")
    np.testing.assert_allclose(g, (auto - auto.mean()).numpy(), atol=1e-12)


def test_subset_loss_forward_and_backward(planted):
    z = torch.zeros(2, 8, dtype=torch.float64)
    z[0, [1, 3, 6]] = 1
    z[1, [0, 2, 7]] = 1
    z.requires_grad_(True)
    out = subset_loss(z, planted, "swap")
    assert out.shape == (2,)
    assert out[0] < np.log(1e-3) < -0.1 < out[1] <= 0.0  # log relative residuals
    np.testing.assert_allclose(out.detach().numpy(), [_f(planted, [1, 3, 6]), _f(planted, [0, 2, 7])])
    (grad,) = torch.autograd.grad(out.sum(), z)
    np.testing.assert_allclose(grad[1].numpy(), planted.vertex_gradient([0, 2, 7], "swap")[0])


def test_finite_difference_estimator():
    theta = torch.randn(10, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    z = simple_fd(theta.expand(5, -1), 3, lam=2.0, generator=gen)
    assert z.shape == (5, 10) and torch.all(z.sum(-1) == 3)
    g = torch.randn(5, 10, dtype=torch.float64)
    (grad,) = torch.autograd.grad((z * g).sum(), theta)
    th = theta.detach().expand(5, -1)
    expected = (ksubset.marginals(th, 3) - ksubset.marginals(th - 2.0 * g, 3)).sum(0)
    torch.testing.assert_close(grad, expected)


def test_planted_support_is_learned(planted):
    for name in ["simple", "fd", "score_function"]:
        r = learn_support(planted, METHODS[name], steps=150, seed=1)
        assert r["support"] == [1, 3, 6], name
        assert r["exact_support"] and r["steps_to_recovery"] is not None
        np.testing.assert_allclose(r["coefficients"], [1.0, -2.0, 0.5], atol=0.05)


def test_simple_recovers_ks_on_a_small_grid(small_problem):
    problem, lib = small_problem
    assert problem.n == 14 and problem.true == tuple(lib.support_of().tolist())
    r = learn_support(problem, METHODS["simple"], steps=100, seed=0, trajectory_every=1)
    assert r["exact_support"], r["support"]
    assert r["support"] == lib.support_of().tolist()
    assert r["steps_to_recovery"] is not None and r["steps_to_recovery"] <= 100
    np.testing.assert_allclose(r["coefficients"], -1.0, atol=0.1)
    assert len(r["trajectory"]) == 100 and len(r["trajectory"][0]) == 15
    # the final logits put the true terms on top
    top = np.argsort(r["final_logits"])[-3:]
    assert sorted(top.tolist()) == lib.support_of().tolist()


def _options(**extra):
    opts = {**SMALL, "noise": [0.0, 1.0], "lowpass": [2.5], "methods": ["simple", "fd"], "seeds": 1, "grid_seeds": 1,
            "steps": 60, "baselines": ["exhaustive", "stlsq"], "loss_ablation": ["multilinear"],
            "distractors": [5], "large_methods": ["simple"], "large_steps": 60, "large_baselines": ["exhaustive"]}
    opts.update(extra)
    return opts


def test_end_to_end_and_resume(tmp_path):
    summary = experiments.run("sparse-regression", tmp_path, mode="quick", options=_options(), show_progress=False)
    out = tmp_path / "sparse-regression"
    for name in ["results.json", "report.md", "ks_u.png", "logits.png", "scaling.png"]:
        assert (out / name).stat().st_size > 0, name
    assert list((out / "data").glob("ks_*.npz")), "the KS solution is cached under the output folder"
    data = json.loads((out / "results.json").read_text())
    prov = data["provenance"]
    assert prov["config"]["ks_n"] == 256 and prov["units_computed"] > 0
    studies = {(e["study"], e["data"], e["method"]) for e in data["learned"]}
    assert ("paper", "paper-noise0", "simple") in studies
    assert ("loss", "paper-noise0", "simple") in studies
    assert ("noise", "paper-noise1-lp2.5", "fd") in studies
    assert ("large", "large-noise0-d5", "simple") in studies
    assert data["datasets"]["large-noise0-d5"]["n_terms"] == 28
    assert data["datasets"]["paper-noise0"]["baselines"]["exhaustive"]["exact_support"]
    simple = next(e for e in data["learned"] if e["study"] == "paper" and e["method"] == "simple")
    assert simple["summary"]["successes"] == 1
    assert set(data["trajectories"]) == {"simple", "fd"}
    assert summary["headline"] and any("SIMPLE" in line for line in summary["headline"])
    report = (out / "report.md").read_text()
    assert PAPER_EQUATION in report and "u_xxxx" in report and "exhaustive" in report
    assert "1 % noise, low-pass 2.5" in report

    again = experiments.run("sparse-regression", tmp_path, mode="quick", options=_options(), show_progress=False)
    assert again["provenance"]["units_computed"] == 0
    assert again["learned"] == summary["learned"]


def test_config_validation(tmp_path):
    for bad in ({"methods": ["nope"]}, {"loss": "nope"}, {"baselines": ["nope"]}, {"distractors": [300]}):
        with pytest.raises(ValueError):
            experiments.run("sparse-regression", tmp_path, options=_options(**bad), show_progress=False)


def test_cli_options_reach_the_experiment(monkeypatch, tmp_path):
    from ksubset import cli

    seen = {}

    def fake_run(name, out, *, mode, seed, options, show_progress, fresh):
        seen.update(name=name, mode=mode, options=options)
        return {}

    monkeypatch.setattr(experiments, "run", fake_run)
    cli.main(["reproduce", "sparse-regression", "--full", "--out", str(tmp_path), "--noise", "0", "1", "--methods",
              "simple", "imle", "--seeds", "4", "--distractors", "--no-periodic"])
    assert seen["mode"] == "full"
    opts = seen["options"]
    assert opts["noise"] == [0.0, 1.0] and opts["methods"] == ["simple", "imle"] and opts["seeds"] == 4
    assert opts["distractors"] == [] and opts["periodic"] is False and opts["steps"] is None


def test_every_method_has_a_working_estimator(planted):
    for name, method in METHODS.items():
        r = learn_support(planted, method, steps=3, seed=0)
        assert len(r["support"]) == 3 and r["steps"] == 3, name
    assert set(itertools.chain(QUICK["methods"], FULL["methods"], FULL["large_methods"])) <= set(METHODS)
