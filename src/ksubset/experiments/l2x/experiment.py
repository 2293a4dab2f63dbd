"""``ksubset reproduce l2x``: learning to explain (paper E3) and the L2X tabular sets, as resumable units.

Units are ``(setting, method, seed)`` for the reviews (a setting = aspect, k, learning rate) and
``(set, method, seed)`` for the tabular sets, each cached by :meth:`RunContext.unit`: a stopped run loses at
most the unit in progress. Order is seed-major with the main setting (aspect 1, k = 10) first, so the table
fills in usefully early. ``--report-only`` computes nothing and rewrites the report from the units present,
listing the missing ones.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import Experiment, register
from ..common import RunContext, atomic_write_json, float_arg, int_arg, progress
from .beer import write_original_format
from .data import DataSource
from .methods import METHODS
from .report import write_outputs
from .reviews import ReviewConfig
from .tabular import TABULAR_SETS

__all__ = ["E3_SETTINGS", "QUICK", "FULL", "run"]

#: (aspect, k, learning rate) of E3, the main setting first
E3_SETTINGS = [(1, 10, 5e-4), (1, 5, 1e-3), (1, 15, 1e-4), (0, 10, 5e-3), (2, 10, 1e-3), (3, 10, 5e-4)]
QUICK = {"n_train": 600, "epochs": 4, "seeds": 1, "settings": [(1, 10, 5e-4)],
         "tabular": {"n_train": 2000, "n_test": 500, "epochs": 3}}
FULL = {"n_train": 1200, "epochs": 20, "seeds": 5, "settings": E3_SETTINGS,
        "tabular": {"n_train": 10000, "n_test": 1000, "epochs": 5}}
EXAMPLE_ROWS = (0, 1, 2)


class _Missing(Exception):
    """Raised inside a unit's compute under --report-only: the unit is not cached."""


def _settings(base: list, aspect: int | None, k: int | None, lr: float | None) -> list[tuple[int, int, float]]:
    if aspect is not None and aspect not in (0, 1, 2, 3):
        raise ValueError(f"--aspect must be 0, 1, 2 or 3, got {aspect}")
    if k is not None and k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    pool = base if aspect is None and k is None else E3_SETTINGS
    chosen = [s for s in pool if (aspect is None or s[0] == aspect) and (k is None or s[1] == k)]
    if not chosen:  # a combination E3 did not run: the learning rate of that aspect's k = 10 setting
        a = 1 if aspect is None else aspect
        chosen = [(a, k, next(s[2] for s in E3_SETTINGS if s[0] == a and s[1] == 10))]
    return [(a, kk, lr if lr is not None else rate) for a, kk, rate in chosen]


def _config(ctx: RunContext) -> dict[str, Any]:
    o = ctx.options
    cfg: dict[str, Any] = {**(QUICK if ctx.quick else FULL)}
    cfg["settings"] = _settings(cfg["settings"], o.get("aspect"), o.get("k"), o.get("lr"))
    for key in ("n_train", "epochs", "seeds"):
        if o.get(key) is not None:
            if o[key] < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {o[key]}")
            cfg[key] = o[key]
    methods = o.get("methods") or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; available: {list(METHODS)}")
    cfg["methods"] = methods
    cfg["batch_size"] = o.get("batch_size") or 40
    cfg["max_len"] = o.get("max_len") or 350
    cfg["tabular_enabled"] = not o.get("skip_tabular", False)
    if o.get("tabular_rows") is not None:
        if o["tabular_rows"] < 10:
            raise ValueError(f"--tabular-rows must be >= 10, got {o['tabular_rows']}")
        cfg["tabular"] = {**cfg["tabular"], "n_train": o["tabular_rows"], "n_test": max(10, o["tabular_rows"] // 10)}
    cfg["data_dir"] = o.get("data_dir")
    return cfg


def _jobs(cfg: dict, data: DataSource, seed0: int) -> list[tuple[str, dict, Any]]:
    """Every unit as ``(key, config, compute)`` in run order (seed-major; main setting, tabular, the rest)."""
    from .tabular import train_tabular
    from .train import TrainConfig, train_rationale

    rows = [*cfg["methods"], "random"] + (["oracle"] if data.substitute else [])
    jobs = []

    def rationale_job(a, k, lr, method, seed):
        tc = TrainConfig(k=k, lr=lr, epochs=cfg["epochs"], batch_size=cfg["batch_size"])
        ucfg = {"data": data.describe(), "n_train": cfg["n_train"], "train": asdict(tc), "seed": seed,
                "method": METHODS[method].describe() if method in METHODS else method, "examples": EXAMPLE_ROWS}

        def compute():
            train, test, vectors = data.encoded(a)
            train = train.batch(_first(len(train), cfg["n_train"]))
            return train_rationale(method, train, test, vectors, tc, seed, EXAMPLE_ROWS)

        return (f"rationale-a{a}-k{k}-{method}-s{seed}", ucfg, compute)

    def tabular_job(name, method, seed):
        tcfg = dict(cfg["tabular"])
        ucfg = {"set": name, "method": METHODS[method].describe(), "seed": seed, **tcfg}
        return (f"tabular-{name}-{method}-s{seed}", ucfg, lambda: train_tabular(name, method, seed, **tcfg))

    for i in range(cfg["seeds"]):
        seed = seed0 + i
        main, rest = cfg["settings"][:1], cfg["settings"][1:]
        for a, k, lr in main:
            jobs += [rationale_job(a, k, lr, m, seed) for m in rows]
        if cfg["tabular_enabled"]:
            jobs += [tabular_job(name, m, seed) for name in TABULAR_SETS for m in cfg["methods"]]
        for a, k, lr in rest:
            jobs += [rationale_job(a, k, lr, m, seed) for m in rows]
    return jobs


def _first(n: int, m: int):
    import torch

    return torch.arange(min(n, m))


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = _config(ctx)
    data_dir = cfg["data_dir"]
    review_config = ReviewConfig(n_train=max(FULL["n_train"], cfg["n_train"]), seed=0)
    data = DataSource(review_config, Path(data_dir) if data_dir else None, ctx.options.get("vectors"), cfg["max_len"])
    report_only = bool(ctx.options.get("report_only"))
    jobs = _jobs(cfg, data, ctx.seed)
    results: dict[str, Any] = {}
    missing: list[str] = []
    t0 = time.time()
    for key, ucfg, compute in progress(jobs, desc="l2x units", total=len(jobs), enabled=ctx.show_progress):
        if report_only:
            def compute(key=key):
                raise _Missing(key)
        try:
            results[key] = ctx.unit(key, ucfg, compute)
        except _Missing:
            missing.append(key)
    if data.substitute:  # the annotated test set, in the original annotations.json format
        splits, _ = data.splits(1)
        write_original_format({"train": [], "val": [], "test": splits["test"]}, ctx.out_dir / "data", aspects=())
    summary = write_outputs(ctx, cfg, data, results, missing, seconds=time.time() - t0)
    atomic_write_json(ctx.out_dir / "results.json", summary)
    return summary


def _folder(text: str) -> str:
    import argparse

    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return text


def _add_arguments(parser) -> None:
    parser.add_argument("--aspect", type=int_arg(0, 3), default=None, help="only this aspect (0..3)")
    parser.add_argument("--k", type=int_arg(1), default=None, help="only this k (any k >= 1)")
    parser.add_argument("--lr", type=float_arg(0.0, strict=True), default=None,
                        help="learning rate (default: E3's per setting)")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), help="methods to train")
    parser.add_argument("--seeds", type=int_arg(1), default=None, help="seeds per setting (default: 1 quick, 5 full)")
    parser.add_argument("--n-train", type=int_arg(1), default=None, help="training reviews used (default 600 / 1200)")
    parser.add_argument("--epochs", type=int_arg(1), default=None, help="epochs (default: 4 quick, 20 full)")
    parser.add_argument("--batch-size", type=int_arg(1), default=None, help="batch size (default 40)")
    parser.add_argument("--max-len", type=int_arg(1), default=None, help="truncate reviews to this many tokens (350)")
    parser.add_argument("--data-dir", type=_folder, default=None,
                        help="folder with the original BeerAdvocate files (reviews.aspect{A}.{train,heldout}.txt, "
                             "annotations.json, one word-vector .txt file); default: substitute data")
    parser.add_argument("--vectors", default=None, help="the word-vector text file, if --data-dir has several")
    parser.add_argument("--tabular-rows", type=int_arg(1), default=None,
                        help="training rows of each tabular set (default: 2000 quick, 10000 full)")
    parser.add_argument("--skip-tabular", action="store_true", help="skip the L2X tabular sets")
    parser.add_argument("--report-only", action="store_true",
                        help="compute nothing: rewrite the report from the units present, listing missing ones")


register(Experiment(
    name="l2x",
    description="Learning to explain (paper E3) on substitute multi-aspect reviews with ground-truth "
                "rationales, and the L2X tabular sets",
    run=run,
    add_arguments=_add_arguments,
    quick_note="a smoke run: aspect 1, k = 10, 600 reviews, 4 epochs, one seed",
))
