"""Benchmark suite: exact k-subset sampling + SIMPLE against the reference engine and the relaxations.

Run as ``python -m ksubset.bench`` (or ``ksubset bench``); ``--quick`` finishes in a few minutes.

What is timed: one training step's worth of the estimator, ``z = est(logits, k); z.backward(g)`` with a fixed
upstream gradient ``g`` (forward sample + backward), in one process, with torch's default thread count
(``--threads N`` to change it). For each shape the methods are timed round-robin (one run of each per round,
after two warm-up runs each) and the median of at least 5 runs is reported, so that a change in machine load
during the measurement affects every method alike. Methods:

* ``reference`` / ``tree`` / ``auto`` — :func:`ksubset.simple` with the engine forced by
  :func:`ksubset.core.use_engine` (``auto`` is the default dispatch: the compiled kernel on CPU when numba is
  installed, else the tree);
* ``st_relaxed_topk`` — Xie & Ermon's relaxed top-k (k successive softmaxes of Gumbel-perturbed logits with
  ``alpha <- alpha + log(1 - a)``), hard top-k forward by straight-through; ``relaxed_topk`` — the same
  without the hard forward; ``imle`` — perturb-and-MAP with sum-of-gamma noise, backward the difference of two
  MAPs. These come from :mod:`ksubset.estimators` when it provides them, else from small private versions;
* ``st_relaxed_topk_lean`` / ``relaxed_topk_lean`` — minimal versions of the two relaxations (no argument
  checks, masks or per-row k): the cheapest a user could write them, the stricter comparison.

*Compiled models* (``--no-compile`` skips them): on the L2X shape, a small model (a linear layer giving the
logits, the estimator, a fixed linear read-out) trained one step at a time, eager and under
``torch.compile`` (inductor), with ``simple`` and with ``st_relaxed_topk``; the global generator supplies the
noise, so each compiled step is one graph (forward and backward).

Also reported: the peak resident memory of a fresh process while it runs the case (sampled every 5 ms; the
resident size before the case — interpreter, torch, numba, inputs — next to it; ``ru_maxrss`` is not used
because a child started by fork + exec inherits its parent's high-water mark on Linux), and the largest
``|mu - mu_64|`` of each exact engine's marginals (inputs in float32) against a float64 reference (the
sequential reference engine for the small shapes, the tree engine for ``n = 10^6``; full runs only).

Outputs in ``--out`` (default ``results/bench``): ``bench.json`` (every number) and ``growth.png`` (log-log
time against n and k), both written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import ksubset
from ksubset import core
from ksubset.core import functions

__all__ = ["main"]

#: The issue's shapes: (name, B, n, k).
SHAPES = [("L2X", 40, 350, 10), ("B128", 128, 1000, 100), ("VAE", 2000, 20, 10)]
EXACT = ["reference", "tree", "auto"]
BASELINES = ["st_relaxed_topk", "relaxed_topk", "imle"]
#: Minimal versions of the two relaxations (no validation, masks or per-row k), timed next to the library's.
LEAN = ["st_relaxed_topk_lean", "relaxed_topk_lean"]


# --------------------------------------------------------------------------------------------------------
# baselines: from ksubset.estimators when it has them, else small private versions


def _gumbel(x: torch.Tensor, generator) -> torch.Tensor:
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(x.dtype).tiny)))


def _relax(keys: torch.Tensor, k: int, t: float) -> torch.Tensor:
    """Xie & Ermon (2019): ``a^j = softmax(alpha^j / t)``, ``alpha^{j+1} = alpha^j + log(1 - a^j)``."""
    alpha, out, a = keys, torch.zeros_like(keys), None
    for j in range(k):
        if j:
            alpha = alpha + torch.log((1 - a).clamp_min(torch.finfo(keys.dtype).tiny))
        a = torch.softmax(alpha / t, dim=-1)
        out = out + a
    return out


def _topk_hot(keys: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(keys).scatter_(-1, keys.topk(k, dim=-1).indices, 1.0)


def _private_relaxed_topk(logits, k, *, generator=None, t: float = 1.0):
    return _relax(logits + _gumbel(logits, generator), k, t)


def _private_st_relaxed_topk(logits, k, *, generator=None, t: float = 1.0):
    keys = logits + _gumbel(logits.detach(), generator)
    soft = _relax(keys, k, t)
    return _topk_hot(keys.detach(), k) + soft - soft.detach()


class _PerturbAndMAP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, k, eps, lam):
        z = _topk_hot(theta + eps, k)
        ctx.save_for_backward(theta, eps, z)
        ctx.k, ctx.lam = k, lam
        return z

    @staticmethod
    def backward(ctx, g):
        theta, eps, z = ctx.saved_tensors
        return z - _topk_hot(theta - ctx.lam * g + eps, ctx.k), None, None, None


def _private_imle(logits, k, *, generator=None, lam: float = 2.5, s: int = 10, tau: float = 1.0):
    """Sum-of-gamma noise ``(tau/k) (sum_i Gamma(1/k, scale k/i) - log s)`` (global RNG), top-k MAP."""
    shape = torch.full(logits.shape, 1.0 / k, dtype=logits.dtype, device=logits.device)
    total = sum(torch.distributions.Gamma(shape, i / k).sample() for i in range(1, s + 1))
    eps = (tau / k) * (total - math.log(s))
    return _PerturbAndMAP.apply(logits, k, eps, lam)


def _baselines() -> tuple[dict[str, Callable], str]:
    try:
        from ksubset.estimators import (
            get,  # noqa: F401  (the registry marks the finished module)
            imle,
            relaxed_topk,
            st_relaxed_topk,
        )
    except ImportError:
        private = {
            "st_relaxed_topk": _private_st_relaxed_topk,
            "relaxed_topk": _private_relaxed_topk,
            "imle": _private_imle,
        }
        return private, "ksubset.bench (private)"
    return {
        "st_relaxed_topk": st_relaxed_topk,
        "relaxed_topk": relaxed_topk,
        "imle": imle,
    }, "ksubset.estimators"


# --------------------------------------------------------------------------------------------------------
# cases


def _estimator(method: str) -> Callable:
    """``f(logits, k, generator) -> z`` for a method name."""
    if method in EXACT:
        engine = None if method == "auto" else method

        def run(x, k, generator):
            with core.use_engine(engine):
                return ksubset.simple(x, k, generator=generator)

        return run
    fn = {"st_relaxed_topk_lean": _private_st_relaxed_topk, "relaxed_topk_lean": _private_relaxed_topk}.get(
        method
    )
    if fn is None:
        fn = _baselines()[0][method]
    return lambda x, k, generator: fn(x, k, generator=generator)


def _inputs(B: int, n: int, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, generator=g).to(device).requires_grad_(True)
    up = torch.randn(B, n, generator=g).to(device)
    return x, up


def _step_fn(method: str, B: int, n: int, k: int, device: str, seed: int = 0):
    """One forward + backward of ``method`` on fixed inputs (fresh noise each call)."""
    x, up = _inputs(B, n, device, seed)
    est = _estimator(method)
    gen = torch.Generator(device=device).manual_seed(seed + 1)

    def step():
        x.grad = None
        z = est(x, k, gen)
        z.backward(up)

    return step


def _sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _time(step: Callable, device: str, *, min_runs: int, max_runs: int, budget_s: float, warmup: int = 1):
    """Median wall time (s) of ``step`` after ``warmup`` calls, over ``min_runs..max_runs`` runs."""
    sync = _sync(device)
    first = 0.0
    for _ in range(max(1, warmup)):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        first = time.perf_counter() - t0
    runs = int(min(max_runs, max(min_runs, budget_s / max(first, 1e-9))))
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _engine_name(B: int, n: int, device: str) -> str:
    return functions.engine_for(torch.zeros(B, n, device=device)).__name__.rsplit(".", 1)[-1]


def _max_dmu(method: str, x: torch.Tensor, k: int, mu64: torch.Tensor) -> float:
    engine = None if method == "auto" else method
    with core.use_engine(engine):
        mu = ksubset.marginals(x.detach().float(), k)
    return float((mu.double() - mu64).abs().max())


def _mu64(x: torch.Tensor, k: int, engine: str) -> torch.Tensor:
    with core.use_engine(engine):
        return ksubset.marginals(x.detach().double(), k)


# --------------------------------------------------------------------------------------------------------
# memory: a fresh process per case (ru_maxrss sees every allocator: torch's, numba's, numpy's)


def _rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_mb()


def _peak_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


class _RssSampler:
    """Largest resident size seen by a background thread (every ``period`` s) while active."""

    def __init__(self, period: float = 0.005):
        import threading

        self.period, self.peak, self._stop = period, _rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _child(spec: dict) -> dict:
    """Run one case in this (fresh) process: warm-up, timed runs, memory, optional float64 check.

    ``peak_rss_mb``: the largest resident size of this process sampled (every 5 ms) during the timed runs,
    after one warm-up run (so a numba compilation, if its cache was stale, is not counted);
    ``rss_before_mb``: the resident size before the case (interpreter, torch, numba, inputs). Not
    ``ru_maxrss``: on Linux a child started by ``fork`` + ``exec`` inherits its parent's high-water mark.
    """
    method, B, n, k = spec["method"], spec["B"], spec["n"], spec["k"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    step = _step_fn(method, B, n, k, "cpu", spec.get("seed", 0))
    rss_before = _rss_mb()
    for _ in range(spec.get("warmup", 1)):
        step()
    times = []
    with _RssSampler() as sampler:
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    out = {
        "median_s": statistics.median(times),
        "times_s": times,
        "rss_before_mb": rss_before,
        "peak_rss_mb": sampler.peak,
    }
    if spec.get("check_engine"):
        x, _ = _inputs(B, n, "cpu", spec.get("seed", 0))
        mu64 = _mu64(x, k, spec["check_engine"])
        out["max_dmu"] = _max_dmu(method, x, k, mu64)
        out["check_engine"] = spec["check_engine"] + " (float64)"
    return out


def _in_child(spec: dict, timeout_s: float) -> dict:
    spec = {**spec, "threads": torch.get_num_threads()}  # the child runs with the parent's thread count
    cmd = [sys.executable, "-m", "ksubset.bench", "--child", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------------
# the suite


def _interleaved(steps: dict, device: str, *, min_runs: dict, max_runs: int, budget_s: float) -> dict:
    """Median times of several steps measured round-robin (one run of each per round, after one warm-up run
    each), so that a change in machine load during the measurement affects every method alike."""
    sync = _sync(device)
    first = {}
    for m, step in steps.items():
        for _ in range(2):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            first[m] = time.perf_counter() - t0
    want = {m: int(min(max_runs, max(min_runs[m], budget_s / max(first[m], 1e-9)))) for m in steps}
    if any(min_runs[m] < 5 for m in steps):  # slow methods: at most their min_runs
        want = {m: min(want[m], max(min_runs[m], 5)) for m in steps}
    times: dict = {m: [] for m in steps}
    while any(len(times[m]) < want[m] for m in steps):
        for m, step in steps.items():
            if len(times[m]) < want[m]:
                sync()
                t0 = time.perf_counter()
                step()
                sync()
                times[m].append(time.perf_counter() - t0)
    return times


def _main_table(args, log) -> list[dict]:
    rows = []
    _, source = _baselines()
    log(
        f"baselines from {source} (+ minimal '_lean' relaxations); SIMPLE = ksubset.simple "
        "(forward: exact sample + marginals, backward: Cov g); times are fwd + bwd, round-robin medians"
    )
    methods = EXACT + BASELINES + LEAN
    for name, B, n, k in SHAPES:
        x, _ = _inputs(B, n, args.device, 0)
        mu64 = _mu64(x.cpu(), k, "reference")
        steps = {m: _step_fn(m, B, n, k, args.device) for m in methods}
        min_runs = {m: (3 if args.quick else 5) if m == "reference" else 5 for m in methods}
        times = _interleaved(
            steps,
            args.device,
            min_runs=min_runs,
            max_runs=10 if args.quick else 40,
            budget_s=1.0 if args.quick else 3.0,
        )
        for method in methods:
            if method == "auto":
                engine = _engine_name(B, n, args.device)
            else:
                engine = method if method in EXACT else "-"
            row = {
                "shape": name,
                "B": B,
                "n": n,
                "k": k,
                "method": method,
                "engine": engine,
                "median_s": statistics.median(times[method]),
                "runs": len(times[method]),
                "times_s": times[method],
            }
            if method in EXACT:
                row["max_dmu"] = _max_dmu(method, x, k, mu64.to(x.device))
                row["dmu_reference"] = "reference engine (float64)"
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                steps[method]()
                torch.cuda.synchronize()
                row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
            elif not args.quick and not args.no_memory:
                mem = _in_child({"method": method, "B": B, "n": n, "k": k, "runs": 1}, timeout_s=600)
                row["peak_rss_mb"] = mem.get("peak_rss_mb")
                row["rss_before_mb"] = mem.get("rss_before_mb")
            rows.append(row)
        by = {r["method"]: r["median_s"] for r in rows if r["shape"] == name}
        for r in rows:
            if r["shape"] == name:
                r["ratio_to_st_relaxed_topk"] = r["median_s"] / by["st_relaxed_topk"]
                r["ratio_to_relaxed_topk"] = r["median_s"] / by["relaxed_topk"]
                r["ratio_to_st_relaxed_topk_lean"] = r["median_s"] / by["st_relaxed_topk_lean"]
                r["ratio_to_relaxed_topk_lean"] = r["median_s"] / by["relaxed_topk_lean"]
                r["reference_over_this"] = by["reference"] / r["median_s"]
                log(_fmt_row(r))
    return rows


#: The compiled-model rows: (shape name, estimator) on the L2X shape.
COMPILED = ["simple", "st_relaxed_topk"]


def _model_step(method: str, B: int, n: int, k: int, device: str, compiled: bool):
    """One training step (forward + backward) of ``linear -> estimator -> read-out``, eager or compiled."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(B, n, generator=g).to(device)
    readout = torch.randn(n, generator=g).to(device)
    layer = torch.nn.Linear(n, n).to(device)
    est = ksubset.simple if method == "simple" else _baselines()[0][method]

    def loss_fn(x):
        z = est(layer(x), k)
        return (z * readout).sum()

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        layer.zero_grad(set_to_none=True)
        fn(feats).backward()

    return step


def _compiled(args, log) -> list[dict]:
    """Compiled against eager models with ``simple`` and ``st_relaxed_topk`` on the L2X shape."""
    name, B, n, k = SHAPES[0]
    steps = {}
    for method in COMPILED:
        steps[f"{method}/eager"] = _model_step(method, B, n, k, args.device, False)
        steps[f"{method}/compiled"] = _model_step(method, B, n, k, args.device, True)
    t0 = time.perf_counter()
    for step in steps.values():  # compile (and warm up) before timing
        step()
    log(f"compiled models ready in {time.perf_counter() - t0:.0f} s")
    times = _interleaved(
        steps, args.device, min_runs=dict.fromkeys(steps, 5), max_runs=10 if args.quick else 40,
        budget_s=1.0 if args.quick else 3.0,
    )
    rows = []
    for label, ts in times.items():
        rows.append(
            {"shape": name, "B": B, "n": n, "k": k, "method": label, "engine": _engine_name(B, n, args.device)
             if label.startswith("simple") else "-", "median_s": statistics.median(ts), "runs": len(ts),
             "times_s": ts}
        )
    # each row against the same kind of model (eager or compiled) with st_relaxed_topk
    st = {r["method"].split("/")[1]: r["median_s"] for r in rows if r["method"].startswith("st_relaxed_topk")}
    for r in rows:
        r["ratio_to_st_relaxed_topk"] = r["median_s"] / st[r["method"].split("/")[1]]
        log(_fmt_row(r))
    return rows


def _large(args, log) -> list[dict]:
    cases = [
        ("large", 1, 10**6, 1000, 5, "tree"),
        ("n1e5_k1e4", 1, 10**5, 10**4, 1, None),
    ]
    if args.quick:  # one timed run of n = 1e6 only; the float64 tree check takes ~1.5 min
        cases = [("large", 1, 10**6, 1000, 1, None)]
    out = []
    for name, B, n, k, runs, check in cases:
        spec = {"method": "auto", "B": B, "n": n, "k": k, "runs": runs, "check_engine": check}
        if args.device.startswith("cuda"):
            step = _step_fn("auto", B, n, k, args.device)
            torch.cuda.reset_peak_memory_stats()
            med, times = _time(step, args.device, min_runs=runs, max_runs=runs, budget_s=0.0)
            res = {
                "median_s": med,
                "times_s": times,
                "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20,
            }
        else:
            res = _in_child(spec, timeout_s=1800)
        row = {
            "shape": name,
            "B": B,
            "n": n,
            "k": k,
            "method": "auto",
            "engine": _engine_name(B, n, args.device),
            "runs": runs,
            **res,
        }
        out.append(row)
        log(_fmt_row(row))
    return out


def _growth(args, log) -> dict:
    """Time of ksubset.simple (auto; tree and ST relaxed top-k where affordable) against n and k, B = 1."""
    n_max = 10**5 if args.quick else 10**6
    ns = [n for n in (10**2, 10**3, 10**4, 10**5, 10**6) if n <= n_max]
    series = {
        "k=10": [(n, 10) for n in ns],
        "k=sqrt(n)": [(n, int(round(math.sqrt(n)))) for n in ns],
        "n=1e4": [
            (10**4, k) for k in ((1, 10, 100, 1000) if args.quick else (1, 3, 10, 30, 100, 300, 1000, 3000))
        ],
    }
    work_cap = {
        "auto": 1e12,
        "tree": 0 if args.quick else 1e8,
        "st_relaxed_topk": 3e6 if args.quick else 3e7,
    }
    res: dict = {}
    for label, points in series.items():
        for method in ("auto", "tree", "st_relaxed_topk"):
            pts = []
            for n, k in points:
                if n * k > work_cap[method]:
                    continue
                step = _step_fn(method, 1, n, k, args.device)
                med, times = _time(
                    step,
                    args.device,
                    min_runs=3 if args.quick else 5,
                    max_runs=20,
                    budget_s=0.3 if args.quick else 1.0,
                )
                pts.append({"n": n, "k": k, "median_s": med, "runs": len(times)})
            res.setdefault(label, {})[method] = {
                "points": pts,
                "slope": _slope(pts, "k" if label == "n=1e4" else "n"),
            }
            if pts:
                log(
                    f"  growth {label:9s} {method:16s} slope {res[label][method]['slope']:.2f}  "
                    + " ".join(
                        f"{p['n' if label != 'n=1e4' else 'k']}:{p['median_s'] * 1e3:.3g}ms" for p in pts
                    )
                )
    return res


def _slope(pts: list[dict], var: str) -> float:
    """Least-squares slope of log(time) against log(var) over the upper half of the points (asymptotics)."""
    pts = pts[len(pts) // 2 - (1 if len(pts) % 2 == 0 and len(pts) > 2 else 0) :] if len(pts) > 2 else pts
    if len(pts) < 2:
        return float("nan")
    xs = [math.log(p[var]) for p in pts]
    ys = [math.log(p["median_s"]) for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((a - mx) ** 2 for a in xs)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / den if den else float("nan")


def _targets(main_rows: list[dict], large: list[dict], growth: dict) -> list[dict]:
    def row(shape, method):
        return next((r for r in main_rows if r["shape"] == shape and r["method"] == method), None)

    t = []

    def add(name, value, limit, ok, unit=""):
        t.append({"target": name, "value": value, "limit": limit, "met": bool(ok), "unit": unit})

    for shape, base, limit in (
        ("L2X", "st_relaxed_topk", 1.0),
        ("B128", "relaxed_topk", 0.5),
        ("VAE", "relaxed_topk", 1.0),
    ):
        a = row(shape, "auto")
        if a:
            for suffix in ("", "_lean"):
                v = a[f"ratio_to_{base}{suffix}"]
                add(f"{shape}: simple / {base}{suffix}", v, f"<= {limit}", v <= limit, "x")
            if shape == "L2X":
                v = a["reference_over_this"]
                add("L2X: reference / simple", v, ">= 100", v >= 100, "x")
    big = next((r for r in large if r["shape"] == "large"), None)
    if big and "median_s" in big:
        add(
            "n=1e6 k=1000: sample + marginals + SIMPLE backward",
            big["median_s"],
            "<= 10",
            big["median_s"] <= 10,
            "s",
        )
        mem = big.get("peak_rss_mb", big.get("peak_cuda_mb"))
        if mem is not None:
            add("n=1e6 k=1000: peak memory of the case", mem, "<= 2048", mem <= 2048, "MB")
    small = next((r for r in large if r["shape"] == "n1e5_k1e4"), None)
    if small:
        add("n=1e5 k=1e4: completes", small.get("median_s"), "finishes", "median_s" in small, "s")
    for label in ("k=10", "k=sqrt(n)", "n=1e4"):
        s = growth.get(label, {}).get("auto", {}).get("slope")
        if s is not None and not math.isnan(s):
            bound = {"k=10": 1.0, "k=sqrt(n)": 1.5, "n=1e4": 1.0}[label]
            add(
                f"growth {label}: log-log slope (O(nk) = {bound})", s, f"<= {bound} + 0.25", s <= bound + 0.25
            )
    return t


# --------------------------------------------------------------------------------------------------------
# output


def _num(v, fmt: str) -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and v == v else "-"


def _fmt_row(r: dict) -> str:
    ms = r.get("median_s")
    mem = r.get("peak_rss_mb", r.get("peak_cuda_mb"))
    err = f"  error: {r['error']}" if "error" in r else ""
    return (
        f"{r['shape']:>9s} B={r['B']} n={r['n']} k={r['k']} {r['method']:20s} {r['engine']:9s} "
        f"{_num(ms * 1e3 if ms else None, '{:.3f}')} ms (median of {r.get('runs', 0)})  "
        f"/ST {_num(r.get('ratio_to_st_relaxed_topk'), '{:.2f}')}  "
        f"/relax {_num(r.get('ratio_to_relaxed_topk'), '{:.2f}')}  "
        f"ref/this {_num(r.get('reference_over_this'), '{:.1f}')}  peak {_num(mem, '{:.0f}')} MB  "
        f"max|dmu| {_num(r.get('max_dmu'), '{:.1e}')}{err}"
    )


def _table(rows: list[dict]) -> str:
    head = (
        f"{'shape':>9s} {'B':>5s} {'n':>8s} {'k':>6s}  {'method':20s} {'engine':9s} {'time ms':>10s} "
        f"{'/ST':>6s} {'/STlean':>7s} {'/relax':>6s} {'/rxlean':>7s} {'ref/this':>8s} "
        f"{'peak MB':>7s} {'(before)':>8s} {'max|dmu|':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def num(key, fmt, scale=1.0, r=r):
            v = r.get(key)
            return _num(v * scale if isinstance(v, (int, float)) else v, fmt)

        mem_key = "peak_cuda_mb" if "peak_cuda_mb" in r else "peak_rss_mb"
        lines.append(
            f"{r['shape']:>9s} {r['B']:5d} {r['n']:8d} {r['k']:6d}  {r['method']:20s} {r['engine']:9s} "
            f"{num('median_s', '{:10.3f}', 1e3)} {num('ratio_to_st_relaxed_topk', '{:6.2f}')} "
            f"{num('ratio_to_st_relaxed_topk_lean', '{:7.2f}')} {num('ratio_to_relaxed_topk', '{:6.2f}')} "
            f"{num('ratio_to_relaxed_topk_lean', '{:7.2f}')} {num('reference_over_this', '{:8.1f}')} "
            f"{num(mem_key, '{:7.0f}')} {num('rss_before_mb', '{:8.0f}')} {num('max_dmu', '{:8.1e}')}"
        )
    return "\n".join(lines)


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _plot(growth: dict, path: str, meta: dict) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'ksubset[experiments]'): no plot"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"auto": "-o", "tree": "--s", "st_relaxed_topk": ":^"}
    labels = {
        "auto": "ksubset.simple (auto)",
        "tree": "ksubset.simple (tree)",
        "st_relaxed_topk": "ST relaxed top-k",
    }
    for label in ("k=10", "k=sqrt(n)"):
        for method, series in growth.get(label, {}).items():
            pts = series["points"]
            if pts:
                axes[0].loglog(
                    [p["n"] for p in pts],
                    [p["median_s"] for p in pts],
                    styles[method],
                    label=f"{labels[method]}, {label} (slope {series['slope']:.2f})",
                    alpha=0.85,
                )
    for method, series in growth.get("n=1e4", {}).items():
        pts = series["points"]
        if pts:
            axes[1].loglog(
                [p["k"] for p in pts],
                [p["median_s"] for p in pts],
                styles[method],
                label=f"{labels[method]} (slope {series['slope']:.2f})",
            )
    for ax, xl in zip(axes, ("n (items)", "k (n = 10^4)"), strict=True):
        lo, hi = ax.get_xlim()
        y0 = ax.get_ylim()[0] * 3
        ax.loglog([lo, hi], [y0, y0 * hi / lo], color="gray", lw=0.8, alpha=0.6, label="slope 1 (linear)")
        ax.set_xlabel(xl)
        ax.set_ylabel("forward + backward (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("time against n, B = 1")
    axes[1].set_title("time against k, B = 1, n = 10^4")
    fig.suptitle(
        f"ksubset.simple, {meta['device_name']}, torch {meta['torch']} ({meta['threads']} threads)",
        fontsize=9,
    )
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return None


def _meta(args) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    meta = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ksubset": ksubset.__version__,
        "engines": core.available_engines(),
        "quick": bool(args.quick),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(ImportError):
        import numba

        meta["numba"] = numba.__version__
    with contextlib.suppress(OSError, AttributeError):
        meta["loadavg_start"] = os.getloadavg()
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ksubset bench",
        description="Time exact k-subset sampling + SIMPLE against the reference engine and the relaxations.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs and smaller sizes (a minute or two)")
    parser.add_argument(
        "--out", default=os.path.join("results", "bench"), help="output folder (default: results/bench)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    parser.add_argument("--no-large", action="store_true", help="skip n=1e6 (k=1000) and n=1e5 (k=1e4)")
    parser.add_argument("--no-growth", action="store_true", help="skip the growth study and its plot")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile model rows")
    from .experiments.common import int_arg

    parser.add_argument(
        "--threads", type=int_arg(1), default=None, help="torch.set_num_threads(N) first (default: torch's default)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if args.child is not None:  # internal: one case in a fresh process
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(
                "ksubset bench: --device cuda requested but no CUDA device is available "
                "(torch.cuda.is_available() is False); run without --device for the CPU suite.",
                file=sys.stderr,
            )
            return 2
    elif args.device != "cpu":
        print(f"ksubset bench: unknown device {args.device!r} (use cpu or cuda)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    meta = _meta(args)
    log(
        f"ksubset bench on {meta['device_name']} ({meta['threads']} torch threads, torch {meta['torch']}, "
        f"numba {meta.get('numba', 'absent')}); engines {meta['engines']}; "
        f"load average {meta.get('loadavg_start', '?')}"
    )
    t0 = time.perf_counter()
    main_rows = _main_table(args, log)
    large = [] if args.no_large else _large(args, log)
    growth = {} if args.no_growth else _growth(args, log)
    compiled = [] if args.no_compile else _compiled(args, log)
    targets = _targets(main_rows, large, growth)
    with contextlib.suppress(OSError, AttributeError):
        meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.perf_counter() - t0

    print()
    print(_table(main_rows + large + compiled))
    print()
    print("targets (issue 3):")
    for t in targets:
        v = t["value"]
        vs = f"{v:.3g}{t['unit']}" if isinstance(v, (int, float)) else str(v)
        print(f"  [{'met' if t['met'] else 'NOT met':>7s}] {t['target']}: {vs} (target {t['limit']})")

    os.makedirs(args.out, exist_ok=True)
    result = {
        "meta": meta, "main": main_rows, "large": large, "growth": growth, "compiled": compiled, "targets": targets
    }
    _atomic_write(os.path.join(args.out, "bench.json"), json.dumps(result, indent=1).encode())
    msg = None if not growth else _plot(growth, os.path.join(args.out, "growth.png"), meta)
    print(
        f"\nwrote {os.path.join(args.out, 'bench.json')}"
        + ("" if not growth or msg else f" and {os.path.join(args.out, 'growth.png')}")
        + (f" ({msg})" if msg else "")
        + f" in {meta['wall_s']:.0f} s"
    )
    from . import bench_cardinality  # issue 12: inverse map and count constraints (writes cardinality.json)
    bench_cardinality.main((["--quick"] if args.quick else []) + ["--out", args.out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
