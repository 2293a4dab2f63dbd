"""The sparse-regression problem: the loss ``f`` of a k-subset of library terms and its vertex gradients.

For a support ``S`` (``|S| = 3``) the loss is the log of the relative residual of the ridge fit on those
columns, ``f(S) = log(mse_S / mean(u_t²))`` (normalised columns, ``alpha = 1e-5``, the objective of PySINDy's
STLSQ). The logarithm makes the loss scale-free: on clean data the true support leaves 1e-5 of the signal and
the runner-up 3e-2, a difference that the plain residual (dominated by the terms that explain most of ``u_t``)
hides; on a planted problem with a correlated decoy, and on noisy KS data, the log made every estimator converge
more reliably (measured while building this experiment). :class:`~.baselines.RidgeGram` stores ``ΘᵀΘ`` and
``Θᵀu_t`` once, so each fit is a 3×3 solve. ``f`` is only defined on k-hot vectors ``z`` — the vertices of the
k-subset polytope — so the gradient ``∂ℓ/∂z`` that pathwise estimators need must be *chosen*. Three choices: the
original code's ``masked`` (the paper's setting, ``--paper-loss``), and this library's ``swap`` and
``multilinear`` (``--loss``, ``--loss-ablation``):

* ``swap`` (this library's default): the edges of the k-subset polytope at the vertex ``z_S`` are the single swaps
  ``S − i + j``. With ``Δ_ij = f(S − i + j) − f(S)``: ``g_j = min_i Δ_ij`` for ``j ∉ S`` (the best change from
  bringing ``j`` in) and ``g_i = −min_j Δ_ij`` for ``i ∈ S`` (minus the best change from taking ``i`` out).
  ``k(n − k)`` fits per sample (33 for the 14-term library).
* ``multilinear``: the gradient of the multilinear extension of ``f`` at the vertex,
  ``g_i = f(S ∪ {i}) − f(S \\ {i})`` (exact for losses linear in ``z``; ``n`` fits per sample). It has
  spurious minima where one term is redundant with another (removing it costs more than adding the
  other gains) and fails under noise where ``swap`` does not.
* ``masked`` (the original code's, the paper's setting): the ridge coefficients ``w`` of ``S`` held fixed and the loss
  ``||u_t − Θ̃ (z ⊙ w)||² / ||u_t||²`` (no logarithm) differentiated with respect to the mask ``z``. At the
  ridge solution this is ``−2 α w_i² / ||u_t||²`` for selected terms and exactly 0 for the others: it only
  reinforces what was sampled, in proportion to its squared (normalised) coefficient.

The loss seen by an estimator is the first-order model ``ℓ(z) = f(S) + g·(z − z_S)`` at the vertex ``S``;
soft inputs (SoftSub's relaxed forward) are rounded to their top-3 to pick that vertex, so
``relaxed_topk`` and ``st_relaxed_topk`` receive the same ``g`` on this problem. ``f`` is defined only on
k-subsets, so ``g`` is defined up to a multiple of ``1`` (``Σz = k`` on the polytope); it is centred
(``g − mean(g)``). This is immaterial for SIMPLE (``Cov·1 = 0``), I-MLE, SoftSub and the score function,
but not for STE, whose raw ``g`` has one sign for every coordinate (so that Adam, which normalises each
coordinate, would move every logit alike).
"""

from __future__ import annotations

import numpy as np
import torch

K = 3
RIDGE_ALPHA = 1e-5
LOSSES = ("swap", "multilinear", "masked")
_TINY = 1e-300
#: the loss on k-subsets (recorded in every unit's configuration)
OBJECTIVE = "log(ridge mse / mean(u_t^2))"


class SubsetProblem:
    """Ridge losses of k-subsets of a library and the vertex gradients ``g`` of :data:`LOSSES`.

    Args:
        gram: a :class:`~.baselines.RidgeGram` of the library (``n`` columns).
        true_support: the column indices of the true terms (for bookkeeping only).
        k: subset size.
    """

    def __init__(self, gram, true_support, k: int = K) -> None:
        self.gram = gram
        self.n = int(gram.n_terms)
        self.k = int(k)
        self.true = tuple(int(i) for i in np.sort(np.asarray(true_support)))
        self.scale = gram.yy / gram.n_samples  # mean(u_t²)
        self.evaluations = 0

    def f(self, supports: np.ndarray) -> np.ndarray:
        """The loss ``log(mse / mean(u_t²))`` of the ridge fit, for supports ``[B, m]`` → ``[B]``."""
        supports = np.asarray(supports, dtype=np.int64)
        self.evaluations += supports.shape[0]
        _, mse = self.gram.fit_batch(supports)
        return np.log(np.maximum(np.atleast_1d(mse) / self.scale, _TINY))

    def vertex_gradient(self, support, loss: str = "swap") -> tuple[np.ndarray, float]:
        """``(g [n], f(S))`` at the vertex ``S`` (centred ``g``; see the module docstring)."""
        S = np.sort(np.asarray(support, dtype=np.int64))
        n, k = self.n, S.size
        out = np.setdiff1d(np.arange(n), S)
        g = np.zeros(n)
        if loss == "swap":
            # swaps[a, b] = S with S[a] replaced by out[b]; f0 appended as the last row
            swaps = np.repeat(S[None, None, :], out.size, axis=1).repeat(k, axis=0)
            swaps[np.arange(k), :, np.arange(k)] = out[None, :]
            vals = self.f(np.concatenate([np.sort(swaps.reshape(-1, k), axis=1), S[None]]))
            f0 = float(vals[-1])
            delta = vals[:-1].reshape(k, out.size) - f0
            g[out] = delta.min(axis=0)
            g[S] = -delta.min(axis=1)
        elif loss == "multilinear":
            f0 = float(self.f(S[None])[0])
            added = np.sort(np.concatenate([np.repeat(S[None], out.size, axis=0), out[:, None]], axis=1), axis=1)
            g[out] = self.f(added) - f0
            if k > 1:
                removed = np.stack([np.delete(S, a) for a in range(k)])
                g[S] = f0 - self.f(removed)
            else:
                g[S] = f0  # the empty fit leaves the whole signal: f(∅) = log 1 = 0
        elif loss == "masked":
            coef_n, mse = self.gram.fit_batch(S[None])
            f0 = float(np.log(max(mse[0] / self.scale, _TINY)))
            self.evaluations += 1
            w = np.zeros(n)
            w[S] = coef_n[0] * self.gram.norms[S]  # normalised-column coefficients
            # ℓ(z) = (yᵀy − 2 b̃ᵀ(z⊙w) + (z⊙w)ᵀ G̃ (z⊙w)) / yᵀy, differentiated at z = 1_S
            g = 2.0 * w * (self.gram.gram @ w - self.gram.rhs) / self.gram.yy
        else:
            raise ValueError(f"unknown loss {loss!r}; choose from {LOSSES}")
        return g - g.mean(), f0

    def refit(self, support) -> tuple[np.ndarray, float]:
        S = np.sort(np.asarray(support, dtype=np.int64))
        coef, mse = self.gram.fit(S)
        return np.asarray(coef), float(mse)


class _SubsetLoss(torch.autograd.Function):
    """Rows ``z [B, n]`` → ``f(top-k(z)) [B]``; backward: the centred vertex gradient of each row."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, problem: SubsetProblem, loss: str) -> torch.Tensor:
        rows = z.detach().reshape(-1, z.shape[-1]).cpu().numpy()
        grads, values = [], []
        for row in rows:
            support = np.argsort(-row, kind="stable")[: problem.k]
            g, f0 = problem.vertex_gradient(support, loss)
            grads.append(g)
            values.append(f0)
        ctx.save_for_backward(torch.as_tensor(np.stack(grads), dtype=z.dtype).reshape(z.shape))
        return torch.as_tensor(np.asarray(values), dtype=z.dtype).reshape(z.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (g,) = ctx.saved_tensors
        return grad_out.unsqueeze(-1) * g, None, None


def subset_loss(z: torch.Tensor, problem: SubsetProblem, loss: str = "swap") -> torch.Tensor:
    """``f`` of the top-k support of each row of ``z [..., n]`` → ``[...]``, with ``∂/∂z`` = the vertex gradient."""
    return _SubsetLoss.apply(z, problem, loss)

