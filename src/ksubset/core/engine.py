"""The engine contract, the engines that implement it, and which one runs.

An *engine* computes exact quantities on the canonical problem of :mod:`._problem` (``theta [B, n]`` finite
on free items and ``-inf`` elsewhere, ``k [B]`` int64 with ``0 <= k <= #free``, ``K = max(k)``) without
autograd; :mod:`.ops` turns its functions into registered, differentiable PyTorch operators. Engines:
``reference`` (sequential, the test oracle), ``tree`` (plain PyTorch, any device) and ``kernels`` (numba,
CPU; present when numba is installed).

Which engine runs: the innermost :func:`use_engine` block, else the process-wide choice of the deprecated
:func:`set_engine`, else the device's default (:func:`default_engine`: ``kernels`` on CPU when numba is
installed, ``tree`` elsewhere). The choice is read when a public function is called (in eager mode) or
traced (under ``torch.compile``, where it is baked into the compiled graph; a compiled function is
re-traced when the choice changes, see :func:`current_override`).
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from . import closed_form, kernels, reference, tree

__all__ = [
    "Engine",
    "available_engines",
    "default_engine",
    "engine_for_call",
    "engine_module",
    "resolve",
    "set_engine",
    "use_engine",
]


@runtime_checkable
class Engine(Protocol):
    """What every engine implements (as module-level functions), all on the canonical problem.

    No function needs autograd, and none draws random numbers itself: samplers consume the uniforms that
    :meth:`uniforms` draws (so that randomness comes only from the caller's generator, and so that the
    sampling operators are deterministic functions of their inputs).
    """

    def log_partition(self, theta: Tensor, k: Tensor, K: int) -> Tensor:
        """``log e_k(exp theta)`` per row, ``[B]``."""

    def marginals(self, theta: Tensor, k: Tensor, K: int) -> Tensor:
        """``Pr(z_i = 1)``, ``[B, n]``."""

    def cov_vec(self, theta: Tensor, k: Tensor, K: int, v: Tensor) -> Tensor:
        """``Cov(z) v`` per row, ``[B, n]`` (entries of ``v`` on non-free items are ignored)."""

    def entropy(self, theta: Tensor, k: Tensor, K: int) -> Tensor:
        """Exact entropy per row, ``[B]``."""

    def uniforms(self, theta: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """The uniforms the sampler needs for ``num_samples`` draws, ``[S, B, ...]`` (engine-specific)."""

    def sample_given(self, theta: Tensor, k: Tensor, K: int, u: Tensor) -> Tensor:
        """Exact draws ``[S, B, n]`` int64 in {0, 1}, a deterministic function of the uniforms ``u``."""

    def sample_and_marginals_given(self, theta: Tensor, k: Tensor, K: int, u: Tensor) -> tuple[Tensor, Tensor]:
        """``sample_given`` and ``marginals`` from one pass."""


@runtime_checkable
class ThirdOrder(Protocol):
    """Engines that also give the third cumulant (second derivatives of the marginals)."""

    def cov3(self, theta: Tensor, k: Tensor, K: int, v: Tensor, w: Tensor) -> Tensor:
        """``sum_jl kappa_ijl v_j w_l``, ``[B, n]``."""


@runtime_checkable
class FusedEntropy(Protocol):
    """Engines that give the entropy and its gradient from one sweep (used for eager first-order backward)."""

    def entropy_with_grad(self, theta: Tensor, k: Tensor, K: int) -> tuple[Tensor, Tensor]:
        """``H`` ``[B]`` and ``dH/dtheta = -Cov(z) theta`` ``[B, n]`` (0 on non-free items)."""


@runtime_checkable
class KeptSweeps(Protocol):
    """Engines whose ``Cov(z) v`` can reuse what ``sample_and_marginals`` computed (SIMPLE's backward)."""

    def sample_and_marginals_kept(self, theta: Tensor, k: Tensor, K: int, u: Tensor) -> tuple[Tensor, Tensor, Any]:
        """``sample_and_marginals_given`` and an engine-specific state (None: nothing worth keeping)."""

    def cov_vec_kept(self, theta: Tensor, k: Tensor, K: int, v: Tensor, kept: Any) -> Tensor:
        """``cov_vec`` for the same ``theta`` and ``k``, given the state (not None) of that forward."""


_BUILTIN: dict[str, ModuleType] = {"reference": reference, "tree": tree}

#: The choice of the innermost ``use_engine`` block (per thread / task).
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("ksubset_engine", default=None)
#: Mirror of the innermost ``use_engine`` choice as a plain global: torch.compile cannot read a ContextVar,
#: but it reads (and guards on) a module global, so a compiled function re-traces when the choice changes.
_override_mirror: str | None = None
#: The process-wide choice of the deprecated ``set_engine``.
_global_choice: str | None = None


def _kernels() -> ModuleType | None:
    return kernels if kernels.available() else None


def available_engines() -> list[str]:
    """Names of the engines that work here (``kernels`` only with numba installed)."""
    names = list(_BUILTIN)
    if _kernels() is not None:
        names.append("kernels")
    return names


def engine_module(name: str) -> ModuleType:
    """The module implementing engine ``name`` (raises ``ValueError`` for unknown/unavailable names)."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in CLOSED_FORMS:
        return CLOSED_FORMS[name]  # type: ignore[return-value]  # an object with the engine's functions
    if name == "kernels" and _kernels() is not None:
        return _kernels()  # type: ignore[return-value]
    raise ValueError(f"unknown or unavailable engine {name!r}; available: {available_engines()}")


def _check(name: str | None) -> None:
    if name is not None and name not in available_engines():
        raise ValueError(f"unknown or unavailable engine {name!r}; available: {available_engines()}")


def default_engine(device: torch.device | str) -> str:
    """The automatic choice for a device: the compiled kernel on CPU when numba is installed, else the tree."""
    if torch.device(device).type == "cpu" and _kernels() is not None:
        return "kernels"
    return "tree"


@contextlib.contextmanager
def use_engine(name: str | None) -> Iterator[None]:
    """Run the block with engine ``name`` (``"reference"``, ``"tree"``, ``"kernels"``; ``None`` = automatic).

    Per thread and per asyncio task (a ``contextvars`` variable); blocks nest. ``kernels`` applies to CPU
    tensors only (others fall back to the device default).
    """
    global _override_mirror
    _check(name)
    token = _override.set(name)
    before, _override_mirror = _override_mirror, name
    try:
        yield
    finally:
        _override.reset(token)
        _override_mirror = before


def set_engine(name: str | None) -> None:
    """Deprecated: force one engine process-wide (``None`` = automatic). Use :func:`use_engine` instead."""
    global _global_choice
    warnings.warn(
        "ksubset.core.set_engine is deprecated; use the context manager ksubset.core.use_engine(name)",
        DeprecationWarning,
        stacklevel=2,
    )
    _check(name)
    _global_choice = name


def current_override() -> str | None:
    """The engine forced for the current call (``use_engine``, then ``set_engine``), or None."""
    if torch.compiler.is_compiling():
        choice = _override_mirror  # a global: Dynamo guards on its value
    else:
        choice = _override.get()
    return choice if choice is not None else _global_choice


#: The engines of rows that choose one item or all but one (not general engines: chosen per call, below).
CLOSED_FORMS = {"closed_form_one": closed_form.ONE, "closed_form_all_but_one": closed_form.ALL_BUT_ONE}


def engine_for_call(device: torch.device, dtype: torch.dtype, n: int, k_static: int | None) -> str:
    """The engine for one public call: :func:`resolve`, except that without a forced choice a Python-int
    ``k ≤ 1`` or ``k ≥ n − 1`` takes the closed forms of :mod:`.closed_form` (every row then has
    ``k ∈ {0, 1}``, respectively ``k ∈ {m − 1, m}``, of its ``m`` free items, whatever the mask, the infinite
    logits and the limit rule)."""
    if current_override() is None and k_static is not None:
        if k_static <= 1:
            return "closed_form_one"
        if k_static >= n - 1:
            return "closed_form_all_but_one"
    return resolve(device, dtype)


def resolve(device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The name of the engine that runs for tensors on ``device`` (see the module docstring)."""
    choice = current_override()
    if choice == "kernels" and (device.type != "cpu" or dtype not in (None, torch.float32, torch.float64)):
        choice = None
    return choice if choice is not None else default_engine(device)
