"""Independent brute-force oracle for count-constrained subsets: enumerate all 2^n vectors in float64.

p(z) ∝ exp(theta · z + phi[|z|]) over z in {0,1}^n; +inf logits = forced (conditioned on, contributing 0 to
the score), -inf or mask False = unavailable; phi is indexed by the total count |z| (forced included) and
counts beyond len(phi) - 1 are forbidden. Shares no code with the library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
