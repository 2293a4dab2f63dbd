"""The study: its configurations, the cached units (one baseline or one learning run each) and the run of them all.

Blocks of learning runs (:func:`_studies`): ``paper`` — the paper's setting (clean data, 14 terms, the
original code's ``masked`` vertex gradient, every method, ``seeds`` seeds); ``loss`` — the same data with this
library's vertex gradients (``loss``, default ``swap``, with ``seeds`` seeds, and the ``loss_ablation`` ones with
``grid_seeds``); ``noise`` and ``large`` — the beyond-paper grids (noise 0/1/5/10 %, with and without low-pass
denoising; the 23-term library plus 0–200 random smooth distractor columns, where ``C(n, 3)`` reaches 1.8·10^6),
with ``loss``. Each unit is cached by :meth:`RunContext.unit` under a key and the full configuration it ran
with, so a stopped run resumes and a changed setting recomputes only what it changes.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

import numpy as np

from ..common import RunContext, progress
from .data import DataSpec, DataStore
from .learner import METHODS, hyperparameters, learn_support
from .problem import LOSSES, OBJECTIVE, RIDGE_ALPHA, K, SubsetProblem

TRUE_COEF = -1.0
BASELINES = ("exhaustive", "stlsq", "lasso")

_ALL_METHODS = ["simple", "fd", "simple_f", "simple_b", "ste", "imle", "aimle", "relaxed_topk", "st_relaxed_topk",
                "score_function"]
QUICK: dict[str, Any] = {
    "noise": [0.0, 5.0], "lowpass": [2.5],
    "methods": ["simple", "fd", "imle", "relaxed_topk", "score_function"],
    "seeds": 3, "grid_seeds": 2, "steps": 300, "lr": 0.1, "batch": 4, "paper_loss": "masked", "loss": "swap",
    "loss_ablation": [],
    "baselines": list(BASELINES),
    "distractors": [50], "large_methods": ["simple", "imle"], "large_steps": 300, "large_baselines":
    ["exhaustive", "stlsq"], "ks_n": 1024, "ks_tmax": 100.0, "periodic": True, "cache_dir": None,
}
FULL: dict[str, Any] = {
    **QUICK,
    "noise": [0.0, 1.0, 5.0, 10.0], "lowpass": [0.0, 2.5],
    "methods": _ALL_METHODS, "seeds": 10, "grid_seeds": 5, "steps": 500, "loss_ablation": ["multilinear"],
    "distractors": [0, 50, 100, 200],
    "large_methods": ["simple", "fd", "imle", "aimle", "relaxed_topk", "score_function"], "large_steps": 600,
}


def config(ctx: RunContext) -> dict[str, Any]:
    """The run's configuration: :data:`QUICK` or :data:`FULL` with the command-line options over it, validated."""
    cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in (QUICK if ctx.quick else FULL).items()}
    for key, value in ctx.options.items():
        if value is None or key not in cfg:
            continue
        cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
    cfg["noise"] = [float(x) for x in cfg["noise"]]
    cfg["lowpass"] = [float(x) for x in cfg["lowpass"]] or [0.0]
    cfg["distractors"] = [int(x) for x in cfg["distractors"]]
    for key in ("methods", "large_methods"):
        bad = [m for m in cfg[key] if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    if cfg["loss"] not in LOSSES or cfg["paper_loss"] not in LOSSES or any(
            x not in LOSSES for x in cfg["loss_ablation"]):
        raise ValueError(f"loss, paper_loss and loss_ablation must be among {LOSSES}")
    bad = [b for b in cfg["baselines"] + cfg["large_baselines"] if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; choose from {list(BASELINES)}")
    if any(x < 0 for x in cfg["noise"]) or any(d < 0 or d > 200 for d in cfg["distractors"]):
        raise ValueError("noise must be >= 0 and distractors in [0, 200]")
    cfg["loss_ablation"] = [x for x in dict.fromkeys(cfg["loss_ablation"]) if x not in (cfg["loss"],
                                                                                          cfg["paper_loss"])]
    if 0.0 not in cfg["noise"]:
        cfg["noise"] = [0.0] + cfg["noise"]  # the paper's setting always runs
    return cfg



def _coef_summary(support, coef, n: int, true_support) -> dict[str, Any]:
    dense = np.zeros(n)
    dense[np.asarray(support, dtype=np.int64)] = coef
    target = np.zeros(n)
    target[np.asarray(true_support, dtype=np.int64)] = TRUE_COEF
    err = np.abs(dense - target)
    return {"coef_max_error": float(err.max()), "coef_true_terms": [float(dense[i]) for i in true_support]}


def _baseline_unit(ctx: RunContext, store: DataStore, spec: DataSpec, name: str, data_cfg: dict) -> dict[str, Any]:
    def compute():
        from .baselines import exhaustive_search, format_equation, lasso_baseline, stlsq_baseline

        d = store.get(spec)
        if name == "exhaustive":
            res = exhaustive_search(None, None, k=K, gram=d.gram, names=d.names)
        elif name == "stlsq":
            res = stlsq_baseline(d.theta, d.u_t, d.names)
        elif name == "lasso":
            res = lasso_baseline(d.theta, d.u_t, d.names, k=K, mode="cv")
        else:
            raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
        out = {
            "support": res.support.tolist(),
            "coefficients": res.coefficients.tolist(),
            "equation": format_equation(res.support, res.coefficients, d.readable),
            "exact_support": tuple(res.support.tolist()) == tuple(d.true_support.tolist()),
            "seconds": res.seconds,
            "mse": res.mse,
            "n_terms": d.n,
        }
        out.update(_coef_summary(res.support, res.coefficients, d.n, d.true_support))
        if name == "exhaustive":
            out["n_subsets"] = int(res.info["n_subsets"])
            out["mse_ratio"] = float(res.info.get("mse_ratio", float("nan")))
            runner = res.info.get("runner_up_support")
            out["runner_up"] = None if runner is None else ", ".join(d.readable[i] for i in runner)
        return out

    return ctx.unit(f"{spec.key}-baseline-{name}", {**data_cfg, "baseline": name, "alpha": RIDGE_ALPHA}, compute)



def _learn_unit(ctx, store, spec, method_name, loss, seed, cfg, data_cfg, *, steps, trajectory) -> dict[str, Any]:
    method = METHODS[method_name]
    unit_loss = None if method.estimator == "score_function" else loss  # SFE uses f only
    unit_cfg = {**data_cfg, "method": method_name, "estimator": method.estimator, "hp": hyperparameters(method),
                "loss": unit_loss, "steps": steps, "lr": cfg["lr"], "batch": cfg["batch"], "seed": seed,
                "init": "ones", "trajectory": trajectory, "objective": OBJECTIVE}

    def compute():
        from .baselines import format_equation

        d = store.get(spec)
        problem = SubsetProblem(d.gram, d.true_support)
        every = 1 if d.n <= 32 else None
        r = learn_support(problem, method, loss=loss, steps=steps, lr=cfg["lr"], batch=cfg["batch"], seed=seed,
                          trajectory_every=every if trajectory else None)
        r["equation"] = format_equation(np.asarray(r["support"]), np.asarray(r["coefficients"]), d.readable)
        r.update(_coef_summary(r["support"], r["coefficients"], d.n, d.true_support))
        if trajectory:
            r["names"] = d.readable
        r["true_support"] = d.true_support.tolist()
        return r

    key = f"{spec.key}-{unit_loss or 'f'}-{method_name}-s{seed}"
    return ctx.unit(key, unit_cfg, compute)


def _data_cfg(cfg: dict, spec: DataSpec, noise_seed: int) -> dict[str, Any]:
    return {"library": spec.library, "noise": spec.noise, "lowpass": spec.lowpass, "distractors": spec.distractors,
            "noise_seed": noise_seed, "ks_n": cfg["ks_n"], "ks_tmax": cfg["ks_tmax"], "periodic": cfg["periodic"],
            "max_distractors": max(cfg["distractors"]) if spec.library == "large" else 0}


def _summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["exact_support"]]
    rec = [r for r in runs if r["steps_to_recovery"] is not None]
    eqs = Counter(r["equation"] for r in runs)
    out: dict[str, Any] = {
        "seeds": len(runs),
        "successes": len(ok),
        "success_rate": len(ok) / len(runs) if runs else float("nan"),
        "modal_equation": eqs.most_common(1)[0][0] if runs else "",
        "median_steps_to_recovery": statistics.median(r["steps_to_recovery"] for r in rec) if rec else None,
        "median_seconds_to_recovery": statistics.median(r["seconds_to_recovery"] for r in rec) if rec else None,
        "median_seconds": statistics.median(r["seconds"] for r in runs) if runs else None,
        "median_coef_max_error": statistics.median(r["coef_max_error"] for r in runs) if runs else None,
        "median_subset_fits_to_recovery": (statistics.median(r["subset_fits"] * r["steps_to_recovery"] / r["steps"]
                                                             for r in rec) if rec else None),
    }
    if ok:
        out["mean_true_coefficients"] = [float(np.mean([r["coef_true_terms"][j] for r in ok])) for j in range(K)]
    return out



def _studies(cfg: dict) -> list[tuple[str, DataSpec, list[str], str, int, int]]:
    """(study, data, methods, loss, seeds, steps) for every block of learning runs.

    ``paper``: the paper's setting (clean data, ``paper_loss``, every method); ``loss``: the same data with this
    library's vertex gradient ``loss`` (as many seeds) and the ``loss_ablation`` ones (grid seeds), pathwise
    methods only (the score function uses f only, so its runs are those of ``paper``); ``noise`` and ``large``:
    the beyond-paper grids, with ``loss``.
    """
    blocks = []
    paper = DataSpec("paper")
    blocks.append(("paper", paper, cfg["methods"], cfg["paper_loss"], cfg["seeds"], cfg["steps"]))
    pathwise = [m for m in cfg["methods"] if METHODS[m].estimator != "score_function"]
    if cfg["loss"] != cfg["paper_loss"]:
        blocks.append(("loss", paper, pathwise, cfg["loss"], cfg["seeds"], cfg["steps"]))
    for loss in cfg["loss_ablation"]:
        blocks.append(("loss", paper, pathwise, loss, cfg["grid_seeds"], cfg["steps"]))
    for noise in cfg["noise"]:
        for lp in cfg["lowpass"] if noise else [0.0]:
            spec = DataSpec("paper", float(noise), float(lp))
            if spec == paper:
                continue
            blocks.append(("noise", spec, cfg["methods"], cfg["loss"], cfg["grid_seeds"], cfg["steps"]))
    for d in cfg["distractors"]:
        blocks.append(("large", DataSpec("large", 0.0, 0.0, int(d)), cfg["large_methods"], cfg["loss"],
                       cfg["grid_seeds"], cfg["large_steps"]))
    return blocks


def run_all(ctx: RunContext, cfg: dict, store: DataStore) -> dict[str, Any]:
    blocks = _studies(cfg)
    data_specs = list(dict.fromkeys(b[1] for b in blocks))
    # jobs grouped by data set, so that each library is built at most once (and only if a unit needs it)
    jobs: list[tuple] = []
    for spec in data_specs:
        names = cfg["large_baselines"] if spec.library == "large" else cfg["baselines"]
        jobs += [("baseline", spec, b) for b in names]
        for study, spec_b, methods, loss, n_seeds, steps in blocks:
            if spec_b != spec:
                continue
            seeds = [ctx.seed * 1000 + i for i in range(n_seeds)]
            jobs += [("learn", spec, study, m, loss, s, steps, i == 0) for m in methods for i, s in enumerate(seeds)]

    baselines: dict[str, dict[str, Any]] = {}
    runs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    trajectories: dict[str, Any] = {}
    for job in progress(jobs, desc="sparse-regression", total=len(jobs), enabled=ctx.show_progress):
        spec = job[1]
        data_cfg = _data_cfg(cfg, spec, ctx.seed)
        if job[0] == "baseline":
            baselines.setdefault(spec.key, {})[job[2]] = _baseline_unit(ctx, store, spec, job[2], data_cfg)
            continue
        _, _, study, m, loss, seed, steps, first = job
        trajectory = first and study == "paper"
        r = _learn_unit(ctx, store, spec, m, loss, seed, cfg, data_cfg, steps=steps, trajectory=trajectory)
        runs.setdefault((study, spec.key, m, loss), []).append(r)
        if trajectory and "trajectory" in r:
            trajectories[m] = {"names": r["names"], "true_support": r["true_support"], "logits": r["trajectory"]}

    datasets = {}
    for spec in data_specs:
        n = 23 + spec.distractors if spec.library == "large" else 14
        datasets[spec.key] = {"title": spec.title, "library": spec.library, "noise": spec.noise,
                              "lowpass": spec.lowpass, "distractors": spec.distractors, "n_terms": n,
                              "n_subsets": math.comb(n, K), "baselines": baselines.get(spec.key, {})}
    learned = []
    for (study, key, m, loss), rs in runs.items():
        learned.append({"study": study, "data": key, "method": m, "label": METHODS[m].label,
                        "loss": None if METHODS[m].estimator == "score_function" else loss,
                        "summary": _summarise_runs(rs),
                        "runs": [{k: v for k, v in r.items() if k not in ("trajectory", "loss_curve", "names")}
                                 for r in rs]})
    return {"datasets": datasets, "learned": learned, "trajectories": trajectories}

