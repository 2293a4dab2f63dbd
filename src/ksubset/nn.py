"""``KSubsetLayer``: a k-subset selection layer that trains through any registered gradient estimator."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from . import core
from . import estimators as _estimators
from .core import cardinality as _card
from .core._problem import check_generator

__all__ = ["KSubsetLayer"]

_EVAL_MODES = ("mode", "sample", "marginals")
_STATE_VERSION = 1


class KSubsetLayer(nn.Module):
    """Select k of n items: ``logits [..., n] → [..., n]``.

    Args:
        k: the default subset size (an int >= 0) or a count constraint (``ksubset.AtMost(k)``,
            ``Between(a, b)``, ``CountPotential(phi)``; estimators ``simple``, ``ste``, ``imle``);
            ``forward(..., k=...)`` overrides it per call, with an int or an integer tensor broadcastable to
            ``logits.shape[:-1]`` (per-row k) or a constraint.
        estimator: a pathwise estimator name from :func:`ksubset.estimators.available` (not
            ``"score_function"``, which needs the loss; call it directly).
        eval_mode: what evaluation mode (``layer.eval()``) returns: ``"mode"`` (default) the top-k k-hot
            vector, ``"sample"`` an exact sample (no gradient), ``"marginals"`` the exact inclusion
            probabilities (differentiable).
        **hyperparameters: the estimator's hyper-parameters (unknown ones are rejected, listing the valid
            ones); e.g. ``KSubsetLayer(10, "imle", lam=10.0)``.

    Training mode returns the estimator's forward value with its gradient. ``mask [..., n]`` (bool, True =
    available) and ``±inf`` logits pass through to the estimator or the core in both modes.

    State dict: the layer has no parameters; its configuration (``k``, estimator name, ``eval_mode``,
    hyper-parameters) and, for ``"aimle"``, the adaptive state (``beta`` and its running statistics) are
    saved as the module's extra state (key ``"_extra_state"``). ``load_state_dict`` *restores* them: a layer
    built with any configuration becomes the saved one.
    """

    def __init__(self, k: int, estimator: str = "simple", eval_mode: str = "mode", **hyperparameters: Any):
        super().__init__()
        self._configure(k, estimator, eval_mode, hyperparameters)

    def _configure(self, k: int, estimator: str, eval_mode: str, hyperparameters: dict[str, Any]) -> None:
        if isinstance(k, _card.CountConstraint):  # AtMost(k), Between(a, b), CountPotential(phi), ...
            pass
        elif not isinstance(k, numbers.Integral) or isinstance(k, bool) or int(k) < 0:
            raise ValueError(f"k must be an int >= 0 (per-row k goes to forward(k=...)), got {k!r}")
        if eval_mode not in _EVAL_MODES:
            raise ValueError(f"eval_mode must be one of {list(_EVAL_MODES)}, got {eval_mode!r}")
        if estimator == "score_function":
            raise ValueError(
                "KSubsetLayer needs a pathwise estimator; 'score_function' needs the loss f — call "
                "ksubset.estimators.score_function(logits, k, f, ...) instead. Pathwise estimators: "
                f"{[n for n in _estimators.available() if n != 'score_function']}"
            )
        est = _estimators.get(estimator, **hyperparameters)
        if isinstance(k, _card.CountConstraint) and estimator not in _estimators.cardinality.SUPPORTED:
            raise ValueError(f"estimator {estimator!r} has no count-constraint version; use one of "
                             f"{sorted(_estimators.cardinality.SUPPORTED)} with {k!r}")
        self.k = k if isinstance(k, _card.CountConstraint) else int(k)
        self.eval_mode = eval_mode
        self.estimator = est

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The estimator's hyper-parameters, defaults included."""
        return dict(self.estimator.hyperparameters)

    def forward(
        self,
        logits: Tensor,
        mask: Tensor | None = None,
        k: int | Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[..., n]``: the estimator's output in training mode, ``eval_mode``'s in evaluation mode."""
        kk = self.k if k is None else k
        check_generator(generator)
        if self.training:
            return self.estimator(logits, kk, mask, generator=generator)
        ops = _card if isinstance(kk, _card.CountConstraint) else core
        if self.eval_mode == "mode":
            return ops.mode(logits, kk, mask)
        if self.eval_mode == "sample":
            return ops.sample(logits, kk, mask, generator=generator)
        return ops.marginals(logits, kk, mask)

    def extra_repr(self) -> str:
        parts = [f"k={self.k}", f"estimator={self.estimator.name!r}", f"eval_mode={self.eval_mode!r}"]
        parts += [f"{name}={value!r}" for name, value in self.estimator.hyperparameters.items()]
        return ", ".join(parts)

    def get_extra_state(self) -> dict[str, Any]:
        state = self.estimator.state
        return {
            "version": _STATE_VERSION,
            "k": self.k,
            "estimator": self.estimator.name,
            "eval_mode": self.eval_mode,
            "hyperparameters": dict(self.estimator.hyperparameters),
            "estimator_state": None if state is None else state.state_dict(),
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not a KSubsetLayer (version {_STATE_VERSION}) state: {state!r}")
        self._configure(state["k"], state["estimator"], state["eval_mode"], dict(state["hyperparameters"]))
        if state.get("estimator_state") is not None and self.estimator.state is not None:
            self.estimator.state.load_state_dict(state["estimator_state"])
