"""The synthetic tabular sets of the L2X paper (Chen et al. 2018) and the training of one unit on them.

Inputs ``X ~ N(0, I_10)``; a label ``y ∈ {0, 1}`` with ``P(y = 1 | X) = 1 / (1 + exp(f(X)))``:

* ``xor``: ``f = X_1 X_2`` — true features {1, 2};
* ``orange_skin``: ``f = sum_{i<=4} X_i^2 - 4`` — {1, 2, 3, 4};
* ``nonlinear_additive``: ``f = -100 sin(2 X_1) + 2 |X_2| + X_3 + exp(-X_4)`` — {1, 2, 3, 4};
* ``switch``: ``X_1 ~ N(±3, 1)`` (a fair coin picks the sign); orange skin on X_2..X_5 when it is +, the
  nonlinear additive function on X_6..X_9 when it is − — true features X_1 and the active group (5 per row).

(Features are numbered from 1 as in the paper; tensors index from 0.) Each method learns a selector of
``k`` = the number of true features and a predictor on ``x ⊙ z``; the metric is the median rank of the true
features under the selector's logits, per test row, whose ideal value is ``(m + 1) / 2``.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ...estimators import score_function
from .methods import METHODS, l2x_relaxation
from .metrics import median_rank
from .model import TabularPredictor, TabularSelector

__all__ = ["TABULAR_SETS", "make_tabular", "train_tabular"]

DIM = 10
#: name -> number of true features per row (the k each method selects)
TABULAR_SETS = {"xor": 2, "orange_skin": 4, "nonlinear_additive": 4, "switch": 5}


def _orange(x: Tensor) -> Tensor:
    return (x**2).sum(-1) - 4.0


def _additive(x: Tensor) -> Tensor:
    return -100 * torch.sin(2 * x[:, 0]) + 2 * x[:, 1].abs() + x[:, 2] + torch.exp(-x[:, 3])


def make_tabular(name: str, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(X [n, 10], y [n] long, truth [n, 10] bool)`` for set ``name``, a pure function of ``seed``."""
    if name not in TABULAR_SETS:
        raise ValueError(f"unknown tabular set {name!r}; available: {list(TABULAR_SETS)}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    truth = torch.zeros(n, DIM, dtype=torch.bool)
    if name == "xor":
        f = x[:, 0] * x[:, 1]
        truth[:, :2] = True
    elif name == "orange_skin":
        f = _orange(x[:, :4])
        truth[:, :4] = True
    elif name == "nonlinear_additive":
        f = _additive(x[:, :4])
        truth[:, :4] = True
    else:
        plus = torch.rand(n, generator=g) < 0.5
        x[:, 0] = x[:, 0] + torch.where(plus, 3.0, -3.0).double()
        f = torch.where(plus, _orange(x[:, 1:5]), _additive(x[:, 5:9]))
        truth[:, 0] = True
        truth[plus, 1:5] = True
        truth[~plus, 5:9] = True
    p1 = torch.sigmoid(-f)  # 1 / (1 + exp(f)), without overflow
    y = (torch.rand(n, generator=g, dtype=torch.float64) < p1).long()
    return x.float(), y, truth


def train_tabular(name: str, method: str, seed: int, *, n_train: int = 10000, n_test: int = 1000,
                  epochs: int = 10, batch_size: int = 100, lr: float = 1e-3) -> dict:
    """Train one method on one set; ``median_rank`` (mean over test rows) beside its ``ideal`` value."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {list(METHODS)}")
    k = TABULAR_SETS[name]
    x, y, _ = make_tabular(name, n_train, seed=1000 + seed)
    xt, _, truth = make_tabular(name, n_test, seed=2000 + seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sel, pred = TabularSelector(DIM), TabularPredictor(DIM)
    opt = torch.optim.Adam([*sel.parameters(), *pred.parameters()], lr=lr)
    spec = METHODS[method]
    layer = spec.layer(k)
    ce = torch.nn.functional.cross_entropy
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            logits = sel(xb)
            if spec.kind == "score_function":
                def f(z: Tensor, xb=xb, yb=yb) -> Tensor:  # [S, B, d] -> [S, B]
                    out = pred(xb.expand_as(z), z)
                    return ce(out.reshape(-1, 2), yb.repeat(z.shape[0]), reduction="none").view(z.shape[:-1])

                loss = score_function(logits, k, f, generator=gen, **spec.hyperparameters).mean()
            else:
                if spec.kind == "l2x":
                    z = l2x_relaxation(logits, k, generator=gen, **spec.hyperparameters)
                else:
                    assert layer is not None, "every method but the score function and L2X has a layer"
                    z = layer(logits, None, k, generator=gen)
                loss = ce(pred(xb, z), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        ranks = median_rank(sel(xt), truth)
    return {
        "median_rank": float(ranks.mean()),
        "median_rank_median": float(ranks.median()),
        "ideal": (k + 1) / 2,
        "seconds": round(time.perf_counter() - t0, 2),
    }
