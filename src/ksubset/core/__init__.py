"""Exact inference on the k-subset distribution (the bottom layer: pure functions on tensors).

``prepare``/``Problem`` are exported for the layers above (estimators) that need the same validation and
the reduction of ``±inf``/masked items to a free-item problem.
"""

from ._problem import Problem, prepare
from .engine import Engine, available_engines, default_engine, engine_module, set_engine, use_engine
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
    "Engine",
    "Problem",
    "default_engine",
    "engine_module",
    "use_engine",
    "prepare",
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
