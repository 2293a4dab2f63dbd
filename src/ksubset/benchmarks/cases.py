"""What the benchmarks time: methods, inputs, one training step of each, and the application shapes.

A *step* is a zero-argument callable doing one forward + backward on fixed inputs with fresh noise each
call: ``z = est(logits, k); z.backward(g)`` with a fixed upstream gradient ``g``. Methods:

* ``reference`` / ``tree`` / ``auto`` — :func:`ksubset.simple` with the engine forced by
  :func:`ksubset.core.use_engine` (``auto`` is the default dispatch);
* ``st_relaxed_topk`` / ``relaxed_topk`` / ``imle`` — the library's estimators (:mod:`ksubset.estimators`);
* ``st_relaxed_topk_lean`` / ``relaxed_topk_lean`` — the relaxation as a user would write it in a few lines
  (:func:`lean_relaxed_topk`): no argument checks, masks or per-row k. The stricter comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import ksubset
from ksubset import core
from ksubset.core.engine import engine_for_call
from ksubset.estimators import imle, relaxed_topk, st_relaxed_topk

__all__ = [
    "APPLICATIONS",
    "Application",
    "BASELINES",
    "EXACT",
    "LEAN",
    "SHAPES",
    "engine_name",
    "estimator",
    "exact64",
    "inputs",
    "kl_uniform_step",
    "lean_relaxed_topk",
    "lean_st_relaxed_topk",
    "max_abs_error",
    "model_step",
    "step",
]

#: The engine-comparison table's shapes: (name, B, n, k).
SHAPES = [("L2X", 40, 350, 10), ("B128", 128, 1000, 100), ("VAE", 2000, 20, 10)]
EXACT = ["reference", "tree", "auto"]
BASELINES = ["st_relaxed_topk", "relaxed_topk", "imle"]
LEAN = ["st_relaxed_topk_lean", "relaxed_topk_lean"]


# --------------------------------------------------------------------------------------------------------
# the lean relaxation


def lean_relaxed_topk(logits: torch.Tensor, k: int, *, generator=None, t: float = 1.0) -> torch.Tensor:
    """Xie & Ermon's relaxed top-k of Gumbel-perturbed logits: ``k`` softmaxes, each soft-masking the last.

    ``a^j = softmax(alpha^j / t)``, ``alpha^{j+1} = alpha^j + log(1 - a^j)``, output ``sum_j a^j``;
    ``logits [B, n]``, ``k`` a Python int, no checks (the few lines a user would write).
    """
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    alpha = logits - torch.log(-torch.log(u.clamp_min(tiny)))
    out, a = torch.zeros_like(logits), logits  # a is first read at j = 1
    for j in range(k):
        if j:
            alpha = alpha + torch.log((1 - a).clamp_min(tiny))
        a = torch.softmax(alpha / t, dim=-1)
        out = out + a
    return out


def lean_st_relaxed_topk(logits: torch.Tensor, k: int, *, generator=None, t: float = 1.0) -> torch.Tensor:
    """Hard top-k of the same perturbed keys forward, the gradient of :func:`lean_relaxed_topk` backward."""
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    keys = logits - torch.log(-torch.log(u.clamp_min(tiny)))
    alpha, soft, a = keys, torch.zeros_like(logits), keys  # a is first read at j = 1
    for j in range(k):
        if j:
            alpha = alpha + torch.log((1 - a).clamp_min(tiny))
        a = torch.softmax(alpha / t, dim=-1)
        soft = soft + a
    hard = torch.zeros_like(logits).scatter_(-1, keys.detach().topk(k, dim=-1).indices, 1.0)
    return hard + soft - soft.detach()


# --------------------------------------------------------------------------------------------------------
# steps


def estimator(method: str) -> Callable:
    """``f(logits, k, generator) -> z`` for a method name (see the module docstring)."""
    if method in EXACT:
        engine = None if method == "auto" else method

        def run(x, k, generator):
            with core.use_engine(engine):
                return ksubset.simple(x, k, generator=generator)

        return run
    fn = {
        "st_relaxed_topk": st_relaxed_topk,
        "relaxed_topk": relaxed_topk,
        "imle": imle,
        "st_relaxed_topk_lean": lean_st_relaxed_topk,
        "relaxed_topk_lean": lean_relaxed_topk,
    }[method]
    return lambda x, k, generator: fn(x, k, generator=generator)


def inputs(B: int, n: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, n]`` (requiring grad) and an upstream gradient ``[B, n]``, standard normal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, generator=g).to(device).requires_grad_(True)
    up = torch.randn(B, n, generator=g).to(device)
    return x, up


def step(method: str, B: int, n: int, k: int, device: str, seed: int = 0) -> Callable[[], None]:
    """One forward + backward of ``method`` on fixed inputs (fresh noise from a seeded generator each call)."""
    x, up = inputs(B, n, device, seed)
    est = estimator(method)
    gen = torch.Generator(device=device).manual_seed(seed + 1)

    def run() -> None:
        x.grad = None
        est(x, k, gen).backward(up)

    return run


def kl_uniform_step(B: int, n: int, k: int, device: str, seed: int = 0) -> Callable[[], None]:
    """Forward + backward of the discrete VAE's prior term ``ksubset.kl_uniform(logits, k).sum()``."""
    x, _ = inputs(B, n, device, seed)

    def run() -> None:
        x.grad = None
        ksubset.kl_uniform(x, k).sum().backward()

    return run


def model_step(method: str, B: int, n: int, k: int, device: str, compiled: bool) -> Callable[[], None]:
    """One training step of ``linear -> estimator -> fixed read-out``, eager or under ``torch.compile``.

    ``method``: ``"simple"`` (:func:`ksubset.simple`) or ``"relaxed_topk_lean"``. The global generator
    supplies the noise, so each compiled step is one graph (forward and backward).
    """
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, n, generator=g).to(device)
    readout = torch.randn(n, generator=g).to(device)
    layer = torch.nn.Linear(n, n).to(device)
    est = {"simple": ksubset.simple, "relaxed_topk_lean": lean_relaxed_topk}[method]

    def loss_fn(x):
        return (est(layer(x), k) * readout).sum()

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def run() -> None:
        layer.zero_grad(set_to_none=True)
        fn(feats).backward()

    return run


def engine_name(n: int, k: int, device: str) -> str:
    """The engine the default dispatch picks for float32 logits ``[..., n]`` and an int ``k`` on ``device``."""
    return engine_for_call(torch.device(device), torch.float32, n, k)


def exact64(quantity: str, x: torch.Tensor, k: int, engine: str) -> torch.Tensor:
    """``q(x)`` in float64 on ``engine``: ``quantity`` = ``"marginals"`` (``[B, n]``) or ``"kl_uniform"`` (``[B]``)."""
    fn = {"marginals": ksubset.marginals, "kl_uniform": ksubset.kl_uniform}[quantity]
    with torch.no_grad(), core.use_engine(engine):
        return fn(x.detach().double(), k)


def max_abs_error(quantity: str, x: torch.Tensor, k: int, q64: torch.Tensor, *, engine: str | None) -> float:
    """``max |q(x) - q64|`` for ``q(x)`` computed from the float32 logits on ``engine`` (``None`` = the default
    dispatch) and ``q64`` from :func:`exact64`."""
    fn = {"marginals": ksubset.marginals, "kl_uniform": ksubset.kl_uniform}[quantity]
    with torch.no_grad(), core.use_engine(engine):
        q = fn(x.detach().float(), k)
    return float((q.double() - q64.to(q.device)).abs().max())


# --------------------------------------------------------------------------------------------------------
# the application shapes


@dataclass(frozen=True)
class Application:
    """One row of the application table: a shape taken from a published use, and what it must reach.

    ``kind``: ``"simple"`` (``ksubset.simple`` forward + backward against :func:`lean_relaxed_topk`),
    ``"kl_uniform"`` (forward + backward alone), ``"scale"`` (time and peak memory in a fresh process) or
    ``"compiled"`` (a small model compiled against eager). Targets: ``max_ratio`` (simple / lean),
    ``min_reference_speedup`` (the reference engine's time / simple's), ``max_ms``, ``max_mb`` (peak
    resident memory of the process).
    """

    name: str
    source: str
    B: int
    n: int
    k: int
    kind: str = "simple"
    max_ratio: float | None = None
    min_reference_speedup: float | None = None
    max_ms: float | None = None
    max_mb: float | None = None
    full_only: bool = False
    extra: dict = field(default_factory=dict)


APPLICATIONS = [
    Application("IPR-MPNN", "virtual-node assignment (NeurIPS 2024)", 100_000, 8, 2, max_ratio=0.5),
    Application("IPR-MPNN k=1", "virtual-node assignment (NeurIPS 2024)", 100_000, 5, 1, max_ratio=0.3),
    Application("discrete VAE", "SIMPLE paper, MNIST VAE: 100 images x 20 blocks", 2000, 20, 10, max_ratio=0.5),
    Application("L2X", "SIMPLE paper, learning to explain", 40, 350, 10, max_ratio=0.5, min_reference_speedup=100),
    Application("PR-MPNN", "graph rewiring (ICLR 2024)", 640, 512, 80, max_ratio=0.3),
    Application("large", "wide layer", 128, 1000, 100, max_ratio=0.3),
    Application("VAE kl_uniform", "SIMPLE paper, the VAE's prior term", 2000, 20, 10, kind="kl_uniform", max_ms=1.5),
    Application("scale", "one huge row", 1, 10**6, 10**3, kind="scale", max_ms=2000.0, max_mb=512.0, full_only=True),
    Application("compiled model", "L2X shape, linear -> simple -> read-out", 40, 350, 10, kind="compiled"),
]
