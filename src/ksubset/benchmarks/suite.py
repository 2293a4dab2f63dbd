"""``ksubset bench``: the options, and the sections run in order, printed and written to ``--out``.

Sections: the engine table (:mod:`.engines`), the largest sizes, the growth study, the application table
(:mod:`.applications`), then the cardinality section (:mod:`.cardinality`). Outputs in ``--out`` (default
``results/bench``): ``bench.json`` (every number), ``growth.png`` and ``cardinality.json``, each written
atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

from ksubset.experiments.common import int_arg

from . import applications, cardinality, engines, report

__all__ = ["SECTIONS", "main", "parser"]

SECTIONS = ["engines", "large", "growth", "applications", "cardinality"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ksubset bench",
        description="Time exact k-subset sampling + SIMPLE against the reference engine and the relaxations.",
    )
    p.add_argument("--quick", action="store_true",
                   help="fewer runs and smaller sizes (the README says how long it takes)")
    p.add_argument("--out", default=os.path.join("results", "bench"), help="output folder (default: results/bench)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    p.add_argument("--no-large", action="store_true", help="skip n=1e6 (k=1000) and n=1e5 (k=1e4)")
    p.add_argument("--no-growth", action="store_true", help="skip the growth study and its plot")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile model rows")
    p.add_argument("--no-applications", action="store_true", help="skip the application table")
    p.add_argument("--no-cardinality", action="store_true", help="skip the inverse map and count constraints")
    p.add_argument("--only", action="append", choices=SECTIONS, metavar="SECTION",
                   help=f"run only this section (repeatable): {', '.join(SECTIONS)}")
    p.add_argument("--threads", type=int_arg(1), default=None,
                   help="torch.set_num_threads(N) first (default: torch's default); the application table "
                        "also runs each row on 1 thread")
    return p


def _check_device(device: str) -> str | None:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return ("--device cuda requested but no CUDA device is available (torch.cuda.is_available() is "
                    "False); run without --device for the CPU suite.")
        return None
    if device != "cpu":
        return f"unknown device {device!r} (use cpu or cuda)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    skip = {name for name in SECTIONS if getattr(args, f"no_{name}", False)}
    run = {name for name in SECTIONS if name not in skip and (args.only is None or name in args.only)}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    problem = _check_device(args.device)
    if problem:
        print(f"ksubset bench: {problem}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    meta = report.meta(args.device, args.quick)
    log(f"ksubset bench on {meta['device_name']} ({meta['threads']} torch threads, torch {meta['torch']}, "
        f"numba {meta.get('numba', 'absent')}); engines {meta['engines']}; "
        f"load average {meta.get('loadavg_start', '?')}")
    t0 = time.perf_counter()
    main_rows = engines.engine_rows(args.device, args.quick, not args.no_memory, log) if "engines" in run else []
    large = engines.large_rows(args.device, args.quick, log) if "large" in run else []
    growth = engines.growth(args.device, args.quick, log) if "growth" in run else {}
    apps = [] if "applications" not in run else applications.application_rows(
        args.device, args.quick, threads=args.threads, compile_models=not args.no_compile, log=log)
    targets = report.engine_targets(main_rows, large, growth)
    with contextlib.suppress(OSError, AttributeError):
        meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = time.perf_counter() - t0

    if main_rows or large:
        print()
        print(report.engine_table(main_rows + large))
    if targets:
        print()
        report.print_targets("engine-table targets", targets)
    if apps:
        print(f"\napplication table ({meta['cpu_count']} cores; medians of interleaved runs):\n")
        print(report.application_table(apps))

    os.makedirs(args.out, exist_ok=True)
    result = {"meta": meta, "main": main_rows, "large": large, "growth": growth, "applications": apps,
              "targets": targets}
    report.atomic_write(os.path.join(args.out, "bench.json"), json.dumps(result, indent=1).encode())
    msg = None if not growth else report.plot(growth, os.path.join(args.out, "growth.png"), meta)
    print(f"\nwrote {os.path.join(args.out, 'bench.json')}"
          + ("" if not growth or msg else f" and {os.path.join(args.out, 'growth.png')}")
          + (f" ({msg})" if msg else "") + f" in {meta['wall_s']:.0f} s")
    if "cardinality" in run:
        cardinality.main((["--quick"] if args.quick else []) + ["--out", args.out])
    return 0


if __name__ == "__main__":
    sys.exit(main())
