"""The study's data sets: which (:class:`DataSpec`), built (:class:`Prepared`), built lazily (:class:`DataStore`).

From :mod:`.ks_solver` and :mod:`.library`: our ETDRK4 solution of ``u_t = -u u_x - u_xx - u_xxxx`` (N = 1024,
t = 0..100 every 0.4, cached under the output folder), optional measurement noise (percent of ``std(u)``,
one fixed realisation per noise level, seeded by ``--seed``) and optional spectral low-pass denoising, the
PySINDy library (14 terms, or the larger one with distractors), ``u_t`` and the Gram matrix of the ridge fits.
Nothing is computed until a unit that is not cached asks for it, and one library is kept in memory at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .problem import RIDGE_ALPHA


@dataclass(frozen=True)
class DataSpec:
    library: str  # "paper" (14 terms) or "large" (23 terms + distractors)
    noise: float = 0.0
    lowpass: float = 0.0  # cut-off wavenumber, 0 = no filtering
    distractors: int = 0

    @property
    def key(self) -> str:
        s = f"{self.library}-noise{self.noise:g}"
        if self.lowpass:
            s += f"-lp{self.lowpass:g}"
        if self.library == "large":
            s += f"-d{self.distractors}"
        return s

    @property
    def title(self) -> str:
        if self.library == "large":
            return f"large library, {23 + self.distractors} terms ({self.distractors} distractors)"
        filt = f", low-pass {self.lowpass:g}" if self.lowpass else ""
        return f"{self.noise:g} % noise{filt}" if self.noise else f"clean{filt}"


@dataclass
class Prepared:
    spec: DataSpec
    names: list[str]
    readable: list[str]
    true_support: np.ndarray
    gram: Any
    theta: np.ndarray | None  # kept for the STLSQ/Lasso baselines
    u_t: np.ndarray | None
    seconds: float

    @property
    def n(self) -> int:
        return len(self.names)


class DataStore:
    """Builds the KS solution, libraries and Gram matrices lazily (only when a unit needs computing)."""

    def __init__(self, cfg: dict[str, Any], cache_dir: Path, noise_seed: int) -> None:
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.noise_seed = noise_seed
        self._ks = None
        self._prepared: dict[DataSpec, Prepared] = {}
        self._large: dict[tuple[float, float], Any] = {}

    @property
    def ks(self):
        if self._ks is None:
            from .ks_solver import load_or_generate

            tmax = float(self.cfg["ks_tmax"])
            self._ks = load_or_generate(self.cache_dir, N=int(self.cfg["ks_n"]), t_max=tmax)
        return self._ks

    def field(self, noise: float, lowpass: float) -> np.ndarray:
        from .ks_solver import add_noise
        from .library import spectral_lowpass

        ks = self.ks
        u = add_noise(ks.u, noise, seed=self.noise_seed) if noise else ks.u
        if lowpass:
            u = spectral_lowpass(u, ks.x, lowpass)
        return u

    def get(self, spec: DataSpec) -> Prepared:
        if spec in self._prepared:
            return self._prepared[spec]
        from .baselines import RidgeGram
        from .library import build_large_library, build_library

        t0 = time.perf_counter()
        ks = self.ks
        u = self.field(spec.noise, spec.lowpass)
        if spec.library == "paper":
            lib = build_library(u, ks.x, ks.t, periodic=bool(self.cfg["periodic"]))
            theta, names = lib.theta, lib.names
        else:
            big_key = (spec.noise, spec.lowpass)
            if big_key not in self._large:
                most = max(self.cfg["distractors"] + [spec.distractors])
                self._large = {big_key: build_large_library(u, ks.x, ks.t, n_distractors=most, seed=self.noise_seed,
                                                            periodic=bool(self.cfg["periodic"]))}
            lib = self._large[big_key]
            m = 23 + spec.distractors
            theta, names = np.ascontiguousarray(lib.theta[:, :m]), lib.names[:m]
        from .library import readable_names, true_support

        gram = RidgeGram(theta, lib.u_t, alpha=RIDGE_ALPHA)
        prepared = Prepared(spec, list(names), readable_names(list(names)), true_support(list(names)), gram, theta,
                            lib.u_t, time.perf_counter() - t0)
        self._prepared = {spec: prepared}  # keep one library in memory at a time
        return prepared

