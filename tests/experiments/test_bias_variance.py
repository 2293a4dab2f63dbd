"""The bias/variance experiment: end to end, resume, and the oracles it relies on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ksubset import estimators, experiments
from ksubset.experiments import bias_variance as bv


def test_quick_configuration_end_to_end_and_resume(tmp_path):
    summary = experiments.run("bias-variance", tmp_path, mode="quick", show_progress=False)
    out = tmp_path / "bias-variance"
    for name in ["results.json", "report.md", "bias_variance.png", "sweep.png"]:
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert data["provenance"]["config"]["num_estimates"] == bv.QUICK["num_estimates"]
    assert set(data["e1"]) == set(bv.PAPER)
    # SIMPLE lands near the paper's numbers (0.037 ± 0.021 bias, 0.012 ± 0.013 variance over seeds)
    s = summary["e1"]["SIMPLE"]
    assert abs(s["bias"]["mean"] - 0.037) < 0.02 and abs(s["variance"]["mean"] - 0.012) < 0.01
    report = (out / "report.md").read_text()
    assert "0.037 ± 0.021" in report and "SoftSub" in report
    # a second run resumes from the cached units and recomputes nothing
    again = experiments.run("bias-variance", tmp_path, mode="quick", show_progress=False)
    assert again["provenance"]["units_computed"] == 0
    assert again["e1"] == summary["e1"]


def test_sfe_is_unbiased_within_its_standard_error():
    theta, b = bv.problem(1234)
    exact = estimators.exact_gradient(theta, 5, bv.quadratic_loss(b))
    N = 20_000
    g = bv._score_function()(theta.expand(N, -1), 5, bv.quadratic_loss(b), torch.Generator().manual_seed(0))
    se = g.std(0) / np.sqrt(N)
    assert ((g.mean(0) - exact).abs() <= 4 * se).all()


def test_exact_gradient_matches_finite_differences():
    theta, b = bv.problem(1067)
    f = bv.quadratic_loss(b)
    grad = estimators.exact_gradient(theta, 5, f)
    h = 1e-6
    fd = torch.zeros(10, dtype=torch.float64)
    for i in range(10):
        e = torch.zeros(10, dtype=torch.float64)
        e[i] = h
        up, down = estimators.exact_expectation(theta + e, 5, f), estimators.exact_expectation(theta - e, 5, f)
        fd[i] = (up - down) / (2 * h)
    assert torch.allclose(grad, fd, atol=1e-7)


@pytest.mark.parametrize("n,k", [(4, 2), (8, 3), (12, 6), (12, 1)])
def test_closed_form_quadratic_gradient_matches_enumeration(n, k):
    theta, b = bv.problem(n * 100 + k, n)
    closed = bv.exact_quadratic_gradient(theta, k, b)
    enum = estimators.exact_gradient(theta, k, bv.quadratic_loss(b))
    assert torch.allclose(closed, enum, atol=1e-10)


def test_metrics_on_known_vectors():
    exact = torch.tensor([1.0, 0.0])
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    m = bv.metrics(grads, exact)
    # g_bar = (1/3, 1/3): cos with exact = 1/sqrt(2)
    assert abs(m["bias"] - (1 - 2**-0.5)) < 1e-12
    assert m["zero_estimates"] == 1
    assert abs(m["avg_error"] - (0 + 1 + 1) / 3) < 1e-12
