"""Test-set evaluation: the negative ELBO with exact samples, the official metric, and the IWAE bound.

Every method is scored on *exact* samples from its encoder's k-subset distribution (``ksubset.sample``),
whatever it decoded in training, so all rows measure the same quantity:

* negative ELBO (nats per image) = ``E_q[−log p(x|z)]`` (mean over ``samples`` exact draws per image) + the
  exact KL (``ksubset.kl_uniform``, summed over blocks);
* the official metric = the same reconstruction term + the official code's truncated KL
  (:func:`.official_kl.official_kl`);
* IWAE: ``−log (1/S) Σ_s p(x|z_s) p(z_s) / q(z_s|x)`` with ``S`` exact samples and the exact ``log q``
  (``ksubset.log_prob``) — an upper bound on ``−log p(x)``, tighter than the negative ELBO.

The functions return *sums* over the images they see and a count, so that data-parallel ranks can each score
a shard and add their sums (:func:`all_reduce_sums`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import ksubset

from .methods import kl_term
from .model import DiscreteVAE, images_to_float, reconstruction_nll

__all__ = ["evaluate", "iwae", "all_reduce_sums", "test_inputs"]


def test_inputs(x_uint8: Tensor, binarize: bool, seed: int) -> Tensor:
    """Test images as floats; with ``binarize`` one fixed Bernoulli draw (the same every epoch)."""
    x = images_to_float(x_uint8)
    if binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


@torch.no_grad()
def evaluate(vae: DiscreteVAE, x: Tensor, k: int, *, samples: int, generator: torch.Generator,
             batch: int = 500) -> dict[str, float]:
    """Sums over the images ``x [N, 784]`` (floats in [0, 1]) of the reconstruction term, both KLs."""
    sums = {"recon": 0.0, "kl": 0.0, "kl_official": 0.0, "count": 0.0}
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].to(next(vae.parameters()).device)
        logits = vae.encode(xb)
        z = ksubset.sample(logits, k, sample_shape=(samples,), generator=generator)
        recon = reconstruction_nll(vae.decode(z), xb).mean(0)
        sums["recon"] += float(recon.sum())
        sums["kl"] += float(kl_term(logits, k, "exact").sum())
        sums["kl_official"] += float(kl_term(logits, k, "official").sum())
        sums["count"] += xb.shape[0]
    return sums


@torch.no_grad()
def iwae(vae: DiscreteVAE, x: Tensor, k: int, *, samples: int, generator: torch.Generator, batch: int = 50,
         chunk: int = 250) -> dict[str, float]:
    """Sum over images of the IWAE bound ``−log (1/S) Σ_s w_s`` (nats) with ``S = samples`` exact draws.

    Samples are drawn in chunks of ``chunk`` per image and combined with a running log-sum-exp.
    """
    sums = {"iwae": 0.0, "count": 0.0}
    device = next(vae.parameters()).device
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].to(device)
        logits = vae.encode(xb)
        n = logits.shape[-1]
        log_prior = -logits.shape[-2] * math.log(math.comb(n, k))
        acc = torch.full((xb.shape[0],), float("-inf"), dtype=torch.float64, device=device)
        done = 0
        while done < samples:
            s = min(chunk, samples - done)
            z = ksubset.sample(logits, k, sample_shape=(s,), generator=generator)  # [s, B, blocks, items]
            log_lik = -reconstruction_nll(vae.decode(z), xb)
            log_q = ksubset.log_prob(logits, k, z).sum(-1)
            log_w = (log_lik + log_prior - log_q).double()
            acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
            done += s
        sums["iwae"] += float(-(acc - math.log(samples)).sum())
        sums["count"] += xb.shape[0]
    return sums


def all_reduce_sums(sums: dict[str, float]) -> dict[str, float]:
    """Add the sums over data-parallel ranks (identity when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return sums
    keys = sorted(sums)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([sums[key] for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist(), strict=True))
