"""The training methods of the VAE experiment: how each one draws the latent and which KL term it trains with.

Every method is one row of every table. A method is an estimator from :mod:`ksubset.estimators` (how ``z``
and its gradient are produced) plus a KL term:

* ``exact`` — :func:`ksubset.kl_uniform`, the exact KL to the uniform prior over k-subsets (every item);
* ``official`` — :func:`.official_kl.official_kl`, the original code's truncated-entropy KL (for the
  like-for-like reproduction of the official log);
* ``mc`` — the single-sample Monte-Carlo KL ``log q(z) − log p(z)`` at the SIMPLE sample ``z``. Its value is
  ``θ·z − log Z(θ) + log C(n, k)`` (= ``ksubset.log_prob`` at ``z``); its gradient flows through ``z`` by
  SIMPLE and through ``θ`` explicitly. Because ``θ·z`` is linear in ``z``, SIMPLE returns ``Cov(z)·θ`` for the
  first part — the exact gradient of the KL — and the explicit part adds the score ``z − μ`` (mean zero):
  unbiased, with that noise.

The score-function method (``sfe_loo``) draws ``S`` exact samples per image and uses the leave-one-out
baseline; its reconstruction loss is the mean over the samples. Relaxed methods (``softsub``) decode their
relaxed sample in training; evaluation always uses exact samples (:mod:`.evaluate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import ksubset

from .model import DiscreteVAE, reconstruction_nll
from .official_kl import official_kl

__all__ = ["Method", "METHODS", "K10_METHODS", "K1_METHODS", "VAELoss", "kl_term"]


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    k: int
    estimator: str
    kl: str  # "exact" | "official" | "mc"
    lr: float
    hp: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("simple_exact", "SIMPLE + exact KL", 10, "simple", "exact", 5e-4),
    Method("simple_official", "SIMPLE + official KL (reproduction)", 10, "simple", "official", 5e-4),
    Method("simple_mc", "SIMPLE + Monte-Carlo KL", 10, "simple", "mc", 5e-4),
    Method("imle", "I-MLE + exact KL", 10, "imle", "exact", 5e-4),
    Method("softsub", "SoftSub (relaxed top-k) + exact KL", 10, "relaxed_topk", "exact", 5e-4),
    Method("st_softsub", "ST relaxed top-k + exact KL", 10, "st_relaxed_topk", "exact", 5e-4),
    Method("sfe_loo", "score function, leave-one-out (S = 4) + exact KL", 10, "score_function", "exact", 5e-4,
           {"num_samples": 4, "baseline": "leave_one_out"}),
    Method("simple_k1", "k = 1: SIMPLE + exact KL", 1, "simple", "exact", 1e-3),
    Method("st_gumbel_k1", "k = 1: ST Gumbel-softmax + exact KL", 1, "st_gumbel_softmax", "exact", 1e-3),
]}
K10_METHODS = [m for m, spec in METHODS.items() if spec.k == 10]
K1_METHODS = [m for m, spec in METHODS.items() if spec.k == 1]


def kl_term(logits: Tensor, k: int, kind: str) -> Tensor:
    """The KL to the uniform prior summed over blocks, ``[B, blocks, items]`` → ``[B]`` (``exact``/``official``)."""
    if kind == "exact":
        return ksubset.kl_uniform(logits, k).sum(-1)
    if kind == "official":
        return official_kl(logits, k).sum(-1)
    raise ValueError(f"kl kind must be 'exact' or 'official', got {kind!r}")


def _mc_kl(logits: Tensor, k: int, z: Tensor) -> Tensor:
    """``log q(z) − log p(z)`` summed over blocks, differentiable through ``z`` and ``θ`` (see the docstring)."""
    n = logits.shape[-1]
    log_q = (logits * z).sum(-1) - ksubset.log_partition(logits, k)
    return (log_q + math.log(math.comb(n, k))).sum(-1)


class VAELoss(nn.Module):
    """The training loss of one method, as a module (so that DistributedDataParallel can wrap it).

    ``forward(x, target, generator)`` with encoder input ``x [B, 784]`` and reconstruction target
    ``[B, 784]`` (both in [0, 1]) returns ``(loss, recon, kl)``: the scalar to minimise (mean over images)
    and the batch means of its two parts (detached).
    """

    def __init__(self, vae: DiscreteVAE, method: Method) -> None:
        super().__init__()
        self.vae = vae
        self.method = method
        self.estimator = ksubset.estimators.get(method.estimator, **method.hp)

    def forward(self, x: Tensor, target: Tensor, generator: torch.Generator | None = None):
        m = self.method
        logits = self.vae.encode(x)
        if m.estimator == "score_function":
            blocks = logits.shape[-2]

            def f(z: Tensor) -> Tensor:  # [S, B, blocks, items] -> [S, B, blocks]
                rec = reconstruction_nll(self.vae.decode(z), target)
                # one image's loss for each of its blocks (log q(z) is the sum over blocks); the decoder's
                # gradient is taken from block 0 only, so that it is counted once
                return torch.cat([rec[..., None], rec.detach()[..., None].expand(*rec.shape, blocks - 1)], -1)

            surrogate = self.estimator(logits, m.k, f, generator=generator)  # [B, blocks]
            recon = surrogate.sum(-1) - surrogate[..., 1:].detach().sum(-1)  # value: mean_s loss, full gradient
            kl = kl_term(logits, m.k, m.kl)
        else:
            z = self.estimator(logits, m.k, generator=generator)
            recon = reconstruction_nll(self.vae.decode(z), target)
            kl = _mc_kl(logits, m.k, z) if m.kl == "mc" else kl_term(logits, m.k, m.kl)
        loss = (recon + kl).mean()
        return loss, recon.detach().mean(), kl.detach().mean()
