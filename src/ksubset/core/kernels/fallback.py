"""Rows the kernel cannot compute: counted, reported as the policy says, and recomputed by the tree engine.

The kernel reports a row as failed when its ``Pr(S = k)`` (or ``log Z``) does not come out finite and
positive, a safety net that no known input reaches; :func:`fallback_count` counts such rows so that tests can
insist on none.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch

POLICIES = ("warn", "raise", "silent")


class KernelFallbackError(RuntimeError):
    """A row could not be computed by the kernel and the fallback policy is ``"raise"``."""


class KernelFallbackWarning(RuntimeWarning):
    """A row could not be computed by the kernel and was recomputed by the tree engine."""


_count = 0
_count_lock = threading.Lock()


def fallback_count() -> int:
    """How many rows have been recomputed by the tree engine (or refused, under ``"raise"``) so far."""
    return _count


def report(what: str, rows: int, policy: str) -> None:
    """Count ``rows`` fallen-back rows of ``what`` and apply ``policy`` (one of :data:`POLICIES`)."""
    global _count
    with _count_lock:
        _count += rows
    if policy not in POLICIES:
        raise ValueError(f"kernels.FALLBACK_POLICY must be one of {POLICIES}, got {policy!r}")
    msg = f"the kernels engine could not compute {what} for {rows} row(s); they are recomputed by the tree engine"
    if policy == "raise":
        raise KernelFallbackError(msg)
    if policy == "warn":
        warnings.warn(msg, KernelFallbackWarning, stacklevel=4)


def recompute_sweep(theta, k, K, want_mu, v, u, want_h, ok, z, mu, cov, h):
    """Recompute the rows with ``ok == False`` with the tree engine (in float64); returns ``(z, mu, cov, h)``."""
    from .. import tree

    bad = torch.from_numpy(~ok)
    th = theta.detach().to(torch.float64)[bad]
    kb = k[bad]
    if want_mu:
        mu[bad] = tree.marginals(th, kb, K)
    if v is not None:
        cov[bad] = tree.cov_vec(th, kb, K, v.detach().to(torch.float64)[bad])
    if u is not None and u.shape[0]:
        # walk the tree with fresh uniforms derived from the ones drawn for these rows
        g = torch.Generator().manual_seed(int(np.asarray(u)[:, ~ok].sum() * 2**20) % 2**63)
        z[:, bad] = tree.sample(th, kb, K, u.shape[0], g)
    if want_h:
        h[bad] = tree.entropy(th, kb, K)
    return z, mu, cov, h


def recompute_log_partition(theta, k, K, res, bad):
    """``res[bad]`` recomputed with the tree engine (in float64)."""
    from .. import tree

    res[bad] = tree.log_partition(theta.detach().to(torch.float64)[bad], k[bad], K)
    return res
