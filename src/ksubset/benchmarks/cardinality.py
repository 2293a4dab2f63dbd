"""The cardinality section (beyond exactly k): the inverse map and count constraints.

Run as ``python -m ksubset.benchmarks.cardinality [--quick] [--out DIR]`` (``ksubset bench`` runs it too;
writes ``cardinality.json``).

1. ``logits_from_marginals`` (Newton–CG on covariance-vector products) against the fixed-point iteration of
   the R package ``sampling`` (``UPMEpiktildefrompik``: ``pt <- pt + pi - mu(pt)`` on the Poisson-design
   probabilities ``pt = sigmoid(theta)``, started at ``pi``), reimplemented here with the same exact
   marginals (R is not available on these machines), and its logit-scale variant
   ``theta <- theta + logit(pi) - logit(mu(theta))``. Targets: ``pi`` = marginals of ``N(0, s^2)`` logits
   (feasible by construction; s = 2 moderate, s = 8-10 many probabilities near 0 and 1), float64, stopping
   at ``max |mu - pi| <= 1e-12`` (fixed points: or after 120 s).
2. SIMPLE forward + backward with ``AtMost(k)`` beside exactly-k at the L2X shape (B=40, n=350, k=10), and
   exactly-k through the public dispatch (``ksubset.simple``) beside the undispatched function, round-robin.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import ksubset
from ksubset.core.inverse import logits_from_marginals
from ksubset.estimators import simple as simple_exact
from ksubset.experiments.common import int_arg

from .report import atomic_write

__all__ = ["main"]

TOL = 1e-12


def _target(n: int, k: int, seed: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ksubset.marginals(torch.randn(n, generator=g, dtype=torch.float64) * spread, k)


def _fixed_point(pi: torch.Tensor, k: int, *, logit: bool, budget_s: float, max_iter: int) -> dict:
    """The fixed-point iteration until max|mu - pi| <= TOL, the iteration cap or the time budget."""
    t0 = time.perf_counter()
    eps = 1e-16
    pt = pi.clone()
    theta = torch.log(pi) - torch.log1p(-pi)
    it, err = 0, float("inf")
    while it < max_iter and time.perf_counter() - t0 < budget_s:
        if not logit:
            pt = pt.clamp(eps, 1 - eps)
            theta = torch.log(pt) - torch.log1p(-pt)
        mu = ksubset.marginals(theta, k)
        err = float((mu - pi).abs().max())
        if err <= TOL:
            break
        it += 1
        if logit:
            m = mu.clamp(1e-300, 1 - eps)
            theta = theta + (torch.log(pi) - torch.log1p(-pi)) - (torch.log(m) - torch.log1p(-m))
        else:
            pt = pt + pi - mu
    return {"iterations": it, "seconds": time.perf_counter() - t0, "residual": err, "converged": err <= TOL}


def inverse_rows(quick: bool, log) -> list[dict]:
    # (n, k, spread of the logits whose marginals are the target): spread 2 = moderate probabilities,
    # spread 8-10 = many probabilities near 0 and 1 (strongly coupled items)
    sizes = [(10, 3, 2.0), (10, 5, 8.0), (1000, 100, 2.0), (1000, 500, 8.0), (100_000, 100, 2.0),
             (100_000, 1000, 10.0)]
    if quick:
        sizes = [s for s in sizes if s[0] <= 1000] + [(100_000, 10, 2.0)]
    rows = []
    logits_from_marginals(_target(50, 25, seed=0, spread=8.0), 25)  # compile the kernels before timing
    for n, k, spread in sizes:
        pi = _target(n, k, seed=n, spread=spread)
        sec = float("inf")
        for _ in range(2 if n <= 1000 else 1):  # best of two where cheap (the machine is shared)
            stats: dict = {}
            t0 = time.perf_counter()
            theta = logits_from_marginals(pi, k, stats=stats)
            sec = min(sec, time.perf_counter() - t0)
        res = float((ksubset.marginals(theta, k) - pi).abs().max())
        budget = 20.0 if quick else 120.0
        reps = 2 if n <= 1000 else 1
        fp = min((_fixed_point(pi, k, logit=False, budget_s=budget, max_iter=100_000) for _ in range(reps)),
                 key=lambda r: r["seconds"])
        fl = min((_fixed_point(pi, k, logit=True, budget_s=budget, max_iter=100_000) for _ in range(reps)),
                 key=lambda r: r["seconds"])
        row = {"n": n, "k": k, "spread": spread, "newton": {**stats, "seconds": sec, "residual": res},
               "fixed_point_R": fp, "fixed_point_logit": fl}
        rows.append(row)
        log(f"inverse map n={n} k={k} spread={spread}: Newton-CG {stats['newton']} Newton + "
            f"{stats['corrections']} corrections + {stats['polish']} polish, {stats['cg']} CG products, "
            f"{stats['marginal_passes']} marginal passes, "
            f"{sec:.3f} s, residual {res:.1e} | R fixed point {fp['iterations']} it, {fp['seconds']:.3f} s, "
            f"residual {fp['residual']:.1e} | logit fixed point {fl['iterations']} it, {fl['seconds']:.3f} s, "
            f"residual {fl['residual']:.1e}")
    return rows


def count_rows(quick: bool, log) -> dict:
    B, n, k = 40, 350, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, n, generator=g).requires_grad_(True)
    up = torch.randn(B, n, generator=g)
    gen = torch.Generator().manual_seed(1)
    methods = {
        "exactly_k_undispatched": lambda: simple_exact(x, k, generator=gen),
        "exactly_k": lambda: ksubset.simple(x, k, generator=gen),
        "at_most_k": lambda: ksubset.simple(x, ksubset.AtMost(k), generator=gen),
        "between_5_10": lambda: ksubset.simple(x, ksubset.Between(5, k), generator=gen),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    rounds = 10 if quick else 40
    for r in range(rounds + 2):
        for name, fn in methods.items():
            x.grad = None
            t0 = time.perf_counter()
            fn().backward(up)
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    med = {m: statistics.median(t) for m, t in times.items()}
    for m, t in med.items():
        log(f"L2X B={B} n={n} k={k} SIMPLE forward+backward {m}: {t * 1e3:.2f} ms "
            f"({t / med['exactly_k']:.2f}x exactly-k)")
    return {"shape": [B, n, k], "median_s": med, "runs": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ksubset.benchmarks.cardinality",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join("results", "bench"))
    parser.add_argument("--threads", type=int_arg(1), default=None, help="torch.set_num_threads(N) first")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    result = {"torch_threads": torch.get_num_threads(), "inverse": inverse_rows(args.quick, log),
              "counts": count_rows(args.quick, log)}
    path = os.path.join(args.out, "cardinality.json")
    atomic_write(path, json.dumps(result, indent=1).encode())
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
