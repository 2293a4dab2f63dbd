"""Independent brute-force oracle: enumerate every k-subset in float64 with numpy.

Shares no code with the library. Conventions: +inf = forced (conditioned on, contributes 0 to the
score), -inf or mask False = unavailable.
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


def expected_gradient(theta, k: int, f) -> np.ndarray:
    """Exact gradient of E_theta[f(z)] = Cov(z) f-weighted: sum_z p(z) f(z) (z - mu)."""
    e = enumerate_row(theta, k)
    fz = np.array([f(z) for z in e.subsets])
    return (e.probs * fz) @ (e.subsets - e.marginals)
