"""The public functions accept a count constraint where they accept ``k``.

``ksubset.marginals(logits, 5)`` is the exactly-k function, untouched; ``ksubset.marginals(logits,
ksubset.AtMost(5))`` goes to :mod:`ksubset.core.cardinality`. The check is one ``isinstance`` per call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .core.cardinality import CountConstraint

__all__ = ["accepts_counts"]


def accepts_counts(exact: Callable, counted: Callable, position: int = 1) -> Callable:
    """``exact`` with argument ``position`` (``k``) also accepting a count constraint (then ``counted``)."""

    @functools.wraps(exact)
    def call(*args, **kwargs):
        k = args[position] if len(args) > position else kwargs.get("k")
        if isinstance(k, CountConstraint):
            if len(args) <= position:
                kwargs = dict(kwargs)
                args = (*args, kwargs.pop("k"))
            return counted(*args, **kwargs)
        return exact(*args, **kwargs)

    call.__doc__ = (exact.__doc__ or "") + (
        "\n\n    ``k`` may also be a count constraint (``ksubset.AtMost``, ``Between``, ``Exactly``, "
        "``CountPotential``): see :mod:`ksubset.core.cardinality`."
    )
    return call
