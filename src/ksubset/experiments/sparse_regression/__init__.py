"""Sparse-regression experiment (E4): discover the Kuramoto–Sivashinsky equation by choosing 3 of 14
library terms.

Submodules (import them explicitly; nothing heavy is imported here):

- :mod:`.ks_solver` — ETDRK4 solver, measurement noise, on-disk cache (numpy only).
- :mod:`.library` — PySINDy candidate libraries and ``u_t`` (needs ``pip install 'ksubset[experiments]'``).
- :mod:`.baselines` — ridge refits, exhaustive k-subset search, STLSQ and Lasso baselines.
- :mod:`.problem` — the loss of a k-subset and its vertex gradients (``masked``, ``swap``, ``multilinear``).
- :mod:`.learner` — the estimators compared and one learning run.
- :mod:`.data` — the study's data sets, built lazily.
- :mod:`.study` — the quick/full configurations, the cached units and the run of them all.
- :mod:`.report` — figures, the markdown report and the headline.
- :mod:`.experiment` — registration, command-line options and ``run``.
"""

__all__: list[str] = []
