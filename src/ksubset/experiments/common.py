"""What every experiment shares: output folders, atomic writes, resumable units, provenance, progress.

An experiment is a function ``run(ctx) -> dict`` registered with :func:`ksubset.experiments.register`.
It writes into ``ctx.out_dir`` (``DIR/<name>/``):

* ``results.json`` — machine-readable numbers plus the configuration, package version, git commit and seed;
* ``report.md`` — tables beside the paper's numbers, and what differs and why;
* PNG figures.

Long computations are split into *units* (one seed, one estimator, ...) cached with :meth:`RunContext.unit`
under ``DIR/<name>/units/``: an interrupted run resumes where it stopped, and a unit is recomputed only when
its configuration changes. Every file is written atomically (temporary file, then ``os.replace``), so an
interruption never leaves a half-written result.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__

__all__ = [
    "RunContext",
    "atomic_write_text",
    "atomic_write_json",
    "save_figure",
    "git_commit",
    "progress",
    "markdown_table",
    "mean_std",
    "int_arg",
    "float_arg",
    "MissingDataError",
]


class MissingDataError(RuntimeError):
    """A data package an experiment needs is not installed (the message names the install command).

    The command line prints the message as one line; ``run_all`` records the experiment as not run and goes on.
    """


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically as PNG and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def progress(iterable: Iterable, *, desc: str, total: int | None = None, enabled: bool = True):
    """A tqdm progress bar on stderr (a plain iterator if tqdm is missing or progress is off)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def mean_std(values) -> dict[str, float]:
    import numpy as np

    v = np.asarray(list(values), dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=0)), "n": int(v.size)}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x):
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# argparse types for the experiments' numeric options: a bad value is an argparse error (exit 2), not a traceback


def int_arg(minimum: int | None = None, maximum: int | None = None, *, even: bool = False) -> Callable[[str], int]:
    """An argparse ``type`` for integers in ``[minimum, maximum]`` (and even, if asked)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            lo = "" if minimum is None else f" >= {minimum}"
            hi = "" if maximum is None else f"{' and' if lo else ''} <= {maximum}"
            raise argparse.ArgumentTypeError(f"must be an integer{lo}{hi}, got {value}")
        if even and value % 2:
            raise argparse.ArgumentTypeError(f"must be an even integer, got {value}")
        return value

    return parse


def float_arg(minimum: float | None = None, *, strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for finite numbers ``>= minimum`` (``> minimum`` when ``strict``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {minimum:g}, got {text}")
        return value

    return parse


def _config_hash(config: Any) -> str:
    blob = json.dumps(config, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class RunContext:
    """Where and how an experiment runs.

    Attributes:
        name: experiment name (the output sub-folder).
        out_dir: ``DIR/<name>/``.
        mode: ``"quick"`` or ``"full"``.
        seed: base seed for everything random.
        options: experiment-specific options from the command line (already parsed).
        show_progress: draw progress bars.
        fresh: ignore cached units (recompute everything).
    """

    name: str
    out_dir: Path
    mode: str = "quick"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    fresh: bool = False
    started: float = field(default_factory=time.time)
    units_loaded: int = 0
    units_computed: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    def unit(self, key: str, config: Any, compute: Callable[[], Any]) -> Any:
        """Return the cached result of ``compute()`` for ``(key, config)``, computing and saving it if needed.

        ``config`` must contain everything the result depends on (it is hashed into the file name); the
        result must be JSON-serialisable.
        """
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        path = self.out_dir / "units" / f"{safe}-{_config_hash(config)}.json"
        if not self.fresh and path.exists():
            try:
                payload = json.loads(path.read_text())
                self.units_loaded += 1
                return payload["result"]
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged cache file is recomputed
        result = compute()
        atomic_write_json(path, {"key": key, "config": config, "result": result})
        self.units_computed += 1
        return result

    def provenance(self, config: Any) -> dict[str, Any]:
        return {
            "experiment": self.name,
            "mode": self.mode,
            "seed": self.seed,
            "config": config,
            "ksubset_version": __version__,
            "git_commit": git_commit(),
            "seconds": round(time.time() - self.started, 2),
            "units_loaded_from_cache": self.units_loaded,
            "units_computed": self.units_computed,
        }
