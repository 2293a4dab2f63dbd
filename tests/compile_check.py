"""Run by tests/test_compile.py in a fresh process: torch.compile (inductor, CPU) against eager.

Prints one JSON line per check: ``{"check": ..., "batch": B, "ok": bool, "detail": ...}``.

Randomness: Dynamo cannot put a ``torch.Generator`` into a graph, so with a generator the ``torch.rand`` of
the uniforms runs in eager between two graphs (same draws as eager); without one the draw is in the graph
and inductor replaces it by its own RNG unless ``torch._inductor.config.fallback_random = True`` (set here
so that compiled and eager consume the global generator identically).
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch
import torch._inductor.config as inductor_config

import ksubset
from ksubset.nn import KSubsetLayer

inductor_config.fallback_random = True
BATCHES = (3, 5, 8)
N, K = 12, 3
#: Estimators whose forward output is a relaxation (compared with a tolerance, not exactly).
RELAXED = {"gumbel_softmax", "relaxed_topk"}


def emit(check: str, batch: int, ok: bool, detail: str = "") -> None:
    print(json.dumps({"check": check, "batch": batch, "ok": bool(ok), "detail": detail}), flush=True)


def fullgraph_functions() -> None:
    fns = {
        "marginals": lambda x: ksubset.marginals(x, K),
        "log_partition": lambda x: ksubset.log_partition(x, K),
        "sample": lambda x: ksubset.sample(x, K, sample_shape=(2,)),
        "simple": lambda x: ksubset.simple(x, K),
    }
    weights = torch.linspace(-1, 1, N)
    for name, fn in fns.items():
        compiled = torch.compile(fn, fullgraph=True, dynamic=True)
        for B in BATCHES:
            x = torch.randn(B, N, requires_grad=True)
            out = []
            for f in (fn, compiled):
                torch.manual_seed(B)
                y = f(x)
                w = weights if y.dim() == 2 else 1.0
                g = torch.autograd.grad((y * w).sum(), x)[0] if y.requires_grad else None
                out.append((y.detach(), g))
            ok = torch.equal(out[0][0], out[1][0]) if name in ("sample", "simple") else torch.allclose(
                out[0][0], out[1][0], rtol=1e-5, atol=1e-6
            )
            if out[0][1] is not None:
                ok = ok and torch.allclose(out[0][1], out[1][1], rtol=1e-5, atol=1e-6)
            emit(f"fullgraph:{name}", B, ok)
        if name == "marginals":  # validation runs inside the compiled graph (the canonical operator)
            bad = torch.randn(4, N)
            bad[2, 5] = float("nan")
            try:
                compiled(bad)
                emit("fullgraph:validation", 4, False, "no error")
            except ValueError as e:
                emit("fullgraph:validation", 4, "contains NaN in row (2,)" in str(e), str(e))


def layer_models() -> None:
    names = [n for n in ksubset.estimators.available() if ksubset.estimators.get(n).pathwise]
    for name in names:
        torch._dynamo.reset()  # one compiled model per estimator, no recompile limit across them
        kk = 1 if "gumbel" in name else K
        torch.manual_seed(0)
        eager = torch.nn.Sequential(torch.nn.Linear(5, N), KSubsetLayer(kk, estimator=name), torch.nn.Linear(N, 1))
        comp = copy.deepcopy(eager)  # stateful estimators (AIMLE) advance in lockstep

        def step(model, x, gen):
            z = model[1](model[0](x), generator=gen)
            return model[2](z).square().mean(), z

        compiled_step = torch.compile(step, dynamic=True)
        for B in BATCHES:
            x = torch.randn(B, 5)
            out = []
            for model, f in ((eager, step), (comp, compiled_step)):
                model.zero_grad()
                loss, z = f(model, x, torch.Generator().manual_seed(B))
                loss.backward()
                out.append((z.detach(), model[0].weight.grad.clone()))
            same_z = (
                torch.allclose(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
                if name in RELAXED
                else torch.equal(out[0][0], out[1][0])
            )
            same_g = torch.allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-6)
            emit(f"layer:{name}", B, same_z and same_g, f"z {same_z} grad {same_g}")


if __name__ == "__main__":
    t0 = time.time()
    which = sys.argv[1:] or ["fullgraph", "layer"]
    if "fullgraph" in which:
        fullgraph_functions()
    if "layer" in which:
        layer_models()
    print(json.dumps({"seconds": round(time.time() - t0, 1)}), flush=True)
