"""Exact inference on the k-subset distribution (the bottom layer: pure functions on tensors)."""

from .functions import available_engines, set_engine
from .inference import (
    entropy,
    kl_divergence,
    kl_uniform,
    log_partition,
    log_prob,
    marginals,
    mode,
    sample,
    sample_and_marginals,
)

__all__ = [
    "available_engines",
    "entropy",
    "kl_divergence",
    "kl_uniform",
    "log_partition",
    "log_prob",
    "marginals",
    "mode",
    "sample",
    "sample_and_marginals",
    "set_engine",
]
