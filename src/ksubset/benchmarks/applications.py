"""The application table: ``ksubset.simple`` at the shapes published uses run, against a lean relaxation.

For each :data:`cases.APPLICATIONS` row and each thread count (1 and all cores, so that core scaling
shows), measured in this process with the methods interleaved:

* ``simple`` rows: ``ksubset.simple`` forward + backward against :func:`cases.lean_relaxed_topk` (ratio
  column), the reference engine too where a target names it; ``max |mu - mu_64|`` of the exact marginals
  (float32 logits) against the reference engine in float64;
* ``kl_uniform``: forward + backward of ``ksubset.kl_uniform`` alone; ``max |KL - KL_64|``;
* ``scale`` (full runs only): time and peak resident memory in a fresh process; ``max |mu - mu_64|``
  against the tree engine in float64 (the reference engine would take hours);
* ``compiled``: a small model (linear -> estimator -> read-out) under ``torch.compile`` against eager, with
  ``simple`` and with the lean relaxation.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from . import cases, runner

__all__ = ["application_rows", "thread_counts"]


def thread_counts(device: str, threads: int | None) -> list[int | None]:
    """1 and all cores (``threads`` when given) on CPU; ``[None]`` (unchanged) on other devices."""
    if not device.startswith("cpu"):
        return [None]
    return list(sorted({1, threads or os.cpu_count() or 1}))


def application_rows(device: str, quick: bool, *, threads: int | None, compile_models: bool,
                     log: Callable[[str], None], apps: list[cases.Application] | None = None) -> list[dict]:
    """One dict per (application, thread count); see the module docstring. ``apps`` defaults to all rows."""
    rows = []
    budget = {"min_runs": 5, "max_runs": 10 if quick else 40, "budget_s": 0.5 if quick else 2.0}
    for app in cases.APPLICATIONS if apps is None else apps:
        if (app.full_only and quick) or (app.kind == "compiled" and not compile_models):
            continue
        measure = {"simple": _simple, "kl_uniform": _kl_uniform, "scale": _scale, "compiled": _compiled}[app.kind]
        for row in measure(app, device, thread_counts(device, threads), budget, quick):
            row.update(name=app.name, source=app.source, B=app.B, n=app.n, k=app.k, kind=app.kind)
            _judge(app, row)
            rows.append(row)
            log(_log_line(row))
    return rows


def _simple(app, device, counts, budget, quick) -> list[dict]:
    x, _ = cases.inputs(app.B, app.n, device, 0)
    mu64 = cases.exact64("marginals", x.cpu(), app.k, "reference")
    err = cases.max_abs_error("marginals", x, app.k, mu64, engine=None)
    steps = {"simple": cases.step("auto", app.B, app.n, app.k, device),
             "lean": cases.step("relaxed_topk_lean", app.B, app.n, app.k, device)}
    if app.min_reference_speedup is not None:
        steps["reference"] = cases.step("reference", app.B, app.n, app.k, device)
    min_runs = {m: (3 if quick and m == "reference" else budget["min_runs"]) for m in steps}
    out = []
    for t in counts:
        with runner.threads(t):
            times = runner.interleaved(steps, device, min_runs=min_runs, max_runs=budget["max_runs"],
                                       budget_s=budget["budget_s"])
        med = {m: statistics.median(ts) for m, ts in times.items()}
        row = {"threads": t or "-", "simple_s": med["simple"], "baseline_s": med["lean"],
               "ratio": med["simple"] / med["lean"], "max_err": err, "err_of": "marginals vs reference (float64)",
               "engine": cases.engine_name(app.n, app.k, device), "times_s": times}
        if "reference" in med:
            row["reference_s"] = med["reference"]
            row["reference_over_simple"] = med["reference"] / med["simple"]
        out.append(row)
    return out


def _kl_uniform(app, device, counts, budget, quick) -> list[dict]:
    x, _ = cases.inputs(app.B, app.n, device, 0)
    err = cases.max_abs_error("kl_uniform", x, app.k, cases.exact64("kl_uniform", x.cpu(), app.k, "reference"),
                              engine=None)
    fn = cases.kl_uniform_step(app.B, app.n, app.k, device)
    out = []
    for t in counts:
        with runner.threads(t):
            med, times = runner.time_runs(fn, device, warmup=2, **budget)
        out.append({"threads": t or "-", "simple_s": med, "max_err": err, "err_of": "KL vs reference (float64)",
                    "engine": cases.engine_name(app.n, app.k, device), "times_s": times})
    return out


def _scale(app, device, counts, budget, quick) -> list[dict]:
    out = []
    for i, t in enumerate(counts):
        if device.startswith("cuda"):
            fn = cases.step("auto", app.B, app.n, app.k, device)
            torch.cuda.reset_peak_memory_stats()
            med, times = runner.time_runs(fn, device, min_runs=3, max_runs=3, budget_s=0.0)
            res = {"median_s": med, "times_s": times, "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20}
        else:  # the float64 check once (it takes a minute or more)
            check = "tree" if i == len(counts) - 1 else None
            spec = {"method": "auto", "B": app.B, "n": app.n, "k": app.k, "runs": 3, "threads": t,
                    "check_engine": check}
            res = runner.in_child(spec, timeout_s=1800)
        row = {"threads": t or "-", "engine": cases.engine_name(app.n, app.k, device), **res}
        if "median_s" in res:
            row["simple_s"] = res["median_s"]
        if "max_dmu" in res:
            row.update(max_err=res["max_dmu"], err_of="marginals vs tree (float64)")
        out.append(row)
    for row in out:  # one accuracy for every thread count (the result does not depend on it)
        if "max_err" not in row and any("max_err" in r for r in out):
            src = next(r for r in out if "max_err" in r)
            row.update(max_err=src["max_err"], err_of=src["err_of"])
    return out


def _compiled(app, device, counts, budget, quick) -> list[dict]:
    steps = {f"{m}/{mode}": cases.model_step(m, app.B, app.n, app.k, device, mode == "compiled")
             for m in ("simple", "relaxed_topk_lean") for mode in ("eager", "compiled")}
    t0 = time.perf_counter()
    for fn in steps.values():  # compile (and warm up) before timing
        fn()
    compile_s = time.perf_counter() - t0
    out = []
    for t in counts:
        with runner.threads(t):
            times = runner.interleaved(steps, device, min_runs=dict.fromkeys(steps, budget["min_runs"]),
                                       max_runs=budget["max_runs"], budget_s=budget["budget_s"])
        med = {m: statistics.median(ts) for m, ts in times.items()}
        out.append({"threads": t or "-", "simple_s": med["simple/compiled"], "simple_eager_s": med["simple/eager"],
                    "baseline_s": med["relaxed_topk_lean/compiled"],
                    "baseline_eager_s": med["relaxed_topk_lean/eager"],
                    "ratio": med["simple/compiled"] / med["relaxed_topk_lean/compiled"],
                    "compiled_over_eager": med["simple/compiled"] / med["simple/eager"],
                    "compile_and_warmup_s": compile_s, "engine": cases.engine_name(app.n, app.k, device),
                    "times_s": times})
    return out


def _judge(app: cases.Application, row: dict) -> None:
    """The row's target as text and whether it is met (``None`` when the row has no target)."""
    checks = []
    if app.max_ratio is not None:
        checks.append((f"≤ {app.max_ratio}×", row.get("ratio"), lambda v: v <= app.max_ratio))
    if app.min_reference_speedup is not None:
        checks.append((f"reference ≥ {app.min_reference_speedup:g}× slower", row.get("reference_over_simple"),
                       lambda v: v >= app.min_reference_speedup))
    if app.max_ms is not None:
        limit = f"≤ {app.max_ms / 1e3:g} s" if app.max_ms >= 1000 else f"≤ {app.max_ms:g} ms"
        checks.append((limit, row.get("simple_s"), lambda v: v * 1e3 <= app.max_ms))
    if app.max_mb is not None:
        checks.append((f"≤ {app.max_mb:g} MB", row.get("peak_rss_mb", row.get("peak_cuda_mb")),
                       lambda v: v <= app.max_mb))
    if not checks:
        row["target"], row["met"] = "—", None
        return
    row["target"] = ", ".join(text for text, _, _ in checks)
    row["met"] = all(v is not None and ok(v) for _, v, ok in checks)


def _log_line(r: dict) -> str:
    def ms(key):
        v = r.get(key)
        return f"{v * 1e3:.3f} ms" if isinstance(v, (int, float)) else "-"

    parts = [f"  {r['name']:15s} {r['B']}x{r['n']}x{r['k']} threads {r['threads']}: simple {ms('simple_s')}"]
    if "baseline_s" in r:
        parts.append(f"lean {ms('baseline_s')} ratio {r['ratio']:.2f}")
    if "reference_over_simple" in r:
        parts.append(f"reference/simple {r['reference_over_simple']:.1f}")
    if "compiled_over_eager" in r:
        parts.append(f"eager {ms('simple_eager_s')} compiled/eager {r['compiled_over_eager']:.2f}")
    if "peak_rss_mb" in r:
        parts.append(f"peak {r['peak_rss_mb']:.0f} MB (before {r['rss_before_mb']:.0f} MB)")
    if "max_err" in r:
        parts.append(f"max|d| {r['max_err']:.1e}")
    if "error" in r:
        parts.append(f"error: {r['error']}")
    parts.append(f"target {r['target']}: {'-' if r['met'] is None else ('met' if r['met'] else 'NOT met')}")
    return ", ".join(parts)
