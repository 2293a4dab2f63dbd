"""The SIMPLE paper's experiments as runnable, reported programs (the layer above the estimators).

Each experiment is a module that calls :func:`register` with a name, a one-line description, a ``run(ctx)``
function and optionally ``add_arguments(parser)`` for its own command-line options. The command line
(``ksubset reproduce NAME``) and :func:`run_all` find experiments only through this registry, so a new
experiment plugs in by adding one module to :data:`_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import MissingDataError, RunContext, atomic_write_text

__all__ = ["Experiment", "register", "get", "names", "run", "run_all"]

#: Modules that register experiments, imported lazily (heavy dependencies stay unimported until needed).
_MODULES = [
    "ksubset.experiments.bias_variance",
    "ksubset.experiments.sparse_regression.experiment",
    "ksubset.experiments.vae.experiment",
    "ksubset.experiments.l2x.experiment",
]


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    run: Callable[[RunContext], dict[str, Any]]
    add_arguments: Callable[[argparse._ActionsContainer], None] | None = None  # a parser or an argument group
    #: a line for the top-level report: what the quick configuration shows
    quick_note: str = ""


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if experiment.name in _REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} registered twice")
    _REGISTRY[experiment.name] = experiment
    return experiment


def _load() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def names() -> list[str]:
    _load()
    return list(_REGISTRY)


def get(name: str) -> Experiment:
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def run(
    name: str,
    out: Path | str = "results",
    *,
    mode: str = "quick",
    seed: int = 0,
    options: dict[str, Any] | None = None,
    show_progress: bool = True,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run one experiment into ``out/<name>/`` and return its summary."""
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
    exp = get(name)
    ctx = RunContext(
        name=name,
        out_dir=Path(out) / name,
        mode=mode,
        seed=seed,
        options=dict(options or {}),
        show_progress=show_progress,
        fresh=fresh,
    )
    return exp.run(ctx)


def run_all(out: Path | str = "results", *, seed: int = 0, show_progress: bool = True, fresh: bool = False):
    """Run every registered experiment in its quick configuration and write ``out/report.md``."""
    out = Path(out)
    summaries = {}
    for name in names():
        print(f"== {name}: {get(name).description}", flush=True)
        try:
            summaries[name] = run(name, out, mode="quick", seed=seed, show_progress=show_progress, fresh=fresh)
        except MissingDataError as exc:  # the other experiments still run and the report says what did not
            print(f"   not run: {exc}", flush=True)
            summaries[name] = {"not_run": str(exc)}
            continue
        print(f"   -> {out / name / 'report.md'}", flush=True)
    lines = [
        "# ksubset reproduce — quick configuration",
        "",
        "Each experiment ran in its quick configuration (`ksubset reproduce NAME --full` runs the paper's).",
        "",
    ]
    for name, summary in summaries.items():
        if "not_run" in summary:
            lines += [f"## {name}", "", get(name).description, "", f"**Not run:** {summary['not_run']}", ""]
            continue
        lines.append(f"## [{name}]({name}/report.md)")
        lines.append("")
        lines.append(get(name).description)
        lines.append("")
        for line in summary.get("headline", []):
            lines.append(f"- {line}")
        lines.append("")
    atomic_write_text(out / "report.md", "\n".join(lines))
    return summaries
