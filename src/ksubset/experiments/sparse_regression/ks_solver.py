"""Kuramoto–Sivashinsky data: an ETDRK4 solver, measurement noise and an on-disk cache.

The equation is ``u_t = -u u_x - u_xx - u_xxxx`` on a periodic domain of length ``L``. The solver is the
exponential time-differencing fourth-order Runge–Kutta scheme of Kassam & Trefethen (SIAM J. Sci. Comput.
26(4), 2005), with the phi-function coefficients evaluated by a contour integral of ``M`` points. With the
defaults (``N = 1024``, ``L = 32π``, ``h = 0.025``, ``M = 16``, saved every 0.4 up to ``t = 100``) it
reproduces the PDE-FIND / PySINDy file ``kuramoto_sivishinky.mat`` to about 1e-10.

Only numpy is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "KSData",
    "KSParams",
    "add_noise",
    "cache_path",
    "load_or_generate",
    "solve_ks",
]


@dataclass(frozen=True)
class KSParams:
    """Parameters of a Kuramoto–Sivashinsky run.

    Attributes:
        N: number of grid points (even).
        h: ETDRK4 time step. Larger than ~0.025 diverges for the default chaotic set-up.
        t_max: final time.
        save_every: interval between saved snapshots; must be a multiple of ``h``.
        L: domain length; the grid is ``x = L·(1..N)/N``.
        M: number of contour points for the ETDRK4 coefficients.
    """

    N: int = 1024
    h: float = 0.025
    t_max: float = 100.0
    save_every: float = 0.4
    L: float = 32.0 * np.pi
    M: int = 16

    def key(self) -> str:
        """A short, stable hash of the parameters (used as the cache file name)."""
        blob = json.dumps({k: repr(v) for k, v in asdict(self).items()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KSData:
    """A solution of the KS equation.

    Attributes:
        u: solution, shape ``(N, n_t)``; column ``j`` is the field at time ``t[j]``.
        x: grid, shape ``(N,)``, ``x = L·(1..N)/N``.
        t: save times, shape ``(n_t,)``, ``0, save_every, …, t_max``.
        params: the parameters that produced it.
    """

    u: np.ndarray
    x: np.ndarray
    t: np.ndarray
    params: KSParams


def _steps(value: float, h: float, what: str) -> int:
    n = int(round(value / h))
    if n <= 0 or abs(n * h - value) > 1e-9 * max(1.0, abs(value)):
        raise ValueError(f"{what}={value} must be a positive multiple of h={h}")
    return n


def solve_ks(
    N: int = 1024,
    h: float = 0.025,
    t_max: float = 100.0,
    save_every: float = 0.4,
    L: float = 32.0 * np.pi,
    M: int = 16,
    u0: np.ndarray | None = None,
) -> KSData:
    """Integrate ``u_t = -u u_x - u_xx - u_xxxx`` with Kassam & Trefethen's ETDRK4.

    Args:
        N: number of grid points (even).
        h: time step.
        t_max: final time (a multiple of ``save_every``).
        save_every: snapshot interval (a multiple of ``h``).
        L: domain length; ``x = L·(1..N)/N``.
        M: contour points for the ETDRK4 coefficients.
        u0: initial condition, shape ``(N,)``. Default ``cos(2πx/L)(1 + sin(2πx/L))``, which for
            ``L = 32π`` is the classic ``cos(x/16)(1 + sin(x/16))``.

    Returns:
        :class:`KSData` with ``u`` of shape ``(N, n_t)``, ``x`` of shape ``(N,)`` and ``t`` of shape
        ``(n_t,)`` where ``n_t = t_max/save_every + 1`` (251 with the defaults).
    """
    if N <= 0 or N % 2:
        raise ValueError(f"N must be a positive even integer, got {N}")
    if h <= 0 or M <= 0:
        raise ValueError("h and M must be positive")
    params = KSParams(N=int(N), h=float(h), t_max=float(t_max), save_every=float(save_every), L=float(L),
                      M=int(M))
    n_per_save = _steps(save_every, h, "save_every")
    n_saves = _steps(t_max, save_every, "t_max")

    x = L * np.arange(1, N + 1) / N
    if u0 is None:
        phase = 2.0 * np.pi * x / L
        u = np.cos(phase) * (1.0 + np.sin(phase))
    else:
        u = np.asarray(u0, dtype=np.float64).copy()
        if u.shape != (N,):
            raise ValueError(f"u0 must have shape ({N},), got {u.shape}")

    # Wavenumbers for the real FFT; the Nyquist mode is zeroed as in the original (k(N/2+1) = 0).
    k = 2.0 * np.pi / L * np.arange(N // 2 + 1, dtype=np.float64)
    k[-1] = 0.0
    lin = k**2 - k**4  # Fourier symbol of -d_xx - d_xxxx
    E = np.exp(h * lin)
    E2 = np.exp(h * lin / 2.0)

    # phi-function coefficients by the mean over M points of a circle around each h·lin (upper half
    # only: the lin are real, so the real part of the mean is the full-circle mean).
    r = np.exp(1j * np.pi * (np.arange(1, M + 1) - 0.5) / M)
    LR = h * lin[:, None] + r[None, :]
    eLR = np.exp(LR)
    Q = h * np.real(np.mean((np.exp(LR / 2.0) - 1.0) / LR, axis=1))
    f1 = h * np.real(np.mean((-4.0 - LR + eLR * (4.0 - 3.0 * LR + LR**2)) / LR**3, axis=1))
    f2 = h * np.real(np.mean((2.0 + LR + eLR * (-2.0 + LR)) / LR**3, axis=1))
    f3 = h * np.real(np.mean((-4.0 - 3.0 * LR - LR**2 + eLR * (4.0 - LR)) / LR**3, axis=1))
    g = -0.5j * k  # nonlinear term -u u_x = -(u^2)_x / 2

    rfft, irfft = np.fft.rfft, np.fft.irfft

    def nonlin(w: np.ndarray) -> np.ndarray:
        return g * rfft(irfft(w, n=N) ** 2)

    v = rfft(u)
    out = np.empty((N, n_saves + 1), dtype=np.float64)
    out[:, 0] = u
    for s in range(1, n_saves + 1):
        for _ in range(n_per_save):
            Nv = nonlin(v)
            a = E2 * v + Q * Nv
            Na = nonlin(a)
            b = E2 * v + Q * Na
            Nb = nonlin(b)
            c = E2 * a + Q * (2.0 * Nb - Nv)
            Nc = nonlin(c)
            v = E * v + Nv * f1 + 2.0 * (Na + Nb) * f2 + Nc * f3
        out[:, s] = irfft(v, n=N)
    t = save_every * np.arange(n_saves + 1)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("KS solution is not finite; reduce the time step h")
    return KSData(u=out, x=x, t=t, params=params)


def add_noise(u: np.ndarray, percent: float, seed: int | np.random.Generator | None = 0) -> np.ndarray:
    """Add i.i.d. Gaussian measurement noise of standard deviation ``percent/100 · std(u)``.

    This is the PDE-FIND convention (noise level relative to the standard deviation of the whole field).

    Args:
        u: clean data, any shape (typically ``(N, n_t)``).
        percent: noise level in percent of ``u.std()``; ``0`` returns a copy of ``u``.
        seed: seed or ``numpy.random.Generator``.

    Returns:
        Noisy copy of ``u``, same shape.
    """
    if percent < 0:
        raise ValueError(f"percent must be >= 0, got {percent}")
    u = np.asarray(u, dtype=np.float64)
    if percent == 0:
        return u.copy()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return u + (percent / 100.0) * u.std() * rng.standard_normal(u.shape)


def cache_path(cache_dir: str | os.PathLike, params: KSParams) -> Path:
    """Path of the cache file for ``params`` inside ``cache_dir``."""
    return Path(cache_dir) / f"ks_{params.key()}.npz"


def _read_cache(path: Path, params: KSParams) -> KSData | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = json.loads(str(f["params_json"]))
            if stored != asdict(params):
                return None
            u, x, t = f["u"], f["x"], f["t"]
    except Exception:  # missing, truncated or otherwise unreadable file
        return None
    n_t = int(round(params.t_max / params.save_every)) + 1
    if u.shape != (params.N, n_t) or x.shape != (params.N,) or t.shape != (n_t,):
        return None
    if not np.all(np.isfinite(u)):
        return None
    return KSData(u=u, x=x, t=t, params=params)


def _write_cache_atomic(path: Path, data: KSData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, u=data.u, x=data.x, t=data.t, params_json=np.array(json.dumps(asdict(data.params))))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_or_generate(
    cache_dir: str | os.PathLike,
    N: int = 1024,
    h: float = 0.025,
    t_max: float = 100.0,
    save_every: float = 0.4,
    L: float = 32.0 * np.pi,
    M: int = 16,
) -> KSData:
    """Load the KS solution for these parameters from ``cache_dir``, or solve and cache it.

    The file is ``cache_dir/ks_<hash of parameters>.npz``. It is written atomically (temporary file in the
    same folder, then ``os.replace``), so concurrent callers never see a partial file. A missing, corrupt
    or mismatching file is regenerated.

    Returns:
        :class:`KSData` with ``u`` of shape ``(N, n_t)``, ``x`` ``(N,)``, ``t`` ``(n_t,)``.
    """
    params = KSParams(N=int(N), h=float(h), t_max=float(t_max), save_every=float(save_every), L=float(L),
                      M=int(M))
    path = cache_path(cache_dir, params)
    data = _read_cache(path, params)
    if data is not None:
        return data
    data = solve_ks(**asdict(params))
    _write_cache_atomic(path, data)
    return data
