"""The engine sections: every engine and estimator at three shapes, the largest sizes, and growth in n and k.

* :func:`engine_rows` — at L2X (40 × 350 × 10), B128 (128 × 1000 × 100) and VAE (2000 × 20 × 10): SIMPLE on
  each engine, the library's relaxations and I-MLE, the lean relaxations; ratios, ``reference / this``,
  ``max |mu - mu_64|`` against the reference engine in float64, and (full runs) each method's peak memory
  in a fresh process.
* :func:`large_rows` — ``n = 10^6, k = 1000`` and ``n = 10^5, k = 10^4`` in a fresh process (time, memory).
* :func:`growth` — time against n (k = 10, k = √n) and against k (n = 10^4), B = 1, with log-log slopes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from . import cases, runner
from .report import fmt_row

__all__ = ["engine_rows", "growth", "large_rows", "slope"]


def engine_rows(device: str, quick: bool, memory: bool, log: Callable[[str], None]) -> list[dict]:
    """The engine table (see the module docstring); one dict per (shape, method)."""
    rows = []
    log("baselines from ksubset.estimators (+ minimal '_lean' relaxations); SIMPLE = ksubset.simple "
        "(forward: exact sample + marginals, backward: Cov g); times are fwd + bwd, round-robin medians")
    methods = cases.EXACT + cases.BASELINES + cases.LEAN
    for name, B, n, k in cases.SHAPES:
        x, _ = cases.inputs(B, n, device, 0)
        mu64 = cases.exact64("marginals", x.cpu(), k, "reference")
        steps = {m: cases.step(m, B, n, k, device) for m in methods}
        min_runs = {m: (3 if quick else 5) if m == "reference" else 5 for m in methods}
        times = runner.interleaved(steps, device, min_runs=min_runs, max_runs=10 if quick else 40,
                                   budget_s=1.0 if quick else 3.0)
        shape_rows: list[dict[str, Any]] = []
        for method in methods:
            engine = cases.engine_name(n, k, device) if method == "auto" else (method if method in cases.EXACT else "-")
            row = {"shape": name, "B": B, "n": n, "k": k, "method": method, "engine": engine,
                   "median_s": statistics.median(times[method]), "runs": len(times[method]),
                   "times_s": times[method]}
            if method in cases.EXACT:
                row["max_dmu"] = cases.max_abs_error("marginals", x, k, mu64,
                                                     engine=None if method == "auto" else method)
                row["dmu_reference"] = "reference engine (float64)"
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                steps[method]()
                torch.cuda.synchronize()
                row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
            elif not quick and memory:
                mem = runner.in_child({"method": method, "B": B, "n": n, "k": k, "runs": 1}, timeout_s=600)
                row["peak_rss_mb"] = mem.get("peak_rss_mb")
                row["rss_before_mb"] = mem.get("rss_before_mb")
            shape_rows.append(row)
        by = {r["method"]: r["median_s"] for r in shape_rows}
        for r in shape_rows:
            for base in ("st_relaxed_topk", "relaxed_topk", "st_relaxed_topk_lean", "relaxed_topk_lean"):
                r[f"ratio_to_{base}"] = r["median_s"] / by[base]
            r["reference_over_this"] = by["reference"] / r["median_s"]
            log(fmt_row(r))
        rows += shape_rows
    return rows


def large_rows(device: str, quick: bool, log: Callable[[str], None]) -> list[dict]:
    """``n = 10^6, k = 1000`` (with a float64 tree check) and ``n = 10^5, k = 10^4``; quick: one run of the first."""
    todo = [("large", 1, 10**6, 1000, 5, "tree"), ("n1e5_k1e4", 1, 10**5, 10**4, 1, None)]
    if quick:  # one timed run of n = 1e6 only; the float64 tree check takes ~1.5 min
        todo = [("large", 1, 10**6, 1000, 1, None)]
    out = []
    for name, B, n, k, runs, check in todo:
        if device.startswith("cuda"):
            fn = cases.step("auto", B, n, k, device)
            torch.cuda.reset_peak_memory_stats()
            med, times = runner.time_runs(fn, device, min_runs=runs, max_runs=runs, budget_s=0.0)
            res = {"median_s": med, "times_s": times, "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20}
        else:
            spec = {"method": "auto", "B": B, "n": n, "k": k, "runs": runs, "check_engine": check}
            res = runner.in_child(spec, timeout_s=1800)
        row = {"shape": name, "B": B, "n": n, "k": k, "method": "auto", "engine": cases.engine_name(n, k, device),
               "runs": runs, **res}
        out.append(row)
        log(fmt_row(row))
    return out


def growth(device: str, quick: bool, log: Callable[[str], None]) -> dict:
    """Time of ksubset.simple (auto; tree and ST relaxed top-k where affordable) against n and k, B = 1."""
    n_max = 10**5 if quick else 10**6
    ns = [n for n in (10**2, 10**3, 10**4, 10**5, 10**6) if n <= n_max]
    series = {
        "k=10": [(n, 10) for n in ns],
        "k=sqrt(n)": [(n, int(round(math.sqrt(n)))) for n in ns],
        "n=1e4": [(10**4, k) for k in ((1, 10, 100, 1000) if quick else (1, 3, 10, 30, 100, 300, 1000, 3000))],
    }
    work_cap = {"auto": 1e12, "tree": 0 if quick else 1e8, "st_relaxed_topk": 3e6 if quick else 3e7}
    res: dict = {}
    for label, points in series.items():
        var = "k" if label == "n=1e4" else "n"
        for method in ("auto", "tree", "st_relaxed_topk"):
            pts = []
            for n, k in points:
                if n * k > work_cap[method]:
                    continue
                med, times = runner.time_runs(cases.step(method, 1, n, k, device), device,
                                              min_runs=3 if quick else 5, max_runs=20, budget_s=0.3 if quick else 1.0)
                pts.append({"n": n, "k": k, "median_s": med, "runs": len(times)})
            res.setdefault(label, {})[method] = {"points": pts, "slope": slope(pts, var)}
            if pts:
                log(f"  growth {label:9s} {method:16s} slope {res[label][method]['slope']:.2f}  "
                    + " ".join(f"{p[var]}:{p['median_s'] * 1e3:.3g}ms" for p in pts))
    return res


def slope(pts: list[dict], var: str) -> float:
    """Least-squares slope of log(time) against log(var) over the upper half of the points (asymptotics)."""
    pts = pts[len(pts) // 2 - (1 if len(pts) % 2 == 0 and len(pts) > 2 else 0) :] if len(pts) > 2 else pts
    if len(pts) < 2:
        return float("nan")
    xs = [math.log(p[var]) for p in pts]
    ys = [math.log(p["median_s"]) for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((a - mx) ** 2 for a in xs)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / den if den else float("nan")
