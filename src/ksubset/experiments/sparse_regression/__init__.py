"""Sparse-regression experiment (E4): discover the Kuramoto–Sivashinsky equation by choosing 3 of 14
library terms.

Submodules (import them explicitly; nothing heavy is imported here):

- :mod:`.ks_solver` — ETDRK4 solver, measurement noise, on-disk cache (numpy only).
- :mod:`.library` — PySINDy candidate libraries and ``u_t`` (needs ``pip install 'ksubset[experiments]'``).
- :mod:`.baselines` — ridge refits, exhaustive k-subset search, STLSQ and Lasso baselines.
"""

__all__: list[str] = []
