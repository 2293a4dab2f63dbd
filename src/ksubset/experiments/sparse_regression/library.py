"""Candidate-term libraries for discovering the Kuramoto–Sivashinsky equation (PDE-FIND style).

The library is built with PySINDy's ``PDELibrary``: products of a polynomial in ``u`` with spatial
derivatives of ``u`` computed by finite differences on the uniform periodic grid. Rows are the
space-time samples in the order of ``u.reshape(-1)`` for ``u`` of shape ``(N, n_t)`` (space major, time
minor). With the default degree 2 and derivative order 4 there are 14 columns; the true equation
``u_t = -u u_x - u_xx - u_xxxx`` uses the columns ``x0_11``, ``x0_1111`` and ``x0x0_1``.

The target ``u_t`` is computed as PDE-FIND / PySINDy do: second-order central finite differences along
time (one-sided second-order stencils at the first and last snapshot), ``pysindy.FiniteDifference``
along the time axis. ``time_order=4`` gives fourth-order stencils instead.

pysindy and scikit-learn are imported lazily; install them with ``pip install 'ksubset[experiments]'``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "PDELibraryData",
    "TRUE_TERMS",
    "build_library",
    "build_large_library",
    "readable_name",
    "readable_names",
    "spectral_lowpass",
    "time_derivative",
    "true_support",
]

#: PySINDy names of the three terms of ``u_t = -u u_x - u_xx - u_xxxx`` (each with coefficient -1).
TRUE_TERMS: tuple[str, ...] = ("x0_11", "x0_1111", "x0x0_1")

_INSTALL_HINT = "pip install 'ksubset[experiments]'"


def _import_pysindy() -> Any:
    try:
        import pysindy
    except ImportError as exc:  # pragma: no cover - exercised only without pysindy
        raise ImportError(
            f"The sparse-regression experiment needs pysindy (and scikit-learn); install them with "
            f"`{_INSTALL_HINT}`."
        ) from exc
    return pysindy


@dataclass(frozen=True)
class PDELibraryData:
    """A regression problem ``u_t ≈ Theta @ xi``.

    Attributes:
        theta: candidate terms, shape ``(n_samples, n_terms)`` with ``n_samples = N·n_t`` (rows in
            ``u.reshape(-1)`` order).
        u_t: time derivative, shape ``(n_samples,)``.
        names: PySINDy feature names, length ``n_terms`` (e.g. ``"x0_11"``; distractors are ``"r0"``, …).
        readable: human-readable names, length ``n_terms`` (e.g. ``"u_xx"``, ``"u·u_x"``).
    """

    theta: np.ndarray
    u_t: np.ndarray
    names: list[str]
    readable: list[str]

    @property
    def n_terms(self) -> int:
        return self.theta.shape[1]

    def support_of(self, terms: tuple[str, ...] | list[str] = TRUE_TERMS) -> np.ndarray:
        """Column indices (sorted, int64) of the given PySINDy names; see :func:`true_support`."""
        return true_support(self.names, terms)


def _check_grid(u: np.ndarray, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = np.asarray(u, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if u.ndim != 2 or u.shape != (x.size, t.size):
        raise ValueError(f"u must have shape (len(x), len(t)) = ({x.size}, {t.size}), got {u.shape}")
    if x.size < 8 or t.size < 3:
        raise ValueError("need at least 8 grid points and 3 time points")
    for name, g in (("x", x), ("t", t)):
        d = np.diff(g)
        if not np.allclose(d, d[0], rtol=1e-8, atol=0):
            raise ValueError(f"{name} must be a uniform grid")
    return u, x, t


def time_derivative(u: np.ndarray, t: np.ndarray, order: int = 2) -> np.ndarray:
    """``u_t`` by PySINDy's finite differences along time (central inside, one-sided at both ends).

    Args:
        u: field, shape ``(N, n_t)``.
        t: uniform times, shape ``(n_t,)``.
        order: accuracy order of the stencils (2 as in PDE-FIND; 4 for more accuracy).

    Returns:
        ``u_t`` of shape ``(N, n_t)``.
    """
    ps = _import_pysindy()
    u = np.asarray(u, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    fd = ps.FiniteDifference(order=order, d=1, axis=1, is_uniform=True)
    return np.asarray(fd._differentiate(u, float(t[1] - t[0])))


def _pde_library(ps: Any, x: np.ndarray, degree: int, derivative_order: int, periodic: bool) -> Any:
    function_library = ps.PolynomialLibrary(degree=degree, include_bias=False)
    if periodic:
        # pysindy 2.x ignores PDELibrary(is_uniform=..., periodic=...) (deprecated, only a warning):
        # the options reach the FiniteDifference only through diff_kwargs.
        return ps.PDELibrary(
            function_library=function_library,
            derivative_order=derivative_order,
            spatial_grid=x,
            include_bias=False,
            diff_kwargs={"is_uniform": True, "periodic": True},
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="is_uniform and periodic have been deprecated")
        return ps.PDELibrary(
            function_library=function_library,
            derivative_order=derivative_order,
            spatial_grid=x,
            include_bias=False,
            is_uniform=True,
            periodic=True,
        )


def _build(
    u: np.ndarray, x: np.ndarray, t: np.ndarray, degree: int, derivative_order: int, periodic: bool,
    time_order: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ps = _import_pysindy()
    u, x, t = _check_grid(u, x, t)
    lib = _pde_library(ps, x, degree, derivative_order, periodic)
    features = lib.fit_transform(u[:, :, None])  # (N, n_t, n_terms)
    names = list(lib.get_feature_names())
    theta = np.ascontiguousarray(np.asarray(features).reshape(-1, len(names)))
    u_t = time_derivative(u, t, order=time_order).reshape(-1)
    return theta, u_t, names


def build_library(
    u: np.ndarray,
    x: np.ndarray,
    t: np.ndarray,
    *,
    degree: int = 2,
    derivative_order: int = 4,
    periodic: bool = True,
    time_order: int = 2,
) -> PDELibraryData:
    """The KS candidate library: ``PDELibrary(PolynomialLibrary(degree=2, include_bias=False),
    derivative_order=4)`` on the uniform periodic grid ``x``, and ``u_t``.

    Args:
        u: field, shape ``(N, n_t)`` (e.g. :func:`~.ks_solver.solve_ks` output, possibly noisy).
        x: uniform spatial grid, shape ``(N,)``.
        t: uniform times, shape ``(n_t,)``.
        degree: polynomial degree in ``u`` (no bias).
        derivative_order: highest spatial derivative.
        periodic: if True (default) the spatial finite differences wrap around the periodic domain. If
            False, reproduce literally the call ``PDELibrary(..., is_uniform=True, periodic=True)`` of
            ``data.md``: pysindy 2.1.0 ignores those deprecated keywords, so the stencils become
            one-sided at the two ends of the grid (this is the set-up that gives the published STLSQ
            coefficients −0.994, −0.996, −0.992).
        time_order: accuracy order of the finite differences for ``u_t``.

    Returns:
        :class:`PDELibraryData` with ``theta`` of shape ``(N·n_t, 14)`` for the defaults, ``u_t`` of shape
        ``(N·n_t,)``, and the names ``x0, x0^2, x0_1, x0_11, x0_111, x0_1111, x0x0_1, x0^2x0_1, x0x0_11,
        x0^2x0_11, x0x0_111, x0^2x0_111, x0x0_1111, x0^2x0_1111``.
    """
    theta, u_t, names = _build(u, x, t, degree, derivative_order, periodic, time_order)
    return PDELibraryData(theta=theta, u_t=u_t, names=names, readable=readable_names(names))


def _smooth_fields(
    rng: np.random.Generator, n: int, shape: tuple[int, int], n_modes: int = 8
) -> np.ndarray:
    """``n`` random smooth space-time fields of shape ``shape = (N, n_t)``, each with zero mean and unit
    standard deviation: random Fourier series in ``x`` (periodic, wavenumbers 1..n_modes) whose
    coefficients are random Fourier series in ``t`` (frequencies 0..n_modes/2 over the time window)."""
    N, n_t = shape
    xs = 2.0 * np.pi * np.arange(N) / N
    ts = np.pi * np.arange(n_t) / max(n_t - 1, 1)
    kx = np.arange(1, n_modes + 1)
    kt = np.arange(0, n_modes // 2 + 1)
    out = np.empty((n, N, n_t))
    decay_x = 1.0 / kx
    decay_t = 1.0 / (1.0 + kt)
    cx, sx = np.cos(np.outer(xs, kx)), np.sin(np.outer(xs, kx))  # (N, n_modes)
    for j in range(n):
        a = rng.standard_normal((n_modes, kt.size)) * decay_x[:, None] * decay_t[None, :]
        b = rng.standard_normal((n_modes, kt.size)) * decay_x[:, None] * decay_t[None, :]
        phase = rng.uniform(0.0, 2.0 * np.pi, size=kt.size)
        ctj = np.cos(np.outer(kt, ts) + phase[:, None])  # (n_kt, n_t)
        f = cx @ a @ ctj + sx @ b @ ctj
        f -= f.mean()
        out[j] = f / f.std()
    return out


def build_large_library(
    u: np.ndarray,
    x: np.ndarray,
    t: np.ndarray,
    *,
    n_distractors: int = 0,
    distractor: Literal["smooth", "gaussian", "modulated"] = "smooth",
    seed: int = 0,
    degree: int = 3,
    derivative_order: int = 5,
    periodic: bool = True,
    time_order: int = 2,
) -> PDELibraryData:
    """The larger library: polynomial degree 3 times spatial derivatives up to order 5 (23 PySINDy terms:
    ``u, u², u³``, 5 pure derivatives and 15 products), plus ``n_distractors`` random columns.

    Distractor columns (named ``r0, r1, …``; seeded by ``seed``), each scaled to the root-mean-square of
    the PySINDy columns so that column normalisation does not single them out:

    - ``"smooth"`` (default): random smooth space-time fields (low-wavenumber random Fourier series,
      periodic in x). They are not in the dynamics but are spatially/temporally correlated like real
      terms, so they are harder to reject than white noise.
    - ``"gaussian"``: i.i.d. standard normal columns (easy to reject).
    - ``"modulated"``: a randomly chosen PySINDy column multiplied by ``1 + 0.5·s`` with ``s`` a random
      smooth field — strongly correlated with a real candidate, the hardest kind.

    Args:
        u, x, t: as in :func:`build_library`, shapes ``(N, n_t)``, ``(N,)``, ``(n_t,)``.
        n_distractors: number of random columns appended after the PySINDy terms.
        distractor: kind of random columns, see above.
        seed: seed of the numpy Generator for the distractors.
        degree, derivative_order, periodic, time_order: as in :func:`build_library`.

    Returns:
        :class:`PDELibraryData` with ``theta`` of shape ``(N·n_t, 23 + n_distractors)`` for the defaults.
    """
    if n_distractors < 0:
        raise ValueError("n_distractors must be >= 0")
    theta, u_t, names = _build(u, x, t, degree, derivative_order, periodic, time_order)
    if n_distractors:
        rng = np.random.default_rng(seed)
        shape = (np.asarray(u).shape[0], np.asarray(u).shape[1])
        scale = float(np.sqrt(np.mean(theta**2)))
        if distractor == "gaussian":
            extra = rng.standard_normal((theta.shape[0], n_distractors))
        elif distractor == "smooth":
            extra = _smooth_fields(rng, n_distractors, shape).reshape(n_distractors, -1).T
        elif distractor == "modulated":
            cols = rng.integers(0, theta.shape[1], size=n_distractors)
            s = _smooth_fields(rng, n_distractors, shape).reshape(n_distractors, -1).T
            extra = theta[:, cols] * (1.0 + 0.5 * s)
        else:
            raise ValueError(f"unknown distractor kind {distractor!r}")
        extra = extra * (scale / np.sqrt(np.mean(extra**2, axis=0)))
        theta = np.ascontiguousarray(np.concatenate([theta, extra], axis=1))
        names = names + [f"r{j}" for j in range(n_distractors)]
    return PDELibraryData(theta=theta, u_t=u_t, names=names, readable=readable_names(names))


def spectral_lowpass(u: np.ndarray, x: np.ndarray, k_cut: float) -> np.ndarray:
    """Optional denoising before differentiation: zero all spatial Fourier modes with wavenumber
    ``|k| > k_cut`` (``k`` in radians per unit length of the periodic grid ``x``).

    Finite-difference derivatives up to fourth order amplify measurement noise by up to ``16/dx^4``
    (~2e5 on the default grid), so without filtering even 1% noise hides the dynamics. This spatial filter
    only partly helps and biases the coefficients towards zero (errors in the regressors): measured on
    the default data with the exhaustive 3-subset search, ``k_cut = 4`` is almost lossless on clean data
    (coefficients −0.993, −0.995, −0.991) and ``k_cut = 3`` gives −0.87; with 1% noise ``k_cut = 3`` finds
    the true support with coefficients ≈ −0.79, with 5% noise ≈ −0.25, and with 10% noise it fails.
    A simple, documented option, not PDE-FIND's polynomial interpolation (no smoothing in time).

    Args:
        u: field, shape ``(N, n_t)`` (periodic along axis 0).
        x: uniform periodic grid, shape ``(N,)``.
        k_cut: cut-off wavenumber.

    Returns:
        Filtered field, shape ``(N, n_t)``.
    """
    u = np.asarray(u, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if u.ndim != 2 or u.shape[0] != x.size:
        raise ValueError(f"u must have shape (len(x), n_t), got {u.shape}")
    k = 2.0 * np.pi * np.fft.rfftfreq(x.size, d=float(x[1] - x[0]))
    spectrum = np.fft.rfft(u, axis=0)
    spectrum[k > k_cut] = 0.0
    return np.fft.irfft(spectrum, n=x.size, axis=0)


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_NAME_RE = re.compile(r"^(?P<poly>(?:x0(?:\^\d+)?)+)?(?:x0_(?P<deriv>1+))?$")


def readable_name(name: str) -> str:
    """Readable form of one PySINDy name of a single-variable 1-D library.

    ``x0`` → ``u``, ``x0^2`` → ``u²``, ``x0_11`` → ``u_xx``, ``x0x0_1`` → ``u·u_x``,
    ``x0^2x0_1111`` → ``u²·u_xxxx``, ``1`` → ``1``; distractors ``r3`` → ``ξ3``. Other names are returned
    unchanged.
    """
    if name == "1":
        return "1"
    if re.fullmatch(r"r\d+", name):
        return "ξ" + name[1:]
    m = _NAME_RE.match(name)
    if not m or not name:
        return name
    parts = []
    if m.group("poly"):
        power = sum(int(p) if p else 1 for p in re.findall(r"x0(?:\^(\d+))?", m.group("poly")))
        parts.append("u" if power == 1 else "u" + str(power).translate(_SUPERSCRIPT))
    if m.group("deriv"):
        parts.append("u_" + "x" * len(m.group("deriv")))
    return "·".join(parts)


def readable_names(names: list[str]) -> list[str]:
    """:func:`readable_name` applied to each name."""
    return [readable_name(n) for n in names]


def true_support(names: list[str], terms: tuple[str, ...] | list[str] = TRUE_TERMS) -> np.ndarray:
    """Sorted column indices of ``terms`` (default: ``u_xx``, ``u_xxxx``, ``u·u_x``) in ``names``.

    Returns:
        int64 array of shape ``(len(terms),)``. Raises ``KeyError`` if a term is missing.
    """
    index = {n: i for i, n in enumerate(names)}
    missing = [term for term in terms if term not in index]
    if missing:
        raise KeyError(f"terms {missing} not in the library {names}")
    return np.sort(np.array([index[term] for term in terms], dtype=np.int64))
