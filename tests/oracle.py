"""The test oracle: independent brute-force enumeration in float64 with numpy. Shares no code with the library.

* Exactly k (:func:`enumerate_row`, :func:`kl_rows`, :func:`expectation`, :func:`expected_gradient`): every
  k-subset of one row.
* Count constraints (:func:`enumerate_counts`, :func:`kl_counts`, :func:`mode_counts`): all 2^n vectors,
  ``p(z) ∝ exp(theta · z + phi[|z|])``; phi is indexed by the total count |z| (forced items included) and counts
  beyond ``len(phi) - 1`` are forbidden.
* :func:`topk_indicator`: the k-hot indicator of the k largest keys (the MAP of perturb-and-MAP estimators).

Conventions: +inf = forced (conditioned on, contributes 0 to the score), -inf or mask False = unavailable.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class Enumerated:
    subsets: np.ndarray  # [S, n] 0/1
    log_weights: np.ndarray  # [S]
    log_z: float
    probs: np.ndarray  # [S]
    marginals: np.ndarray  # [n]
    covariance: np.ndarray  # [n, n]
    entropy: float


def enumerate_row(theta, k: int, mask=None) -> Enumerated:
    theta = np.asarray(theta, dtype=np.float64)
    n = theta.shape[0]
    avail = theta != -np.inf
    if mask is not None:
        avail &= np.asarray(mask, dtype=bool)
    forced = avail & (theta == np.inf)
    free = np.flatnonzero(avail & ~forced)
    need = k - forced.sum()
    assert 0 <= need <= len(free), "oracle called on an impossible problem"
    rows = []
    for combo in itertools.combinations(free, need):
        z = forced.astype(np.float64).copy()
        z[list(combo)] = 1.0
        rows.append(z)
    subsets = np.array(rows).reshape(-1, n)
    score_theta = np.where(avail & ~forced, theta, 0.0)
    logw = subsets @ score_theta
    m = logw.max()
    log_z = m + np.log(np.exp(logw - m).sum())
    probs = np.exp(logw - log_z)
    mu = probs @ subsets
    cov = (subsets * probs[:, None]).T @ subsets - np.outer(mu, mu)
    nz = probs > 0
    ent = -(probs[nz] * np.log(probs[nz])).sum()
    return Enumerated(subsets, logw, float(log_z), probs, mu, cov, float(ent))


def subset_chi_square(draws, theta, k: int) -> tuple[float, int]:
    """Pearson's chi-square of the subsets drawn (``draws [S, n]`` in {0, 1}, one row's) against their exact
    probabilities under ``theta [n]``; returns the statistic and its degrees of freedom."""
    e = enumerate_row(theta, k)
    code = {tuple(np.flatnonzero(s)): i for i, s in enumerate(e.subsets)}
    counts = np.zeros(len(code))
    for row in np.asarray(draws):
        counts[code[tuple(np.flatnonzero(row))]] += 1
    expected = e.probs * len(draws)
    return float(((counts - expected) ** 2 / expected).sum()), len(code) - 1


def kl_rows(p_theta, q_theta, k: int) -> float:
    p = enumerate_row(p_theta, k)
    q = enumerate_row(q_theta, k)
    qmap = {tuple(s): lp for s, lp in zip(q.subsets, q.log_weights - q.log_z, strict=True)}
    total = 0.0
    for s, prob, lw in zip(p.subsets, p.probs, p.log_weights, strict=True):
        if prob == 0:
            continue
        lq = qmap.get(tuple(s), -np.inf)
        total += prob * ((lw - p.log_z) - lq)
    return float(total)


def expectation(theta, k: int, f, mask=None) -> float:
    """E_theta[f(z)] for one row; ``f`` maps the subsets ``[S, n]`` (float64) to ``[S]``."""
    e = enumerate_row(theta, k, mask)
    return float(e.probs @ np.asarray(f(e.subsets), dtype=np.float64))


def expected_gradient(theta, k: int, f, mask=None) -> np.ndarray:
    """Exact gradient of E_theta[f(z)] for one row: sum_z p(z) f(z) (z - mu) = Cov(z, f(z)).

    ``f`` maps the subsets ``[S, n]`` (float64) to ``[S]``.
    """
    e = enumerate_row(theta, k, mask)
    fz = np.asarray(f(e.subsets), dtype=np.float64)
    return (e.probs * fz) @ (e.subsets - e.marginals)


def topk_indicator(keys, k: int) -> np.ndarray:
    """``[..., n]`` 0/1 float64 with ones at the k largest entries of each row of ``keys`` (no ties assumed)."""
    keys = np.asarray(keys, dtype=np.float64)
    out = np.zeros_like(keys)
    if k > 0:
        idx = np.argsort(-keys, axis=-1, kind="stable")[..., :k]
        np.put_along_axis(out, idx, 1.0, axis=-1)
    return out


# ------------------------------------------------------------------------------------ count constraints


@dataclass
class CountEnumerated:
    subsets: np.ndarray  # [S, n] 0/1 (the support)
    log_weights: np.ndarray  # [S]
    log_z: float
    probs: np.ndarray  # [S]
    marginals: np.ndarray  # [n]
    covariance: np.ndarray  # [n, n]
    entropy: float
    count_law: np.ndarray  # [len(phi)]


def enumerate_counts(theta, phi, mask=None) -> CountEnumerated:
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    n = theta.shape[0]
    avail = theta != -np.inf
    if mask is not None:
        avail &= np.asarray(mask, dtype=bool)
    forced = avail & (theta == np.inf)
    score_theta = np.where(avail & ~forced, theta, 0.0)
    codes = np.arange(2**n)
    every = ((codes[:, None] >> np.arange(n)) & 1).astype(np.float64)  # all 2^n vectors, vectorised
    size = every.sum(1).astype(int)
    ok = ~np.any(every[:, ~avail] == 1, axis=1) & ~np.any(every[:, forced] == 0, axis=1) & (size < len(phi))
    ok &= phi[np.minimum(size, len(phi) - 1)] > -np.inf
    assert ok.any(), "oracle called on an impossible problem"
    subsets = every[ok]
    logw = subsets @ score_theta + phi[size[ok]]
    m = logw.max()
    log_z = m + np.log(np.exp(logw - m).sum())
    probs = np.exp(logw - log_z)
    mu = probs @ subsets
    cov = (subsets * probs[:, None]).T @ subsets - np.outer(mu, mu)
    nz = probs > 0
    ent = float(-(probs[nz] * np.log(probs[nz])).sum())
    law = np.zeros(len(phi))
    np.add.at(law, subsets.sum(1).astype(int), probs)
    return CountEnumerated(subsets, logw, float(log_z), probs, mu, cov, ent, law)


def _log_probs_all(theta, phi) -> np.ndarray:
    """log p(z) for every z in {0,1}^n in binary-code order (-inf off the support)."""
    e = enumerate_counts(theta, phi)
    codes = (e.subsets * (1 << np.arange(e.subsets.shape[1]))).sum(1).astype(int)
    out = np.full(2 ** e.subsets.shape[1], -np.inf)
    out[codes] = e.log_weights - e.log_z
    return out


def kl_counts(p_theta, p_phi, q_theta, q_phi) -> float:
    lp, lq = _log_probs_all(p_theta, p_phi), _log_probs_all(q_theta, q_phi)
    on = lp > -np.inf
    if np.any(lq[on] == -np.inf):
        return float("inf")
    return float((np.exp(lp[on]) * (lp[on] - lq[on])).sum())


def mode_counts(theta, phi) -> np.ndarray:
    e = enumerate_counts(theta, phi)
    return e.subsets[int(np.argmax(e.log_weights))]
