"""Learning the support: the estimators of the study (:data:`METHODS`) and one Adam run (:func:`learn_support`).

``θ ∈ R^n`` starts at ones (as the original code); each step draws ``batch`` samples (default 4;
the paper's code drew one) through the estimator, averages their losses and takes an Adam step (lr 0.1).
The score-function estimator uses the same ``f`` on ``batch`` exact samples with the leave-one-out
baseline. The original code's finite-difference form (``fd``) is the registered estimator
:func:`ksubset.estimators.simple_fd`: exact samples forward, ``μ(θ) − μ(θ − λ g)`` with exact marginals
backward (no ``1/λ``, as in that code). At the end the mode (top-3 of ``θ``) is refit by ridge. Recorded:
the equation, whether the support is exactly ``{u_xx, u_xxxx, u·u_x}``, the coefficient errors, and the
step (and wall time) from which the mode is the true support until the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ... import core, estimators
from .problem import K, SubsetProblem, subset_loss


@dataclass(frozen=True)
class Method:
    label: str
    estimator: str  # a registered estimator
    hp: dict[str, Any] = field(default_factory=dict)


#: the learned methods (keys are the ``--methods`` names)
METHODS: dict[str, Method] = {
    "simple": Method("SIMPLE", "simple"),
    "fd": Method("SIMPLE-FD (original code: μ(θ) − μ(θ − λg))", "simple_fd", {"lam": 10.0}),
    "simple_f": Method("SIMPLE-F", "simple_f", {"lam": 100.0}),
    "simple_b": Method("SIMPLE-B", "simple_b", {"lam": 10.0}),
    "ste": Method("STE", "ste"),
    "imle": Method("I-MLE", "imle", {"lam": 10.0}),
    "aimle": Method("AIMLE", "aimle"),
    "relaxed_topk": Method("SoftSub", "relaxed_topk", {"temperature": 1.0}),
    "st_relaxed_topk": Method("ST-SoftSub", "st_relaxed_topk", {"temperature": 1.0}),
    "score_function": Method("SFE (leave-one-out)", "score_function", {"baseline": "leave_one_out"}),
}


def make_estimator(method: Method, batch: int) -> Callable:
    """``est(theta [n], generator) -> z [batch, n]`` (pathwise) or the score-function callable."""
    if method.estimator == "score_function":
        est = estimators.get("score_function", num_samples=batch, **method.hp)
        return est
    est = estimators.get(method.estimator, **method.hp)
    return lambda theta, gen: est(theta.expand(batch, -1), K, generator=gen)



def hyperparameters(method: Method) -> dict[str, Any]:
    """Every hyper-parameter the method runs with, defaults included (a changed default must miss the cache)."""
    if method.estimator not in estimators.available():
        return dict(method.hp)
    hp = {**estimators.hyperparameters(method.estimator), **method.hp}
    if method.estimator == "score_function":
        hp.pop("num_samples")  # set from the unit's "batch" (make_estimator)
    return hp



_WARM: set[str] = set()


def _warm_up(method: Method, batch: int) -> None:
    """Run the estimator once on a toy problem so that JIT compilation is not timed (own generator)."""
    if method.estimator in _WARM:
        return
    est = make_estimator(method, batch)
    theta = torch.zeros(14, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    if method.estimator == "score_function":
        est(theta, K, lambda z: z.sum(-1) * 0, generator=gen).sum().backward()
    else:
        (est(theta, gen) * torch.linspace(0, 1, 14, dtype=torch.float64)).sum().backward()
    _WARM.add(method.estimator)



def learn_support(problem: SubsetProblem, method: Method, *, loss: str = "swap", steps: int = 500, lr: float = 0.1,
                  batch: int = 4, seed: int = 0, trajectory_every: int | None = None) -> dict[str, Any]:
    """Learn the support with ``method``; returns the refit, recovery step/time and (optionally) the logits.

    ``trajectory_every``: record ``θ`` every that many steps (``None``: not at all).
    """
    n = problem.n
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.ones(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    est = make_estimator(method, batch)
    sfe = method.estimator == "score_function"
    true = torch.zeros(n, dtype=torch.bool)
    true[list(problem.true)] = True

    def f_of_samples(z: torch.Tensor) -> torch.Tensor:
        rows = z.detach().reshape(-1, n).cpu().numpy()
        supports = np.sort(np.argsort(-rows, axis=1, kind="stable")[:, :K], axis=1)
        return torch.as_tensor(problem.f(supports), dtype=z.dtype).reshape(z.shape[:-1])

    recovered_at: int | None = None
    recovered_seconds: float | None = None
    losses, traj = [], []
    evaluations0 = problem.evaluations
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead on a shared machine
    try:
        _warm_up(method, batch)
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            opt.zero_grad()
            if sfe:
                surrogate = est(theta, K, f_of_samples, generator=gen)
                value = surrogate
            else:
                z = est(theta, gen)
                value = subset_loss(z, problem, loss).mean()
                surrogate = value
            surrogate.sum().backward()
            opt.step()
            losses.append(float(value.detach().mean()))
            with torch.no_grad():
                mode = core.mode(theta, K).bool()
            if bool((mode == true).all()):
                if recovered_at is None:
                    recovered_at, recovered_seconds = step, time.perf_counter() - t0
            else:
                recovered_at = recovered_seconds = None
            if trajectory_every and (step % trajectory_every == 0 or step == 1):
                traj.append([step] + [round(float(v), 4) for v in theta.detach()])
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    support = np.sort(torch.topk(theta.detach(), K).indices.numpy())
    coef, mse = problem.refit(support)
    every = max(1, steps // 100)
    result = {
        "support": support.tolist(),
        "coefficients": coef.tolist(),
        "mse": mse,
        "exact_support": tuple(support.tolist()) == problem.true,
        "steps_to_recovery": recovered_at,
        "seconds_to_recovery": recovered_seconds,
        "seconds": seconds,
        "steps": steps,
        "subset_fits": problem.evaluations - evaluations0,
        "final_logits": [round(float(v), 4) for v in theta.detach()],
        "loss_curve": [round(v, 6) for v in losses[::every]],
    }
    if trajectory_every:
        result["trajectory"] = traj
    return result
