"""Peak memory of the tree engine, in a fresh subprocess (ru_maxrss; tracemalloc does not see torch's allocator).

The tree engine's levels hold ``O(N log N)`` numbers (``N`` = ``n`` padded to a power of two) and its banded
products copy at most ``CHUNK_ELEMENTS`` at a time, so the growth of the peak over a warmed-up process is
bounded by ``itemsize * (10 * CHUNK_ELEMENTS + c * N * (log2 N + 1))``, whatever ``k``. Before it solved
``k > n / 2`` as the complement and chunked within a node, ``log_partition`` at ``n = 16384, k = 16383``
peaked at ~4.5 GB (K^2-sized Toeplitz temporaries) and ``n = 10^5, k = n - 1`` was killed for memory.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ksubset
from ksubset.core import tree

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")

_SCRIPT = r"""
import resource, sys
import torch, ksubset
from ksubset.core import tree, use_engine

op, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# A regression must fail here, not exhaust the machine: cap the address space (torch's own mappings included).
resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))


def run(n, k):
    theta = torch.randn(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with use_engine("tree"):
        if op == "log_partition":
            ksubset.log_partition(theta, k)
        elif op == "marginals":
            ksubset.marginals(theta, k)
        elif op == "entropy":
            ksubset.entropy(theta, k)
        elif op == "sample":
            ksubset.sample(theta, k, sample_shape=(4,))
        elif op == "simple":
            t = theta.clone().requires_grad_(True)
            (ksubset.simple(t, k) * torch.randn_like(t)).sum().backward()
        elif op == "cov3":
            kk = torch.tensor([k])
            tree.cov3(theta, kk, k, torch.randn_like(theta), torch.randn_like(theta))


run(64, 3)
run(64, 60)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(n, k)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def _peak_growth(op: str, n: int, k: int) -> int:
    """Bytes by which the peak RSS of a fresh process grows in one call (after a small warm-up call)."""
    src = os.path.dirname(os.path.dirname(ksubset.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, op, str(n), str(k)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def _bound(n: int, per_item_level: int) -> int:
    N = 1 << max(0, (n - 1).bit_length())
    itemsize = 8  # float64
    return itemsize * (10 * tree.CHUNK_ELEMENTS + per_item_level * N * (N.bit_length())) + (32 << 20)


@pytest.mark.parametrize(
    "op, n, k",
    [
        ("log_partition", 16384, 16383),
        ("log_partition", 100_000, 99_999),
        ("marginals", 16384, 8192),
        ("entropy", 16384, 8192),
        ("sample", 100_000, 1000),
        ("simple", 16384, 8192),
    ],
)
def test_peak_memory_is_bounded_by_the_problem_size(op, n, k):
    growth = _peak_growth(op, n, k)
    assert growth <= _bound(n, 16), f"{op} n={n} k={k}: peak grew by {growth / 2**20:.0f} MiB"


@pytest.mark.slow
def test_peak_memory_of_third_cumulant():
    """Reverse over forward mode keeps the autograd graph of both passes: more per level, still no K^2."""
    n, k = 16384, 8192
    growth = _peak_growth("cov3", n, k)
    assert growth <= _bound(n, 128), f"cov3 n={n} k={k}: peak grew by {growth / 2**20:.0f} MiB"
