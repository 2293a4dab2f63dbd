"""Non-learning baselines for choosing ``k`` of ``n`` library terms: ridge refits, exhaustive search over
all k-subsets, PySINDy's STLSQ and scikit-learn's Lasso.

All methods regress ``y = u_t`` (shape ``(n_samples,)``) on columns of ``theta`` (shape
``(n_samples, n_terms)``) without intercept. Columns are normalised to unit L2 norm before the ridge
penalty is applied (as PySINDy's ``normalize_columns=True``); coefficients are always returned in the
original units of the columns.

scikit-learn / pysindy are imported lazily (``pip install 'ksubset[experiments]'``).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "RidgeGram",
    "SubsetFit",
    "exhaustive_search",
    "format_equation",
    "lasso_baseline",
    "ridge_fit",
    "stlsq_baseline",
]

_INSTALL_HINT = "pip install 'ksubset[experiments]'"


@dataclass
class SubsetFit:
    """Result of a support-selection method.

    Attributes:
        method: name of the method.
        support: selected column indices, sorted, int64, shape ``(k,)``.
        coefficients: coefficients of those columns in original units, shape ``(k,)``.
        equation: printable equation, e.g. ``"u_t = -0.994 u_xx - 0.996 u_xxxx - 0.992 u·u_x"``.
        seconds: wall-clock time of the method (excluding building the library).
        mse: mean squared residual ``mean((y - theta[:, support] @ coefficients)**2)``.
        info: method-specific extras (e.g. the runner-up subset, the chosen Lasso alpha).
    """

    method: str
    support: np.ndarray
    coefficients: np.ndarray
    equation: str
    seconds: float
    mse: float
    info: dict[str, Any] = field(default_factory=dict)

    def dense(self, n_terms: int) -> np.ndarray:
        """Coefficient vector of shape ``(n_terms,)`` with zeros off the support."""
        out = np.zeros(n_terms)
        out[self.support] = self.coefficients
        return out


def format_equation(support: np.ndarray, coefficients: np.ndarray, names: list[str] | None,
                    lhs: str = "u_t", precision: int = 3) -> str:
    """``"u_t = -0.994 u_xx - 0.996 u_xxxx - 0.992 u·u_x"`` for a support (shape ``(k,)``) and its
    coefficients (shape ``(k,)``); ``names`` (length ``n_terms``) defaults to ``c0, c1, …``."""
    support = np.asarray(support, dtype=np.int64).reshape(-1)
    coefficients = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    terms: list[str] = []
    for j, c in sorted(zip(support.tolist(), coefficients.tolist(), strict=True)):
        if c == 0:
            continue
        name = names[j] if names is not None else f"c{j}"
        a = abs(c)
        mag = f"{a:.{precision}f}" if a >= 10.0 ** (1 - precision) else f"{a:.{precision}g}"
        if not terms:
            terms.append(f"{'-' if c < 0 else ''}{mag} {name}")
        else:
            terms.append(f"{'-' if c < 0 else '+'} {mag} {name}")
    return f"{lhs} = " + (" ".join(terms) if terms else "0")


class RidgeGram:
    """Precomputed normal equations for cheap ridge fits on many column subsets.

    Stores ``G = Θᵀ Θ`` (``(n_terms, n_terms)``), ``b = Θᵀ y`` (``(n_terms,)``), ``yᵀ y`` and the column
    norms once (one pass over the data); a fit on a k-subset then costs a ``k × k`` solve. Ridge problem
    solved for a support ``S`` (columns normalised to unit L2 norm when ``normalize_columns``)::

        w = argmin ||y - Θ_S D_S⁻¹ w||² + alpha ||w||²,   coefficients = D_S⁻¹ w,

    with ``D = diag(column norms)`` — the same objective as PySINDy's STLSQ ridge step.

    Args:
        theta: library, shape ``(n_samples, n_terms)``.
        y: target, shape ``(n_samples,)``.
        alpha: ridge penalty in the normalised units.
        normalize_columns: normalise columns to unit L2 norm before applying the penalty.
    """

    def __init__(self, theta: np.ndarray, y: np.ndarray, alpha: float = 1e-5,
                 normalize_columns: bool = True) -> None:
        theta = np.asarray(theta, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if theta.ndim != 2 or theta.shape[0] != y.shape[0]:
            raise ValueError(f"theta must be (n_samples, n_terms) matching y; got {theta.shape}, {y.shape}")
        if alpha < 0:
            raise ValueError("alpha must be >= 0")
        self.n_samples, self.n_terms = theta.shape
        self.alpha = float(alpha)
        gram = theta.T @ theta
        rhs = theta.T @ y
        self.yy = float(y @ y)
        norms = np.sqrt(np.diag(gram)).copy() if normalize_columns else np.ones(self.n_terms)
        norms[norms == 0] = 1.0
        self.norms = norms
        self.gram = gram / np.outer(norms, norms)  # normalised Gram, (n_terms, n_terms)
        self.rhs = rhs / norms  # normalised Θᵀy, (n_terms,)

    def fit_batch(self, supports: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ridge fits on a batch of supports.

        Args:
            supports: int array of shape ``(B, k)`` (or ``(k,)``), column indices of each subset.

        Returns:
            ``(coefficients, mse)``: coefficients in original units, shape ``(B, k)``, and the mean squared
            residual of each fit, shape ``(B,)`` (``(k,)`` and a 0-d array for 1-D input).
        """
        s = np.asarray(supports, dtype=np.int64)
        single = s.ndim == 1
        s = np.atleast_2d(s)
        k = s.shape[1]
        A = self.gram[s[:, :, None], s[:, None, :]]  # (B, k, k)
        if self.alpha:
            A = A + self.alpha * np.eye(k)
        r = self.rhs[s]  # (B, k)
        w = np.linalg.solve(A, r[..., None])[..., 0]  # (B, k)
        sse = self.yy - 2.0 * np.einsum("bi,bi->b", w, r) + np.einsum("bi,bij,bj->b", w, A, w)
        if self.alpha:
            sse = sse - self.alpha * np.einsum("bi,bi->b", w, w)  # residual only, without the penalty
        mse = np.maximum(sse, 0.0) / self.n_samples
        coef = w / self.norms[s]
        if single:
            return coef[0], mse[0]
        return coef, mse

    def fit(self, support: np.ndarray | list[int]) -> tuple[np.ndarray, float]:
        """Ridge fit on one support (shape ``(k,)``): ``(coefficients (k,), mse)``."""
        coef, mse = self.fit_batch(np.asarray(support, dtype=np.int64).reshape(-1))
        return coef, float(mse)


def ridge_fit(theta: np.ndarray, y: np.ndarray, support: np.ndarray | list[int], alpha: float = 1e-5,
              normalize_columns: bool = True) -> tuple[np.ndarray, float]:
    """Ridge fit of ``y`` on ``theta[:, support]`` with normalised columns.

    Args:
        theta: shape ``(n_samples, n_terms)``.
        y: shape ``(n_samples,)``.
        support: column indices, shape ``(k,)``.
        alpha: ridge penalty in the normalised units.
        normalize_columns: normalise the columns to unit L2 norm before applying the penalty.

    Returns:
        ``(coefficients, mse)``: coefficients in original units, shape ``(k,)``, and the mean squared
        residual. For many subsets of the same data use :class:`RidgeGram` (one pass over the data).
    """
    support = np.asarray(support, dtype=np.int64).reshape(-1)
    return RidgeGram(np.asarray(theta)[:, support], y, alpha, normalize_columns).fit(np.arange(support.size))


def _result(method: str, support: np.ndarray, coef: np.ndarray, names: list[str] | None, seconds: float,
            mse: float, info: dict[str, Any] | None = None) -> SubsetFit:
    order = np.argsort(support)
    support = np.asarray(support, dtype=np.int64)[order]
    coef = np.asarray(coef, dtype=np.float64)[order]
    return SubsetFit(method=method, support=support, coefficients=coef,
                     equation=format_equation(support, coef, names), seconds=seconds, mse=float(mse),
                     info=info or {})


def exhaustive_search(theta: np.ndarray | None, y: np.ndarray | None, k: int = 3, *, alpha: float = 1e-5,
                      names: list[str] | None = None, gram: RidgeGram | None = None,
                      batch_size: int = 65536) -> SubsetFit:
    """Best k-subset by residual MSE of the normalised-ridge fit, over all ``C(n_terms, k)`` subsets.

    Args:
        theta: library, shape ``(n_samples, n_terms)`` (may be None when ``gram`` is given).
        y: target, shape ``(n_samples,)`` (may be None when ``gram`` is given).
        k: subset size.
        alpha: ridge penalty in normalised units.
        names: column names, length ``n_terms``, for the equation string.
        gram: a precomputed :class:`RidgeGram` (its ``alpha`` is used).
        batch_size: subsets solved per numpy batch.

    Returns:
        :class:`SubsetFit`; ``info`` holds ``n_subsets``, ``runner_up_support``, ``runner_up_mse`` and
        ``mse_ratio`` (runner-up MSE / best MSE).
    """
    t0 = time.perf_counter()
    if gram is None:
        if theta is None or y is None:
            raise ValueError("give theta and y, or gram")
        gram = RidgeGram(theta, y, alpha=alpha)
    n = gram.n_terms
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n_terms={n}, got k={k}")
    n_subsets = math.comb(n, k)
    best: list[tuple[float, np.ndarray, np.ndarray]] = []
    combos = itertools.combinations(range(n), k)
    while True:
        chunk = np.array(list(itertools.islice(combos, batch_size)), dtype=np.int64).reshape(-1, k)
        if chunk.shape[0] == 0:
            break
        coef, mse = gram.fit_batch(chunk)
        top = np.argsort(mse)[:2]
        best.extend((float(mse[i]), chunk[i], coef[i]) for i in top)
        best.sort(key=lambda item: item[0])
        best = best[:2]
    seconds = time.perf_counter() - t0
    info: dict[str, Any] = {"n_subsets": n_subsets}
    if len(best) > 1:
        info["runner_up_support"] = np.sort(best[1][1])
        info["runner_up_mse"] = best[1][0]
        info["mse_ratio"] = best[1][0] / best[0][0] if best[0][0] > 0 else np.inf
    return _result("exhaustive", best[0][1], best[0][2], None if names is None else _readable(names), seconds,
                   best[0][0], info)


def stlsq_baseline(theta: np.ndarray, y: np.ndarray, names: list[str] | None = None, *,
                   threshold: float = 5.0, alpha: float = 1e-5, normalize_columns: bool = True,
                   max_iter: int = 20) -> SubsetFit:
    """PySINDy's sequentially thresholded least squares, ``STLSQ(threshold=5, alpha=1e-5,
    normalize_columns=True)`` (the PDE-FIND / PySINDy KS set-up), fitted directly on the library.

    Args:
        theta: shape ``(n_samples, n_terms)``; y: shape ``(n_samples,)``; names: length ``n_terms``.

    Returns:
        :class:`SubsetFit` with the nonzero terms (any number of them) and PySINDy's (unbiased)
        coefficients; ``info["pysindy_equation"]`` is the equation in PySINDy's notation.
    """
    try:
        import pysindy as ps
    except ImportError as exc:  # pragma: no cover
        raise ImportError(f"stlsq_baseline needs pysindy; install it with `{_INSTALL_HINT}`.") from exc
    theta = np.asarray(theta, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    t0 = time.perf_counter()
    opt = ps.STLSQ(threshold=threshold, alpha=alpha, normalize_columns=normalize_columns, max_iter=max_iter)
    opt.fit(theta, y)
    seconds = time.perf_counter() - t0
    coef_full = np.asarray(opt.coef_).reshape(-1)
    support = np.flatnonzero(coef_full)
    coef = coef_full[support]
    resid = y[:, 0] - theta[:, support] @ coef
    pysindy_terms = [f"{coef_full[j]:.3f} {names[j] if names else f'c{j}'}" for j in support]
    info = {"pysindy_equation": "(x0)' = " + " + ".join(pysindy_terms), "coef_full": coef_full}
    return _result("stlsq", support, coef, None if names is None else _readable(names), seconds,
                   float(np.mean(resid**2)), info)


def _readable(names: list[str]) -> list[str]:
    from .library import readable_names

    return readable_names(names)


def lasso_baseline(theta: np.ndarray, y: np.ndarray, names: list[str] | None = None, *, k: int | None = 3,
                   mode: Literal["cv", "path"] = "cv", n_alphas: int = 200, eps: float = 1e-5,
                   cv: int = 5, refit_alpha: float = 1e-5, seed: int = 0) -> SubsetFit:
    """Lasso with columns normalised to unit root-mean-square, then a normalised-ridge refit on the support.

    Both modes use the same grid of ``n_alphas`` log-spaced alphas from ``alpha_max`` (the smallest alpha
    with an empty support) down to ``eps·alpha_max``.

    - ``mode="cv"`` (default, the usual tuning): ``LassoCV`` with ``cv`` contiguous folds (``KFold``
      without shuffling: rows are ordered in space and time, so shuffled folds would leak neighbouring
      samples). If ``k`` is given and CV keeps more than ``k`` terms, the ``k`` terms with the largest
      normalised coefficients are kept; ``k=None`` keeps the whole CV support.
    - ``mode="path"``: the Lasso path (``sklearn.linear_model.lasso_path`` with the precomputed Gram); take
      the largest alpha whose support has exactly ``k`` terms. If no alpha gives exactly ``k`` terms, take
      the first alpha with more than ``k`` terms and keep its ``k`` largest normalised coefficients. (On
      the KS library the path never visits the true 3-support: ``u_xx`` enters only after ``u`` and
      ``u²·u_xx``, because it is strongly correlated with ``u_xxxx``.)

    Args:
        theta: shape ``(n_samples, n_terms)``; y: shape ``(n_samples,)``; names: length ``n_terms``.
        k: number of terms to keep (``None``: whatever the Lasso selects; ``mode="cv"`` only).
        refit_alpha: ridge penalty (normalised units) of the refit on the selected support.

    Returns:
        :class:`SubsetFit` with refit coefficients; ``info`` has the chosen ``alpha`` (in sklearn's
        ``1/(2 n) ||y − Xw||² + alpha ||w||₁`` units on normalised columns), the raw Lasso coefficients in
        original units (``lasso_coef``, shape ``(n_terms,)``) and the raw Lasso support.
    """
    try:
        from sklearn.linear_model import LassoCV, lasso_path
        from sklearn.model_selection import KFold
    except ImportError as exc:  # pragma: no cover
        raise ImportError(f"lasso_baseline needs scikit-learn; install it with `{_INSTALL_HINT}`.") from exc
    theta = np.asarray(theta, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    t0 = time.perf_counter()
    n_samples, n_terms = theta.shape
    scale = np.sqrt(np.mean(theta**2, axis=0))
    scale[scale == 0] = 1.0
    xn = theta / scale
    info: dict[str, Any] = {"mode": mode}
    gram = xn.T @ xn
    xy = xn.T @ y
    alpha_max = np.max(np.abs(xy)) / n_samples
    alphas = np.geomspace(alpha_max, alpha_max * eps, n_alphas)
    if mode == "path":
        if k is None or not 1 <= k <= n_terms:
            raise ValueError(f"mode='path' needs 1 <= k <= n_terms, got {k}")
        alphas, coefs, _ = lasso_path(xn, y, alphas=alphas, precompute=gram, Xy=xy, max_iter=10000)
        nnz = np.count_nonzero(coefs, axis=0)
        exact = np.flatnonzero(nnz == k)
        if exact.size:
            i = int(exact[0])
        else:
            above = np.flatnonzero(nnz > k)
            i = int(above[0]) if above.size else len(alphas) - 1
        alpha, raw = float(alphas[i]), coefs[:, i]
        info["exact_k"] = bool(exact.size)
    elif mode == "cv":
        if k is not None and not 1 <= k <= n_terms:
            raise ValueError(f"need 1 <= k <= n_terms or k=None, got {k}")
        model = LassoCV(alphas=alphas, cv=KFold(cv, shuffle=False), fit_intercept=False, max_iter=10000,
                        random_state=seed, precompute=True)
        model.fit(xn, y)
        alpha, raw = float(model.alpha_), np.asarray(model.coef_)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    raw_support = np.flatnonzero(raw)
    if k is not None and raw_support.size > k:
        support = np.sort(np.argsort(-np.abs(raw))[:k])
    else:
        support = raw_support
    info.update(alpha=alpha, lasso_coef=raw / scale, lasso_support=raw_support)
    if support.size:
        coef, mse = ridge_fit(theta, y, support, alpha=refit_alpha)
    else:
        coef, mse = np.zeros(0), float(np.mean(y**2))
    seconds = time.perf_counter() - t0
    return _result(f"lasso-{mode}", support, coef, None if names is None else _readable(names), seconds,
                   mse, info)
