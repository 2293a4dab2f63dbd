"""The methods compared in E3, each a way to turn selector logits into a (relaxed) k-subset in training.

Every method except L2X's own relaxation is a registered estimator of :mod:`ksubset.estimators` used through
:class:`ksubset.nn.KSubsetLayer` (or, for the score function, called with the loss). L2X's relaxation
(Chen et al. 2018) is defined here: ``k`` independent Gumbel-softmax draws over the positions, combined by
an elementwise maximum — a continuous vector in ``[0, 1]^n`` with at most k large entries. In evaluation
every method selects the top-k of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ... import mode
from ...estimators import gumbel_noise
from ...nn import KSubsetLayer

__all__ = ["Method", "METHODS", "REFERENCE_ROWS", "l2x_relaxation"]


@dataclass(frozen=True)
class Method:
    """A row of the table: ``kind`` is ``"layer"`` (a KSubsetLayer estimator), ``"l2x"`` or ``"score_function"``."""

    label: str
    kind: str
    estimator: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def layer(self, k: int) -> KSubsetLayer | None:
        return KSubsetLayer(k, self.estimator, **self.hyperparameters) if self.kind == "layer" else None

    def describe(self) -> str:
        hp = ", ".join(f"{key}={val}" for key, val in self.hyperparameters.items())
        return f"{self.estimator or self.kind}({hp})"


#: the trained methods, keyed by the short name used on the command line and in unit names
METHODS: dict[str, Method] = {
    "simple": Method("SIMPLE", "layer", "simple"),
    "l2x": Method("L2X (t = 0.1)", "l2x", "l2x", {"tau": 0.1}),
    "softsub": Method("SoftSub (t = 0.5)", "layer", "relaxed_topk", {"temperature": 0.5}),
    "imle": Method("I-MLE (τ = 30)", "layer", "imle", {"noise": "sum_of_gamma", "noise_scale": 30.0, "lam": 1000.0}),
    "st_topk": Method("ST relaxed top-k (t = 0.5)", "layer", "st_relaxed_topk", {"temperature": 0.5}),
    "sfe": Method("score function (LOO, S = 4)", "score_function", "score_function",
                  {"num_samples": 4, "baseline": "leave_one_out"}),
}
#: rows for scale: a predictor trained on fixed selections
REFERENCE_ROWS = {"random": "random selection", "oracle": "oracle (annotated words)"}


def l2x_relaxation(logits: Tensor, k: int | Tensor, mask: Tensor | None = None, *, tau: float = 0.1,
                   generator: torch.Generator | None = None) -> Tensor:
    """L2X's continuous subset sampler: ``max_j softmax((logits + G_j) / tau)`` over ``j < k``, ``[..., n]``.

    ``k`` is an int or a per-row tensor (row r uses its first ``k_r`` draws); masked-out and ``-inf``
    positions get exactly 0. Gradients flow through the softmaxes.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    kk = torch.as_tensor(k, device=logits.device).expand(logits.shape[:-1])
    K = int(kk.max()) if kk.numel() else 0
    if K == 0:
        return torch.zeros_like(logits)
    G = gumbel_noise((K, *logits.shape), dtype=logits.dtype, device=logits.device, generator=generator)
    soft = torch.softmax((logits.unsqueeze(0) + G) / tau, dim=-1)  # [K, ..., n]
    soft = torch.nan_to_num(soft, nan=0.0)  # a row with nothing available would give NaN
    use = (torch.arange(K, device=logits.device).view(K, *([1] * kk.dim())) < kk).unsqueeze(-1)
    return torch.where(use, soft, torch.zeros_like(soft)).amax(0)


def top_k(logits: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """Test-time selection: the top-k indicator among the available positions."""
    return mode(logits.detach(), k, mask)
