"""The ``ksubset`` command: ``reproduce`` the paper's experiments, ``bench`` the engines, ``--version``."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__

_RESUME_HINT = "rerun the same command to resume (finished units are cached; --fresh recomputes)"


def _reproduce(argv: list[str]) -> int:
    from . import experiments
    from .experiments.common import MissingDataError, int_arg

    names = experiments.names()
    parser = argparse.ArgumentParser(
        prog="ksubset reproduce",
        description="Run the SIMPLE paper's experiments. Without a name: every experiment, quick configuration.",
    )
    parser.add_argument("name", nargs="?", choices=names, help="experiment to run (default: all, quick)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="quick configuration")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the paper's configuration")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--seed", type=int_arg(0, 2**31 - 1), default=0,
                        help="base seed, 0 <= S < 2^31 (default: 0, the published numbers)")
    parser.add_argument("--fresh", action="store_true", help="recompute instead of resuming from cached units")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    # experiment-specific options, parsed only when that experiment is named
    name = next((a for a in argv if a in names), None)
    add_arguments = None if name is None else experiments.get(name).add_arguments
    if add_arguments is not None:
        add_arguments(parser.add_argument_group(f"{name} options"))
    args = parser.parse_args(argv)
    common = {"name", "mode", "out", "seed", "fresh", "no_progress"}
    options = {k: v for k, v in vars(args).items() if k not in common}
    if args.name is None and args.mode == "full":
        parser.error("--full needs an experiment name (running every experiment at full size takes days)")
    try:
        if args.name is None:
            summaries = experiments.run_all(args.out, seed=args.seed, show_progress=not args.no_progress,
                                            fresh=args.fresh)
            print(f"report: {args.out}/report.md")
            skipped = [name for name, summary in summaries.items() if "not_run" in summary]
            if skipped:
                print(f"ksubset reproduce: not run (missing data): {', '.join(skipped)}", file=sys.stderr)
                return 1
            return 0
        experiments.run(args.name, args.out, mode=args.mode or "quick", seed=args.seed, options=options,
                        show_progress=not args.no_progress, fresh=args.fresh)
    except OSError as exc:  # --out is a file, a read-only folder, a full disk, ...
        print(f"ksubset reproduce: error: {_describe(exc)} (output folder: {args.out})", file=sys.stderr)
        return 1
    except MissingDataError as exc:  # a data package is not installed: the message names the install command
        print(f"ksubset reproduce: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {args.out}/{args.name}/report.md")
    return 0


def _describe(exc: OSError) -> str:
    """One line for an OSError: what failed and on which path."""
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="ksubset",
        description="Exact k-subset sampling and the SIMPLE gradient estimator.",
        epilog="commands: reproduce [NAME] (the paper's experiments), bench (speed against baselines)",
    )
    parser.add_argument("--version", action="version", version=f"ksubset {__version__}")
    parser.add_argument("command", nargs="?", choices=["reproduce", "bench"])
    if not argv or argv[0].startswith("-"):
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
        return 0
    command, rest = argv[0], argv[1:]
    try:  # Ctrl-C anywhere in a command (imports included): one line, exit 130
        if command == "reproduce":
            return _reproduce(rest)
        if command == "bench":
            from . import benchmarks

            try:
                return int(benchmarks.main(rest) or 0)
            except OSError as exc:
                print(f"ksubset bench: error: {_describe(exc)}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        hint = f"; {_RESUME_HINT}" if command == "reproduce" else ""
        print(f"\nksubset {command}: interrupted{hint}", file=sys.stderr)
        return 130
    parser.parse_args(argv)  # reports the unknown command
    return 2


if __name__ == "__main__":
    sys.exit(main())
