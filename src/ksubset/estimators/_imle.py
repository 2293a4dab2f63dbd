"""I-MLE (Niepert, Minervini & Franceschi, NeurIPS 2021) and AIMLE (Minervini, Franceschi & Niepert, AAAI
2023) for k-subsets, with top-k as the MAP solver.

**I-MLE.** Draw ``num_samples`` noise tensors ``eps_s`` (sum-of-gamma with ``kappa``, ``s``, ``noise_scale``
(Niepert et al.'s temperature tau), or ``noise_scale`` times Gumbel). Forward: ``z = topk(theta + eps_1)``
(hard, exactly k ones). Backward, given ``g = dL/dz``, with the *same* noise::

    grad = mean_s [ topk(theta + eps_s) - topk(theta - lam g + eps_s) ]      (/ lam if scale=True)

``scale=False`` (the default) is the paper's and torch-imle's default; ``scale=True`` divides by ``lam``
(the finite-difference reading, comparable in size to SIMPLE's ``Cov(z) g``). ``num_samples > 1`` averages
the backward over more noise draws for the same ``g``; for independent forward samples, expand the logits'
batch instead (``est(logits.expand(S, *logits.shape), k)``).

**AIMLE**, as implemented here (after the paper and its reference code, EdinburghNLP/torch-adaptive-imle):

* central differences: ``grad = mean_s [topk(theta + lam_r g + eps_s) - topk(theta - lam_r g + eps_s)] / 2``
  (``symmetric=False``: the one-sided I-MLE difference), divided by ``lam_r`` when ``scale=True``
  (the default, as in the reference code);
* the perturbation is relative: per row, ``lam_r = beta · ||theta_r|| / ||g_r||`` (norms over the row's
  free items; ``||theta_r||`` taken as 1 when it is 0, so all-zero logits still get a gradient — the
  reference code uses one norm over the whole batch and would give a zero gradient there);
* ``beta`` adapts across calls so that the gradient has a target density: once per forward call, at the
  first backward pass through its output, ``nnz`` = mean number of non-zero entries per (row, noise sample);
  ``ema ← decay·ema + (1-decay)·nnz``; ``beta ← max(0, beta + u)`` with
  ``u = momentum·u_prev + (step if ema < target else -step)``. Each forward uses the ``beta`` of the moment it
  was called, so a second ``backward(retain_graph=True)`` through the same output gives the same gradient and
  does not adapt ``beta`` again; a backward pass whose incoming gradient is not finite (a ``GradScaler``
  overflow, whose step is skipped) does not adapt it either.
  The adaptive state lives in an :class:`AIMLEState`; pass one (or use ``estimators.get("aimle")`` /
  ``KSubsetLayer``, which keep one) for beta to adapt across calls — without it every call starts afresh
  from ``beta = initial_beta``.

Randomness: the noise ``[num_samples, *logits.shape]`` is drawn in the forward pass from ``generator``
(:func:`ksubset.estimators.sum_of_gamma_noise` or :func:`ksubset.estimators.gumbel_noise`, called once with that
shape, with ``kappa`` of shape ``[*batch, 1]`` when it defaults to k); the backward pass draws nothing.

Renamed hyper-parameters (the old names still work for one release, with a ``DeprecationWarning``):
``tau`` → ``noise_scale`` (both estimators), AIMLE's ``lam`` → ``initial_beta``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .. import core
from ._common import check, check_noise, custom_backward, draw_topk_noise, perturb, poison_rows, renamed
from ._registry import register

__all__ = ["imle", "aimle", "AIMLEState"]


def _map(keys: Tensor, k: int | Tensor, mask: Tensor | None) -> Tensor:
    """Top-k per row of ``keys [S, *batch, n]`` (k and mask broadcast over the leading S)."""
    return core.mode(keys, k, mask)


def _check_imle(*, lam, noise, kappa, s, noise_scale, num_samples, scale) -> None:
    check.positive("imle", "lam", lam)
    check_noise("imle", noise=noise, kappa=kappa, s=s, noise_scale=noise_scale)
    check.integer("imle", "num_samples", num_samples, 1)
    check.boolean("imle", "scale", scale)


@renamed(tau="noise_scale")
def imle(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    lam: float = 2.5,
    noise: str = "sum_of_gamma",
    kappa: float | None = None,
    s: int = 10,
    noise_scale: float = 1.0,
    num_samples: int = 1,
    scale: bool = False,
) -> Tensor:
    """I-MLE: ``topk(theta + eps)`` forward; ``mean_s[MAP(theta+eps_s) - MAP(theta-lam g+eps_s)]`` backward.

    ``kappa=None`` uses each row's k. See the module docstring for the exact contract.
    """
    _check_imle(lam=lam, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale, num_samples=num_samples,
                scale=scale)
    P = core.prepare(logits, k, mask)
    theta = logits.detach().to(P.theta.dtype)  # compute dtype: float32 for half logits
    eps = draw_topk_noise(P, num_samples, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale,
                          generator=generator)
    z_all = _map(theta + eps, k, mask)

    def backward(g: Tensor) -> Tensor:
        target, overflowed = perturb(theta, -lam * g.to(theta.dtype))
        z_target = _map(target + eps, k, mask)
        grad = (z_all - z_target).mean(0)
        return poison_rows(grad / lam if scale else grad, overflowed)

    return custom_backward(logits, z_all[0].to(logits.dtype), backward)


@dataclass
class AIMLEState:
    """The adaptive part of AIMLE: ``beta`` (relative perturbation size), the running mean of the number of
    non-zero gradient entries, and the last update of ``beta`` (for momentum)."""

    beta: float = 1.0
    nonzero_ema: float = 1.0
    last_update: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])
        self.nonzero_ema = float(state["nonzero_ema"])
        self.last_update = float(state["last_update"])


def _check_aimle(*, initial_beta, target, step, momentum, decay, symmetric, noise, kappa, s, noise_scale,
                 num_samples, scale) -> None:
    check.nonnegative("aimle", "initial_beta", initial_beta)
    check.nonnegative("aimle", "target", target)
    check.nonnegative("aimle", "step", step)
    check.unit_interval("aimle", "momentum", momentum)
    check.unit_interval("aimle", "decay", decay)
    check.boolean("aimle", "symmetric", symmetric)
    check_noise("aimle", noise=noise, kappa=kappa, s=s, noise_scale=noise_scale)
    check.integer("aimle", "num_samples", num_samples, 1)
    check.boolean("aimle", "scale", scale)


@renamed(lam="initial_beta", tau="noise_scale")
def aimle(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    initial_beta: float = 1.0,
    target: float = 1.0,
    step: float = 1e-4,
    momentum: float = 0.0,
    decay: float = 0.9,
    symmetric: bool = True,
    noise: str = "sum_of_gamma",
    kappa: float | None = None,
    s: int = 10,
    noise_scale: float = 1.0,
    num_samples: int = 1,
    scale: bool = True,
    state: AIMLEState | None = None,
) -> Tensor:
    """AIMLE: ``topk(theta + eps)`` forward; adaptive, relative, central-difference I-MLE backward.

    ``initial_beta`` is the starting ``beta`` (used only when ``state`` is None). ``target``, ``step``, ``momentum``,
    ``decay`` drive the adaptation of ``beta`` (defaults of the reference code). See the module docstring.
    """
    _check_aimle(initial_beta=initial_beta, target=target, step=step, momentum=momentum, decay=decay,
                 symmetric=symmetric, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale,
                 num_samples=num_samples, scale=scale)
    if state is None:
        state = AIMLEState(beta=float(initial_beta))
    P = core.prepare(logits, k, mask)
    theta = logits.detach().to(P.theta.dtype)  # compute dtype: float32 for half logits
    eps = draw_topk_noise(P, num_samples, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale,
                          generator=generator)
    z_all = _map(theta + eps, k, mask)
    beta = state.beta  # this forward's beta: every backward pass through it uses the same one
    adapted = False  # beta adapts once per forward, at its first (finite) backward pass

    def backward(g: Tensor) -> Tensor:
        nonlocal adapted
        dt = P.theta.dtype
        gf = g.reshape(-1, P.n).to(dt)
        zero = torch.zeros((), dtype=dt, device=gf.device)
        scaler_overflow = ~torch.isfinite(gf).all(-1)  # e.g. a GradScaler's inf: skip the row, poison it
        gf = torch.where(scaler_overflow.unsqueeze(-1), zero, gf)
        th_norm = torch.linalg.vector_norm(torch.where(P.free, P.theta.detach(), zero), dim=-1)
        g_norm = torch.linalg.vector_norm(torch.where(P.free, gf, zero), dim=-1)
        th_norm = torch.where(th_norm > 0, th_norm, torch.ones_like(th_norm))
        lam_r = torch.where(g_norm > 0, beta * th_norm / g_norm.clamp_min(torch.finfo(dt).tiny), zero)
        step_r = (lam_r.unsqueeze(-1) * gf).reshape(g.shape)
        lo, bad_lo = perturb(theta, -step_r)
        lo = _map(lo + eps, k, mask)
        overflowed = scaler_overflow.reshape(P.batch_shape) | bad_lo
        if symmetric:
            hi, bad_hi = perturb(theta, step_r)
            hi = _map(hi + eps, k, mask)
            overflowed = overflowed | bad_hi
            per_sample = (hi - lo) / 2
        else:
            per_sample = z_all - lo
        if scale:
            denom = torch.where(lam_r > 0, lam_r, torch.ones_like(lam_r)).reshape(*P.batch_shape, 1)
            per_sample = per_sample / denom.to(per_sample.dtype)
        # adapt beta from the density of this batch's gradients: once per forward, and not from a step that
        # a loss scaler will skip
        if not adapted and not bool(overflowed.any()):
            adapted = True
            with torch.no_grad():
                rows = per_sample.reshape(num_samples, -1, P.n)
                nnz = float((rows != 0).sum(-1).to(torch.float64).mean()) if rows.shape[1] else 0.0
            state.nonzero_ema = decay * state.nonzero_ema + (1 - decay) * nnz
            update = momentum * state.last_update + (step if state.nonzero_ema < target else -step)
            state.beta = max(0.0, state.beta + update)
            state.last_update = update
        return poison_rows(per_sample.mean(0), overflowed)

    return custom_backward(logits, z_all[0].to(logits.dtype), backward)


register("imle", imle, _check_imle)
register("aimle", aimle, _check_aimle, state=lambda hp: AIMLEState(beta=float(hp["initial_beta"])))
