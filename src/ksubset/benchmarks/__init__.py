"""The benchmark suite behind ``ksubset bench`` (also ``python -m ksubset.benchmarks``).

=====================  ===============================================================================
module                 job
=====================  ===============================================================================
:mod:`.cases`          what is timed: methods, inputs, one forward + backward step, the application shapes
:mod:`.runner`         how: interleaved repeats and medians, thread counts, a case in a fresh process
:mod:`.engines`        the engine table, the largest sizes, the growth study
:mod:`.applications`   the application table (simple against a lean relaxation, 1 thread and all cores)
:mod:`.cardinality`    the inverse map and count constraints
:mod:`.report`         tables, targets, the growth plot, machine metadata, atomic files
:mod:`.suite`          the command: options and sections
=====================  ===============================================================================
"""

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``ksubset bench`` (imported on call, so that ``python -m ksubset.benchmarks.runner`` stays lean)."""
    from .suite import main as run

    return run(argv)
