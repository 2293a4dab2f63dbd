"""E4 of the SIMPLE paper: discover the Kuramoto–Sivashinsky equation by learning which 3 of 14 terms to keep.

This module registers the experiment (``ksubset reproduce sparse-regression``): its command-line options and
:func:`run`. The parts, one job each:

- :mod:`.ks_solver`, :mod:`.library` — the KS solution, noise, denoising, the PySINDy libraries and ``u_t``;
- :mod:`.baselines` — ridge fits from the Gram matrix, exhaustive search, STLSQ and Lasso;
- :mod:`.problem` — the loss ``f`` of a 3-subset and its vertex gradients ``∂ℓ/∂z`` (``masked``, the original
  code's; ``swap`` and ``multilinear``, this library's);
- :mod:`.learner` — the estimators compared (:data:`~.learner.METHODS`) and one Adam run (``learn_support``);
- :mod:`.data` — the data sets of the study, built lazily;
- :mod:`.study` — the configurations (quick, full), the cached units and the run of them all;
- :mod:`.report` — figures, the markdown report and the headline.

The headline is the paper's setting: clean data, 14 terms, every estimator given the original code's
``masked`` gradient (``--paper-loss``), where SIMPLE recovers the equation and the perturbation/relaxation
estimators do not. Beyond the paper, with this library's ``swap`` gradient (``--loss``): the same data, noise
0/1/5/10 % with and without low-pass denoising, and a 23-term library plus 0–200 distractor columns.
Baselines: exhaustive best 3-subset (``C(n, 3)`` ridge fits), PySINDy STLSQ (threshold 5), LassoCV with
contiguous folds (top-3 of its support, then a ridge refit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import Experiment, register
from ..common import RunContext, atomic_write_json, atomic_write_text, float_arg, int_arg
from .data import DataStore
from .learner import METHODS
from .problem import LOSSES
from .report import PAPER_COEFS, PAPER_EQUATION, figures, headline, markdown_report
from .study import BASELINES, config, run_all


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = config(ctx)
    cache_dir = Path(cfg["cache_dir"]) if cfg["cache_dir"] else ctx.out_dir / "data"
    store = DataStore(cfg, cache_dir, noise_seed=ctx.seed)
    torch.manual_seed(ctx.seed)
    results = run_all(ctx, cfg, store)
    files = figures(ctx, cfg, results, store)
    summary = {
        "provenance": ctx.provenance({k: v for k, v in cfg.items()}),
        "paper": {"equation": PAPER_EQUATION, "coefficients": PAPER_COEFS},
        "methods": {m: {"label": METHODS[m].label, "estimator": METHODS[m].estimator, "hp": METHODS[m].hp}
                    for m in dict.fromkeys(cfg["methods"] + cfg["large_methods"])},
        "datasets": results["datasets"],
        "learned": results["learned"],
        "trajectories": results["trajectories"],
        "figures": files,
    }
    summary["headline"] = headline(cfg, results)
    atomic_write_json(ctx.out_dir / "results.json", summary)
    report = markdown_report(ctx, cfg, results, files, summary["provenance"])
    atomic_write_text(ctx.out_dir / "report.md", report)
    return summary


def _ks_tmax(text: str) -> float:
    """argparse type of ``--ks-tmax``: a positive multiple of the snapshot interval 0.4 (at least 5 snapshots)."""
    import argparse

    value = float_arg(0.0, strict=True)(text)
    steps = round(value / 0.4)
    if steps < 4 or abs(steps * 0.4 - value) > 1e-9 * value:
        raise argparse.ArgumentTypeError(f"must be a multiple of the snapshot interval 0.4, >= 1.6, got {text}")
    return value


def _add_arguments(parser) -> None:
    parser.add_argument("--noise", type=float_arg(0.0), nargs="+", default=None,
                        help="noise levels in percent of std(u) (quick: 0 5; full: 0 1 5 10)")
    parser.add_argument("--lowpass", type=float_arg(0.0), nargs="+", default=None,
                        help="low-pass cut-offs tried on noisy data, 0 = none (quick: 2.5; full: 0 2.5)")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help="learned methods (estimators) to run")
    parser.add_argument("--seeds", type=int_arg(1), default=None,
                        help="seeds in the paper's setting (quick 3, full 10)")
    parser.add_argument("--grid-seeds", type=int_arg(1), default=None,
                        help="seeds per cell of the loss ablation, noise and large-library grids (quick 2, full 5)")
    parser.add_argument("--steps", type=int_arg(1), default=None, help="Adam steps (quick 300, full 500)")
    parser.add_argument("--lr", type=float_arg(0.0, strict=True), default=None, help="Adam learning rate (default 0.1)")
    parser.add_argument("--batch", type=int_arg(1), default=None, help="samples per step (default 4)")
    parser.add_argument("--paper-loss", choices=LOSSES, default=None,
                        help="vertex gradient dℓ/dz of the paper's-setting table (default: masked, as the original)")
    parser.add_argument("--loss", choices=LOSSES, default=None,
                        help="this library's vertex gradient dℓ/dz: clean-data comparison, noise and large-library "
                        "grids (default: swap)")
    parser.add_argument("--loss-ablation", nargs="*", choices=LOSSES, default=None,
                        help="further losses run on clean data with --grid-seeds seeds (full: multilinear)")
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=None,
                        help="baselines on the 14-term library (default: all)")
    parser.add_argument("--distractors", type=int_arg(0, 200), nargs="*", default=None,
                        help="distractors added to the 23 terms, 0..200; none: skip (quick 50; full 0 50 100 200)")
    parser.add_argument("--large-methods", nargs="*", choices=list(METHODS), default=None,
                        help="learned methods on the larger library")
    parser.add_argument("--large-steps", type=int_arg(1), default=None, help="steps on the larger library")
    parser.add_argument("--large-baselines", nargs="*", choices=BASELINES, default=None,
                        help="baselines on the larger library (default: exhaustive stlsq)")
    parser.add_argument("--ks-n", type=int_arg(16, even=True), default=None,
                        help="KS grid points, even, >= 16 (default 1024; smaller for tests)")
    parser.add_argument("--ks-tmax", type=_ks_tmax, default=None, help="KS final time (default 100)")
    parser.add_argument("--no-periodic", dest="periodic", action="store_const", const=False, default=None,
                        help="one-sided edge stencils as pysindy 2.1 ignores periodic=True (the paper's numbers)")
    parser.add_argument("--cache-dir", default=None, help="where the KS solution is cached (default: OUT/data)")


register(Experiment(
    name="sparse-regression",
    description="Discover the Kuramoto–Sivashinsky equation by learning 3 of 14 library terms (paper E4)",
    run=run,
    add_arguments=_add_arguments,
))
