"""The exact core as registered PyTorch operators (namespace ``ksubset``).

Every operator works on the canonical problem of :mod:`._problem` and is opaque to ``torch.compile`` (the
compiler sees only its fake implementation, which gives the output shapes), so the numba kernel and the
data-dependent parts (``K = max(k)``, the validation's host checks) never enter a traced graph.

=================================================================  =========================================
operator                                                           returns
=================================================================  =========================================
``canonical(x, k, mask?, batch_shape, name, k_static?) -> (k_free,      validates (raises ``ValueError`` naming
free, forced)``                                                    the row) and reduces ``±inf``/masked items
``log_partition(theta, k, engine) -> [B]``                         ``log Z``; d/dtheta = ``marginals``
``marginals(theta, k, engine) -> [B, n]``                          ``mu``; vjp/jvp = ``cov_vec``
``cov_vec(theta, k, v, engine) -> [B, n]``                         ``Cov(z) v``; d/dtheta = ``cov3``
``cov3(theta, k, v, w, engine) -> [B, n]``                         ``sum_jl kappa_ijl v_j w_l``; not
                                                                   differentiable (raises ``RuntimeError``)
``entropy(theta, k, engine) -> [B]``                               ``H``; d/dtheta = ``-Cov(z) theta``
``sample(theta, k, u, engine) -> [S, B, n] int64``                 draws from the uniforms ``u`` (no grad)
``sample_and_marginals(theta, k, u, engine) -> ([S, B, n], [B,     one pass; d mu as ``marginals``
n])``
=================================================================  =========================================

``engine`` is an engine name (``"auto"`` = the device default, see :mod:`.engine`). Implementations: CPU
runs any engine (``kernels`` by default when numba is installed); every other device (CUDA) runs ``tree``
or ``reference``. ``cov3`` runs on the engine when it provides one (``tree``, ``reference``), else on
``tree``. Randomness never happens inside an operator: the sampling operators take the uniforms ``u``,
drawn by the caller with ``torch.rand(..., generator=...)`` in the layout of the engine's ``uniforms``.

Batching: every operator has a ``vmap`` rule (the vmapped dimension is folded into the row dimension ``B``).
Autograd: registered here (used by ``torch.compile`` and direct calls); :mod:`.functions` wraps the same
operators in ``autograd.Function``\\ s that add forward mode (``jvp``) for eager ``torch.func``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import _disable_current_modes

from .engine import CLOSED_FORMS, default_engine, engine_module
from .numerics import centre

__all__ = [
    "canonical",
    "log_partition",
    "marginals",
    "cov_vec",
    "cov3",
    "entropy",
    "sample",
    "sample_and_marginals",
    "OPS",
    "unsupported_order",
]


def _engine(name: str, device: torch.device) -> ModuleType:
    if name == "auto":
        name = default_engine(device)
    if name == "kernels" and device.type != "cpu":
        raise ValueError(f"the kernels engine runs on CPU tensors only, got a tensor on {device}")
    return engine_module(name)


def _K(k: Tensor, engine: str = "") -> int | None:
    """The truncation length ``max(k)`` (a host value: read inside the operators, never in a graph); the
    closed forms do not need it (and skip the host synchronisation)."""
    if engine in CLOSED_FORMS:
        return None
    return int(k.max()) if k.numel() else 0


# --------------------------------------------------------------------------------------------------------
# validation


def _row_of(flat_index: int, batch_shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for size in reversed(batch_shape):
        idx.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(idx))


def direct(*tensors: Tensor | None) -> bool:
    """Whether a call may run an operator's implementation directly, skipping the dispatcher.

    True in plain eager mode (not compiling, no ``torch.func`` transform wrapping the inputs): there the
    operator would call the same implementation, and the Python dispatch of a custom operator costs more
    than the work on small inputs. Checked in this order so that Dynamo never evaluates the second test.
    """
    if torch.compiler.is_compiling():
        return False
    return not any(t is not None and _is_wrapped(t) for t in tensors)


_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def canonical_checked(
    x: Tensor, k: Tensor, mask: Tensor | None, batch_shape: Sequence[int], name: str, k_static: int | None
) -> tuple[Tensor, Tensor, Tensor, bool, tuple[float, float] | None]:
    """The implementation of ``canonical``, plus whether every item is free (the common call) and, then, the
    smallest and largest logit (which the limit rule's check reuses)."""
    B, n = x.shape
    if mask is None and B > 0 and k_static is not None and 0 <= k_static <= n:
        # The common call (an int k <= n, every logit finite): one reduction, one host sync. aminmax
        # propagates NaN, and lo > -inf, hi < inf exclude infinite logits.
        lo, hi = torch.stack(torch.aminmax(x)).tolist()
        if -math.inf < lo and hi < math.inf:
            free = torch.ones((B, n), dtype=torch.bool, device=x.device)
            return k.clone(), free, ~free, True, (lo, hi)
    avail = x != float("-inf")
    if mask is not None:
        avail = avail & mask
    forced = avail & (x == float("inf"))
    free = avail & ~forced
    isnan = torch.isnan(x)
    n_avail = avail.sum(-1)
    n_forced = forced.sum(-1)
    bad = isnan.any(-1) | (k < 0) | (k > n_avail) | (n_forced > k)
    if B > 0 and bool(bad.any()):
        _raise_first_problem(isnan, k, n_avail, n_forced, list(batch_shape), name)
    return k - n_forced, free, forced, False, None


def _canonical(
    x: Tensor, k: Tensor, mask: Tensor | None, batch_shape: Sequence[int], name: str, k_static: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``x [B, n]`` float, ``k [B]`` int64, ``mask [B, n]`` bool or None → ``(k_free [B], free, forced)``.

    Raises ``ValueError`` (naming ``name`` and the row in ``batch_shape``) for NaN logits, ``k`` larger than
    a row's available items, or more ``+inf`` items than ``k``. ``k_static``: ``k`` when the caller gave
    one Python int (every row's), which allows a cheaper check.
    """
    return canonical_checked(x, k, mask, batch_shape, name, k_static)[:3]


canonical = torch.library.custom_op("ksubset::canonical", mutates_args=())(_canonical)


@canonical.register_fake
def _(x, k, mask, batch_shape, name, k_static):
    B, n = x.shape
    return k.new_empty((B,)), x.new_empty((B, n), dtype=torch.bool), x.new_empty((B, n), dtype=torch.bool)


def _raise_first_problem(isnan, kf, n_avail, n_forced, batch_shape, name) -> None:
    def where(i: int) -> str:
        return f" in row {_row_of(i, batch_shape)}" if len(batch_shape) else ""

    rows = torch.nonzero(isnan.any(-1)).flatten()
    if len(rows):
        i = int(rows[0])
        raise ValueError(f"{name} contains NaN{where(i)} ({len(rows)} row(s) affected)")
    rows = torch.nonzero(kf < 0).flatten()
    if len(rows):
        i = int(rows[0])
        raise ValueError(f"k must be >= 0, got k={int(kf[i])}{where(i)}")
    rows = torch.nonzero(kf > n_avail).flatten()
    if len(rows):
        i = int(rows[0])
        raise ValueError(
            f"k={int(kf[i])} is larger than the number of available items ({int(n_avail[i])}){where(i)}: "
            "masked-out items and -inf logits cannot be selected"
        )
    rows = torch.nonzero(n_forced > kf).flatten()
    if len(rows):
        i = int(rows[0])
        raise ValueError(
            f"{name} has {int(n_forced[i])} +inf entries (forced items){where(i)}, more than k={int(kf[i])}"
        )


# --------------------------------------------------------------------------------------------------------
# the differentiable primitives (device-agnostic implementations; the CPU ones below also run ``kernels``)


def _opaque(fn):
    """Run an implementation with the Python dispatch modes that intercepted the operator switched off.

    The operator is opaque: a mode (AOTAutograd's runtime checks, opcheck's schema check) has already seen
    the call, and must not see the engine's inner work — the tree and reference engines use ``torch.func``
    (forward-mode duals, nested grad) inside, which fails under such a mode or below the autograd keys.
    """

    @functools.wraps(fn)
    def run(*args):
        with _disable_current_modes(), _autograd_dispatch_on():
            return fn(*args)

    return run


def _autograd_dispatch_on():
    """Undo the registered autograd kernel's "below autograd" guard for the engine's own ``torch.func`` use.

    The operator's autograd kernel runs the implementation with the autograd dispatch keys excluded; the
    engines' forward-mode duals (``make_dual``) then hit an internal assertion. Re-including the keys only
    affects the engine's private computation (its inputs carry no autograd history here).
    """
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set() - _AUTOGRAD_KEYS
    return torch._C._ForceDispatchKeyGuard(include, exclude)


def _keys(*names: str) -> torch._C.DispatchKeySet:
    out = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, names[0]))
    for name in names[1:]:
        out = out | torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, name))
    return out


#: What ``_AutoDispatchBelowAutograd`` excludes (the autograd functionality keys), nothing else.
_AUTOGRAD_KEYS = _keys("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor")


def _define(name: str, fn, fake):
    op = torch.library.custom_op(f"ksubset::{name}", mutates_args=())(_opaque(fn))
    op.register_fake(fake)
    return op


def _log_partition(theta: Tensor, k: Tensor, engine: str) -> Tensor:
    return _engine(engine, theta.device).log_partition(theta, k, _K(k, engine))


def _marginals(theta: Tensor, k: Tensor, engine: str) -> Tensor:
    return _engine(engine, theta.device).marginals(theta, k, _K(k, engine)).contiguous()


def _cov_vec(theta: Tensor, k: Tensor, v: Tensor, engine: str) -> Tensor:
    return _engine(engine, theta.device).cov_vec(theta, k, _K(k, engine), v.contiguous()).contiguous()


def _cov3(theta: Tensor, k: Tensor, v: Tensor, w: Tensor, engine: str) -> Tensor:
    eng = _engine(engine, theta.device)
    if not hasattr(eng, "cov3"):
        eng = engine_module("tree")
    return eng.cov3(theta, k, _K(k, engine), v, w).contiguous()


def _entropy(theta: Tensor, k: Tensor, engine: str) -> Tensor:
    return _engine(engine, theta.device).entropy(theta, k, _K(k, engine))


def fused_entropy(engine: str, device: torch.device) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """``(theta, k) -> (H [B], dH/dtheta [B, n])`` from one sweep, for engines that offer it, else None.

    Not an operator: :mod:`.functions` uses it only in plain eager mode, for a first-order backward that
    reuses the forward's sweep (a second-order backward recomputes through the operators).
    """
    eng = _engine(engine, device)
    fn = getattr(eng, "entropy_with_grad", None)
    if fn is None:
        return None
    return lambda theta, k: fn(theta, k, _K(k, engine))


def fused_kl(engine: str, device: torch.device):
    """For engines that offer it, ``(theta, phi, k) -> (KL [B], dKL/dtheta [B, n], dKL/dphi [B, n])`` of
    ``KL(p_theta || p_phi)`` on the same free items (``-inf`` on the same others), from one sweep per
    distribution, else None. Not an operator: :mod:`.functions` uses it in plain eager mode only.

    ``KL = H(q) - H(p) + phi' . (mu_q - mu_p)`` with ``phi'`` the free logits minus their mean (exact: both
    marginal vectors sum to ``k``; the centring keeps a large common offset out of the dot product), in float64;
    ``dKL/dtheta = Cov_p (theta - phi)`` and ``dKL/dphi = mu_q - mu_p``.
    """
    eng = _engine(engine, device)
    fn = getattr(eng, "entropy_marginals_cov", None)
    if fn is None:
        return None

    def kl(theta: Tensor, phi: Tensor, k: Tensor, with_grad: bool = True):
        """``(KL, dKL/dtheta, dKL/dphi)``; without ``with_grad`` the first sweep skips ``Cov_p`` (then
        ``dKL/dtheta`` is None)."""
        K = _K(k, engine)
        free = torch.isfinite(theta)
        h_p, mu_p, d_theta = fn(theta, k, K, torch.where(free, theta - phi, 0.0) if with_grad else None)
        h_q, mu_q, _ = fn(phi, k, K, None)
        phi64 = torch.where(free, phi.to(torch.float64), 0.0)
        centred = torch.where(free, phi64 - phi64.sum(-1, keepdim=True) / free.sum(-1, keepdim=True).clamp_min(1), 0.0)
        d_phi = mu_q - mu_p
        value = h_q - h_p + (centred * d_phi).sum(-1)
        return value, (d_theta.to(theta.dtype) if d_theta is not None else None), d_phi.to(theta.dtype)

    return kl


def kept_sweeps(engine: str, device: torch.device):
    """For engines that offer it, ``(forward, backward)``: ``forward(theta, k, u) -> (z, mu, kept)`` is
    ``sample_and_marginals`` that also returns what ``backward(theta, k, v, kept) -> Cov(z) v`` reuses (the
    tilt, or the categorical's probabilities), so a first-order backward does not redo the forward's work.
    None for the other engines. Not operators: :mod:`.functions` uses them in plain eager mode only.
    """
    eng = _engine(engine, device)
    fwd = getattr(eng, "sample_and_marginals_kept", None)
    if fwd is None:
        return None
    bwd = eng.cov_vec_kept
    K: int | None = None

    def forward(theta: Tensor, k: Tensor, u: Tensor):
        nonlocal K
        K = _K(k, engine)  # the host read, once for both
        return fwd(theta, k, K, u)

    def backward(theta: Tensor, k: Tensor, v: Tensor, kept) -> Tensor:
        return bwd(theta, k, K, v.contiguous(), kept).contiguous()

    return forward, backward


def _sample(theta: Tensor, k: Tensor, u: Tensor, engine: str) -> Tensor:
    return _engine(engine, theta.device).sample_given(theta, k, _K(k, engine), u).contiguous()


def _sample_and_marginals(theta: Tensor, k: Tensor, u: Tensor, engine: str) -> tuple[Tensor, Tensor]:
    z, mu = _engine(engine, theta.device).sample_and_marginals_given(theta, k, _K(k, engine), u)
    return z.contiguous(), mu.contiguous()  # the layout the fake implementations promise


def _row_fake(theta, *args):
    return theta.new_empty(theta.shape[:1])


def _item_fake(theta, *args):
    return torch.empty_like(theta)


def _sample_fake(theta, k, u, engine):
    return theta.new_empty((u.shape[0], *theta.shape), dtype=torch.int64)


def _sample_and_marginals_fake(theta, k, u, engine):
    return _sample_fake(theta, k, u, engine), torch.empty_like(theta)


log_partition = _define("log_partition", _log_partition, _row_fake)
marginals = _define("marginals", _marginals, _item_fake)
cov_vec = _define("cov_vec", _cov_vec, _item_fake)
cov3 = _define("cov3", _cov3, _item_fake)
entropy = _define("entropy", _entropy, _row_fake)
sample = _define("sample", _sample, _sample_fake)
sample_and_marginals = _define("sample_and_marginals", _sample_and_marginals, _sample_and_marginals_fake)

#: The implementations behind the operators (what :func:`direct` calls run).
IMPL: dict[str, Callable[..., Any]] = {
    "canonical": _canonical,
    "log_partition": _log_partition,
    "marginals": _marginals,
    "cov_vec": _cov_vec,
    "cov3": _cov3,
    "entropy": _entropy,
    "sample": _sample,
    "sample_and_marginals": _sample_and_marginals,
}

#: Every registered operator (for ``torch.library.opcheck``).
OPS = {
    "canonical": canonical,
    "log_partition": log_partition,
    "marginals": marginals,
    "cov_vec": cov_vec,
    "cov3": cov3,
    "entropy": entropy,
    "sample": sample,
    "sample_and_marginals": sample_and_marginals,
}


# --------------------------------------------------------------------------------------------------------
# vmap: fold the vmapped dimension into the rows


def _fold_rows(x: Tensor | None, d: int | None, V: int) -> Tensor | None:
    """``[..V.., B, *rest]`` (vmapped dim ``d``, or none) → ``[V * B, *rest]``."""
    if x is None:
        return None
    x = x.movedim(d, 0) if d is not None else x.unsqueeze(0).expand(V, *x.shape)
    # contiguous: an expanded (unbatched) input would otherwise stay a stride-0 view
    return x.reshape(V * x.shape[1], *x.shape[2:]).contiguous()


def _fold_uniforms(u: Tensor, d: int | None, V: int) -> Tensor:
    """``u [S, B, X]`` with a vmapped dim → ``[S, V * B, X]`` (one row's uniforms stay that row's)."""
    u = u.movedim(d, 0) if d is not None else u.unsqueeze(0).expand(V, *u.shape)
    u = u.movedim(0, 1)
    return u.reshape(u.shape[0], V * u.shape[2], *u.shape[3:]).contiguous()


def _unfold(y: Tensor, V: int, row_dim: int = 0) -> Tensor:
    return y.unflatten(row_dim, (V, y.shape[row_dim] // V))


def _vmap_rows(op):
    """A vmap rule for an operator whose tensor arguments all have rows first (``[B, ...]``)."""

    def rule(info, in_dims, *args):
        V = info.batch_size
        folded = [
            _fold_rows(a, d, V) if isinstance(a, Tensor) else a for a, d in zip(args, in_dims, strict=True)
        ]
        out = op(*folded)
        if isinstance(out, tuple):
            return tuple(_unfold(o, V) for o in out), tuple(0 for _ in out)
        return _unfold(out, V), 0

    return rule


for _op in (log_partition, marginals, cov_vec, cov3, entropy):
    torch.library.register_vmap(_op, _vmap_rows(_op))


def _canonical_vmap(info, in_dims, x, k, mask, batch_shape, name, k_static):
    V = info.batch_size
    out = canonical(
        _fold_rows(x, in_dims[0], V), _fold_rows(k, in_dims[1], V), _fold_rows(mask, in_dims[2], V),
        [V, *batch_shape], name, k_static,
    )
    return tuple(_unfold(o, V) for o in out), (0, 0, 0)


torch.library.register_vmap(canonical, _canonical_vmap)


def _sampling_vmap(op):
    def rule(info, in_dims, theta, k, u, engine):
        V = info.batch_size
        out = op(_fold_rows(theta, in_dims[0], V), _fold_rows(k, in_dims[1], V), _fold_uniforms(u, in_dims[2], V),
                 engine)
        if isinstance(out, tuple):
            z, mu = out
            return (_unfold(z, V, 1), _unfold(mu, V)), (1, 0)
        return _unfold(out, V, 1), 1

    return rule


torch.library.register_vmap(sample, _sampling_vmap(sample))
torch.library.register_vmap(sample_and_marginals, _sampling_vmap(sample_and_marginals))


# --------------------------------------------------------------------------------------------------------
# derivatives, written once for any set of primitives (the operators here; the autograd.Functions of
# :mod:`.functions` in eager mode)


def unsupported_order(how: str) -> RuntimeError:
    """The error for a derivative the core does not offer (``how``: which derivative was asked for)."""
    return RuntimeError(
        f"ksubset: {how} is not supported: it needs the fourth cumulant of the k-subset distribution. "
        "Supported: log_partition up to order 3; marginals, sample_and_marginals/simple (through the "
        "marginals), entropy, kl_divergence and kl_uniform up to order 2 (forward and reverse mode)"
    )


def tilted_logits(theta: Tensor, k: Tensor) -> Tensor:
    """``theta + c`` on free items, 0 elsewhere (``c`` detached; ``Cov(z) 1 = 0`` so any ``c`` is exact)."""
    x = theta + centre(theta.detach(), k).unsqueeze(-1)
    return torch.where(torch.isfinite(theta), x, 0.0)


class Derivatives:
    """Vector-Jacobian products of the primitives, in terms of primitives ``P`` (so they differentiate)."""

    def __init__(self, P) -> None:
        self.P = P

    def log_partition(self, theta, k, engine, g):
        return g.unsqueeze(-1) * self.P.marginals(theta, k, engine)

    def marginals(self, theta, k, engine, g):
        return self.P.cov_vec(theta, k, g, engine)

    def cov_vec(self, theta, k, v, engine, g, need_theta: bool, need_v: bool):
        d_theta = self.P.cov3(theta, k, v, g, engine) if need_theta else None
        d_v = self.P.cov_vec(theta, k, g, engine) if need_v else None
        return d_theta, d_v

    def entropy(self, theta, k, engine, g):
        return -g.unsqueeze(-1) * self.P.cov_vec(theta, k, tilted_logits(theta, k), engine)


class _OpPrimitives:
    log_partition = staticmethod(log_partition)
    marginals = staticmethod(marginals)
    cov_vec = staticmethod(cov_vec)
    cov3 = staticmethod(cov3)
    entropy = staticmethod(entropy)


_D = Derivatives(_OpPrimitives)


def _save_theta_k(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.engine = inputs[-1]


def _save_cov_vec(ctx, inputs, output):
    theta, k, v, engine = inputs
    ctx.save_for_backward(theta, k, v)
    ctx.engine = engine


def _bw_log_partition(ctx, g):
    theta, k = ctx.saved_tensors
    return _D.log_partition(theta, k, ctx.engine, g), None, None


def _bw_marginals(ctx, g):
    theta, k = ctx.saved_tensors
    return _D.marginals(theta, k, ctx.engine, g), None, None


def _bw_cov_vec(ctx, g):
    theta, k, v = ctx.saved_tensors
    d_theta, d_v = _D.cov_vec(theta, k, v, ctx.engine, g, ctx.needs_input_grad[0], ctx.needs_input_grad[2])
    return d_theta, None, d_v, None


def _bw_cov3(ctx, g):
    raise unsupported_order(
        "differentiating the third cumulant (order 4 of log_partition; order 3 of marginals, entropy, "
        "kl_divergence, kl_uniform)"
    )


def _bw_entropy(ctx, g):
    theta, k = ctx.saved_tensors
    return _D.entropy(theta, k, ctx.engine, g), None, None


def _bw_sample_and_marginals(ctx, _gz, g_mu):
    theta, k = ctx.saved_tensors
    return _D.marginals(theta, k, ctx.engine, g_mu), None, None, None


def _save_sm(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.engine = inputs[-1]
    ctx.mark_non_differentiable(output[0])


log_partition.register_autograd(_bw_log_partition, setup_context=_save_theta_k)
marginals.register_autograd(_bw_marginals, setup_context=_save_theta_k)
cov_vec.register_autograd(_bw_cov_vec, setup_context=_save_cov_vec)
cov3.register_autograd(_bw_cov3, setup_context=_save_theta_k)
entropy.register_autograd(_bw_entropy, setup_context=_save_theta_k)
sample_and_marginals.register_autograd(_bw_sample_and_marginals, setup_context=_save_sm)
