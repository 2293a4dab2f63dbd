"""Differentiable calls of the core's operators, in eager mode and under ``torch.compile``.

The operators of :mod:`.ops` carry registered autograd (reverse mode, any order the maths offers), which is
what ``torch.compile`` traces. Custom operators cannot register forward mode, so in eager mode the same
operators are wrapped in ``autograd.Function``\\ s that add ``jvp`` (``Cov`` is symmetric: the jvp of the
marginals is the covariance-vector product) and a generated ``vmap`` rule; that is what ``torch.func.jvp``,
``jacfwd`` and ``hessian`` need. Dynamo cannot trace an ``autograd.Function`` with a custom ``jvp``, hence
the two paths; both compute the same values with the same operators and the same derivative formulas
(:class:`.ops.Derivatives`), and the tests check each.

Derivatives offered: ``log_partition`` to order 3, ``marginals``/``cov_vec``/``entropy`` to order 2, in
reverse and forward mode; the next order raises ``RuntimeError`` (never a silently missing term).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .engine import available_engines, resolve, set_engine, use_engine
from .ops import Derivatives, unsupported_order

__all__ = [
    "available_engines",
    "engine_for",
    "set_engine",
    "use_engine",
    "log_partition",
    "marginals",
    "cov_vec",
    "cov3",
    "entropy",
    "sample",
    "sample_and_marginals",
]


def engine_for(theta: Tensor):
    """The engine module that runs for ``theta`` now (see :mod:`.engine`)."""
    from .engine import engine_module

    return engine_module(resolve(theta.device, theta.dtype))


def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _apply(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)``, without its per-call ``inspect.signature`` when no torch.func transform is active.

    ``Function.apply`` binds the arguments to ``forward``'s signature (for torch.func's sake) on every call,
    which costs more than the work on small inputs; every call here passes all arguments positionally, so
    the binding changes nothing, and outside torch.func the base class's apply is what runs afterwards.
    """
    if torch._C._are_functorch_transforms_active():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*args)  # type: ignore[misc]


def _zeros_if_none(t, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t


class _LogPartition(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, k, engine):
        return (ops.IMPL["log_partition"] if ops.direct(theta, k) else ops.log_partition)(theta, k, engine)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, k, ctx.engine = inputs
        ctx.save_for_backward(theta, k)
        ctx.save_for_forward(theta, k)

    @staticmethod
    def backward(ctx, g):
        theta, k = ctx.saved_tensors
        return _D.log_partition(theta, k, ctx.engine, g), None, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, _te):
        theta, k = ctx.saved_tensors
        return (marginals(theta, k, ctx.engine) * _zeros_if_none(t_theta, theta)).sum(-1)


class _Marginals(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, k, engine):
        return (ops.IMPL["marginals"] if ops.direct(theta, k) else ops.marginals)(theta, k, engine)

    setup_context = _LogPartition.setup_context

    @staticmethod
    def backward(ctx, g):
        theta, k = ctx.saved_tensors
        return _D.marginals(theta, k, ctx.engine, g), None, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, _te):
        theta, k = ctx.saved_tensors
        return cov_vec(theta, k, _zeros_if_none(t_theta, theta), ctx.engine)


class _CovVec(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, k, v, engine):
        return (ops.IMPL["cov_vec"] if ops.direct(theta, k, v) else ops.cov_vec)(theta, k, v, engine)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, k, v, ctx.engine = inputs
        ctx.save_for_backward(theta, k, v)
        ctx.save_for_forward(theta, k, v)

    @staticmethod
    def backward(ctx, g):
        theta, k, v = ctx.saved_tensors
        d_theta, d_v = _D.cov_vec(theta, k, v, ctx.engine, g, ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return d_theta, None, d_v, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, t_v, _te):
        theta, k, v = ctx.saved_tensors
        out = torch.zeros_like(theta)
        if t_theta is not None:
            out = out + cov3(theta, k, v, t_theta, ctx.engine)
        if t_v is not None:
            out = out + cov_vec(theta, k, t_v, ctx.engine)
        return out


class _Cov3(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, k, v, w, engine):
        return (ops.IMPL["cov3"] if ops.direct(theta, k, v, w) else ops.cov3)(theta, k, v, w, engine)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise unsupported_order(
            "differentiating the third cumulant (order 4 of log_partition; order 3 of marginals, entropy, "
            "kl_divergence, kl_uniform)"
        )

    @staticmethod
    def jvp(ctx, *tangents):
        raise unsupported_order(
            "forward mode through the third cumulant (order 4 of log_partition; order 3 of marginals, "
            "entropy, kl_divergence, kl_uniform)"
        )


class _Entropy(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, k, engine):
        return (ops.IMPL["entropy"] if ops.direct(theta, k) else ops.entropy)(theta, k, engine)

    setup_context = _LogPartition.setup_context

    @staticmethod
    def backward(ctx, g):
        theta, k = ctx.saved_tensors
        return _D.entropy(theta, k, ctx.engine, g), None, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, _te):
        theta, k = ctx.saved_tensors
        return _D.entropy(theta, k, ctx.engine, torch.ones_like(theta[:, 0])).mul(
            _zeros_if_none(t_theta, theta)
        ).sum(-1)


class _EntropyFused(torch.autograd.Function):
    """Eager, first-order fast path of :class:`_Entropy`: the forward's sweep also gives ``dH/dtheta``
    (``-Cov(z) theta``), which the backward reuses. A backward that builds a graph (``create_graph=True``)
    recomputes the gradient through the differentiable operators, so higher orders are unchanged. Used
    only outside ``torch.func`` transforms (see :func:`entropy`), hence the old-style ``forward(ctx, ...)``.
    """

    @staticmethod
    def forward(ctx, theta, k, engine, fused):
        h, grad = fused(theta, k)
        ctx.engine = engine
        ctx.save_for_backward(theta, k, grad)
        ctx.save_for_forward(theta, k, grad)
        return h

    @staticmethod
    def backward(ctx, g):
        theta, k, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: the differentiable formula
            return _D.entropy(theta, k, ctx.engine, g), None, None, None
        return g.unsqueeze(-1) * grad, None, None, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, _te, _tf):
        _theta, _k, grad = ctx.saved_tensors
        return (grad * _zeros_if_none(t_theta, grad)).sum(-1)


class _KLFused(torch.autograd.Function):
    """Eager fast path of ``KL(p_theta || p_phi)`` on the same free items (see :func:`.ops.fused_kl`): one sweep
    per distribution gives the value and both gradients, which a first-order backward reuses; a backward that
    builds a graph recomputes them through the differentiable operators."""

    @staticmethod
    def forward(ctx, theta, phi, k, engine, fused):
        value, d_theta, d_phi = fused(theta, phi, k)
        ctx.engine = engine
        ctx.save_for_backward(theta, phi, k, d_theta, d_phi)
        ctx.save_for_forward(theta, phi, k, d_theta, d_phi)
        return value

    @staticmethod
    def backward(ctx, g):
        theta, phi, k, d_theta, d_phi = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the gradient is wanted: the differentiable formulas
            free = torch.isfinite(theta)
            d_theta = cov_vec(theta, k, torch.where(free, theta - phi, 0.0), ctx.engine)
            d_phi = marginals(phi, k, ctx.engine) - marginals(theta, k, ctx.engine)
        g = g.unsqueeze(-1).to(d_theta.dtype)
        return g * d_theta, g * d_phi, None, None, None

    @staticmethod
    def jvp(ctx, t_theta, t_phi, _tk, _te, _tf):
        _theta, _phi, _k, d_theta, d_phi = ctx.saved_tensors
        out = (d_theta * _zeros_if_none(t_theta, d_theta)).sum(-1) + (d_phi * _zeros_if_none(t_phi, d_phi)).sum(-1)
        return out.to(torch.float64)


class _SampleAndMarginalsKept(torch.autograd.Function):
    """Eager, first-order fast path of :class:`_SampleAndMarginals`: the engine's forward returns what its
    ``Cov(z) v`` reuses (see :func:`.ops.kept_sweeps`); a backward that builds a graph recomputes through the
    differentiable operators. Used only outside ``torch.func`` transforms (see :func:`sample_and_marginals`).
    """

    @staticmethod
    def forward(ctx, theta, k, u, engine, sweeps):
        forward, ctx.backward_sweep = sweeps
        z, mu, ctx.kept = forward(theta, k, u)
        ctx.engine = engine
        ctx.save_for_backward(theta, k)
        ctx.save_for_forward(theta, k)
        ctx.mark_non_differentiable(z)
        ctx.set_materialize_grads(False)  # no zero gradient of the draws: [S, B, n], as big as the draws
        return z, mu

    @staticmethod
    def backward(ctx, _gz, g_mu):
        theta, k = ctx.saved_tensors
        if g_mu is None:
            return None, None, None, None, None
        if torch.is_grad_enabled() or ctx.kept is None:  # a graph of the gradient, or nothing kept
            return _D.marginals(theta, k, ctx.engine, g_mu), None, None, None, None
        return ctx.backward_sweep(theta, k, g_mu, ctx.kept), None, None, None, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, _tu, _te, _ts):
        theta, k = ctx.saved_tensors
        return None, cov_vec(theta, k, _zeros_if_none(t_theta, theta), ctx.engine)


class _SampleAndMarginals(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(theta, k, u, engine):
        fn = ops.IMPL["sample_and_marginals"] if ops.direct(theta, k, u) else ops.sample_and_marginals
        return fn(theta, k, u, engine)

    @staticmethod
    def setup_context(ctx, inputs, output):
        theta, k, _u, ctx.engine = inputs
        ctx.save_for_backward(theta, k)
        ctx.save_for_forward(theta, k)
        ctx.mark_non_differentiable(output[0])

    @staticmethod
    def backward(ctx, _gz, g_mu):
        theta, k = ctx.saved_tensors
        return _D.marginals(theta, k, ctx.engine, g_mu), None, None, None

    @staticmethod
    def jvp(ctx, t_theta, _tk, _tu, _te):
        theta, k = ctx.saved_tensors
        return None, cov_vec(theta, k, _zeros_if_none(t_theta, theta), ctx.engine)


# ----------------------------------------------------------------------------------------------------------
# the calls the rest of the package uses: the autograd.Functions in eager mode, the operators when compiling


def log_partition(theta: Tensor, k: Tensor, engine: str) -> Tensor:
    """``log Z`` ``[B]``."""
    return _apply(_LogPartition, theta, k, engine) if _eager() else ops.log_partition(theta, k, engine)


def marginals(theta: Tensor, k: Tensor, engine: str) -> Tensor:
    """``mu`` ``[B, n]``."""
    return _apply(_Marginals, theta, k, engine) if _eager() else ops.marginals(theta, k, engine)


def cov_vec(theta: Tensor, k: Tensor, v: Tensor, engine: str) -> Tensor:
    """``Cov(z) v`` ``[B, n]``."""
    return _apply(_CovVec, theta, k, v, engine) if _eager() else ops.cov_vec(theta, k, v, engine)


def cov3(theta: Tensor, k: Tensor, v: Tensor, w: Tensor, engine: str) -> Tensor:
    """``sum_jl kappa_ijl v_j w_l`` ``[B, n]``."""
    return _apply(_Cov3, theta, k, v, w, engine) if _eager() else ops.cov3(theta, k, v, w, engine)


def entropy(theta: Tensor, k: Tensor, engine: str) -> Tensor:
    """``H`` ``[B]``; in plain eager mode with a gradient to come, one sweep for both where the engine can."""
    if theta.requires_grad and torch.is_grad_enabled() and ops.direct(theta, k):
        fused = ops.fused_entropy(engine, theta.device)
        if fused is not None:
            return _EntropyFused.apply(theta, k, engine, fused)
    return _apply(_Entropy, theta, k, engine) if _eager() else ops.entropy(theta, k, engine)


def kl_divergence(theta: Tensor, phi: Tensor, k: Tensor, engine: str) -> Tensor | None:
    """``KL(p_theta || p_phi)`` ``[B]`` (float64) of two problems with the same free items, from one sweep per
    distribution, where the engine offers it in plain eager mode; None otherwise (the caller composes it
    from marginals and log-partitions)."""
    if not ops.direct(theta, phi, k):
        return None
    fused = ops.fused_kl(engine, theta.device)
    if fused is None:
        return None
    if not (torch.is_grad_enabled() and (theta.requires_grad or phi.requires_grad)):
        return fused(theta, phi, k, with_grad=False)[0]
    return _KLFused.apply(theta, phi, k, engine, fused)


def sample(theta: Tensor, k: Tensor, u: Tensor, engine: str) -> Tensor:
    """Draws ``[S, B, n]`` int64 from the uniforms ``u`` (not differentiable)."""
    theta = theta.detach()
    return (ops.IMPL["sample"] if ops.direct(theta, k, u) else ops.sample)(theta, k, u, engine)


def sample_and_marginals(theta: Tensor, k: Tensor, u: Tensor, engine: str) -> tuple[Tensor, Tensor]:
    """Draws ``[S, B, n]`` and differentiable marginals ``[B, n]`` from one pass (in plain eager mode with a
    gradient to come, the backward reuses the pass's tilt where the engine can)."""
    if theta.requires_grad and torch.is_grad_enabled() and ops.direct(theta, k, u):
        sweeps = ops.kept_sweeps(engine, theta.device)
        if sweeps is not None:
            return _SampleAndMarginalsKept.apply(theta, k, u, engine, sweeps)
    if _eager():
        return _apply(_SampleAndMarginals, theta, k, u, engine)
    return ops.sample_and_marginals(theta, k, u, engine)


class _FunctionPrimitives:
    log_partition = staticmethod(log_partition)
    marginals = staticmethod(marginals)
    cov_vec = staticmethod(cov_vec)
    cov3 = staticmethod(cov3)
    entropy = staticmethod(entropy)


_D = Derivatives(_FunctionPrimitives)
