"""What the benchmarks print and write: tables, targets, the growth plot, machine metadata, atomic files."""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import ksubset
from ksubset import core
from ksubset.experiments.common import atomic_write_bytes

__all__ = [
    "application_table",
    "atomic_write",
    "engine_table",
    "engine_targets",
    "fmt_row",
    "meta",
    "plot",
    "print_targets",
]


def _num(v, fmt: str, missing: str = "-") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and v == v else missing


# --------------------------------------------------------------------------------------------------------
# the engine table


def fmt_row(r: dict) -> str:
    """One engine-table row as a log line."""
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


def engine_table(rows: list[dict]) -> str:
    """The engine table: each method's median time, its ratios to the relaxations, memory and accuracy."""
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


def engine_targets(main_rows: list[dict], large: list[dict], growth: dict) -> list[dict]:
    """The engine table's targets: ``{target, value, limit, met, unit}`` each."""

    def row(shape, method):
        return next((r for r in main_rows if r["shape"] == shape and r["method"] == method), None)

    t = []

    def add(name, value, limit, ok, unit=""):
        t.append({"target": name, "value": value, "limit": limit, "met": bool(ok), "unit": unit})

    for shape, base, limit in (("L2X", "st_relaxed_topk", 1.0), ("B128", "relaxed_topk", 0.5),
                               ("VAE", "relaxed_topk", 1.0)):
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
        add("n=1e6 k=1000: sample + marginals + SIMPLE backward", big["median_s"], "<= 10", big["median_s"] <= 10,
            "s")
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
            add(f"growth {label}: log-log slope (O(nk) = {bound})", s, f"<= {bound} + 0.25", s <= bound + 0.25)
    return t


def print_targets(title: str, targets: list[dict]) -> None:
    print(f"{title}:")
    for t in targets:
        v = t["value"]
        vs = f"{v:.3g}{t['unit']}" if isinstance(v, (int, float)) else str(v)
        print(f"  [{'met' if t['met'] else 'NOT met':>7s}] {t['target']}: {vs} (target {t['limit']})")


# --------------------------------------------------------------------------------------------------------
# the application table


def application_table(rows: list[dict]) -> str:
    """The application table as Markdown: one line per (shape, thread count)."""
    head = ("| shape | B × n × k | threads | ksubset.simple | lean relaxed top-k | ratio | max \\|Δ\\| vs float64 "
            "| target | met |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        err = f" ({r['error']})" if "error" in r else ""
        simple, lean = _ms(r.get("simple_s")), _ms(r.get("baseline_s"))
        if "peak_rss_mb" in r:
            simple += f", peak {r['peak_rss_mb']:.0f} MB"
        if "simple_eager_s" in r:  # compiled model: both estimators compiled, eager beside
            simple += f" compiled ({_ms(r['simple_eager_s'])} eager)"
            lean += f" compiled ({_ms(r['baseline_eager_s'])} eager)"
        ref = f" (reference ÷ simple {r['reference_over_simple']:.0f}×)" if "reference_over_simple" in r else ""
        met = r.get("met")
        lines.append(
            f"| {r['name']} | {r['B']} × {r['n']} × {r['k']} | {r['threads']} | {simple}{err} | "
            f"{lean} | {_num(r.get('ratio'), '{:.2f}×', '—')}{ref} | {_num(r.get('max_err'), '{:.1e}', '—')} "
            f"| {r.get('target', '—')} | {'—' if met is None else ('yes' if met else '**no**')} |"
        )
    return "\n".join(lines)


def _ms(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    ms = seconds * 1e3
    return f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.3g} ms"


# --------------------------------------------------------------------------------------------------------
# files and metadata


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder (no half-written file; the
    permissions follow the umask)."""
    atomic_write_bytes(Path(path), data)


def plot(growth: dict, path: str, meta: dict) -> str | None:
    """Log-log time against n and k (the growth study) to ``path``; a message instead when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'ksubset[experiments]'): no plot"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"auto": "-o", "tree": "--s", "st_relaxed_topk": ":^"}
    labels = {"auto": "ksubset.simple (auto)", "tree": "ksubset.simple (tree)", "st_relaxed_topk": "ST relaxed top-k"}
    for label in ("k=10", "k=sqrt(n)"):
        for method, series in growth.get(label, {}).items():
            pts = series["points"]
            if pts:
                axes[0].loglog([p["n"] for p in pts], [p["median_s"] for p in pts], styles[method],
                               label=f"{labels[method]}, {label} (slope {series['slope']:.2f})", alpha=0.85)
    for method, series in growth.get("n=1e4", {}).items():
        pts = series["points"]
        if pts:
            axes[1].loglog([p["k"] for p in pts], [p["median_s"] for p in pts], styles[method],
                           label=f"{labels[method]} (slope {series['slope']:.2f})")
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
    fig.suptitle(f"ksubset.simple, {meta['device_name']}, torch {meta['torch']} ({meta['threads']} threads)",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write(path, buf.getvalue())
    return None


def meta(device: str, quick: bool) -> dict:
    """The machine, the versions, the engines and the load average at the start."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    out: dict[str, Any] = {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ksubset": ksubset.__version__,
        "engines": core.available_engines(),
        "quick": bool(quick),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(ImportError):
        import numba

        out["numba"] = numba.__version__
    with contextlib.suppress(OSError, AttributeError):
        out["loadavg_start"] = os.getloadavg()
    return out
