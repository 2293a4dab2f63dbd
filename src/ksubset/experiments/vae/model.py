"""The discrete VAE of the SIMPLE paper (E2): MLP encoder to block logits, MLP decoder to pixel logits.

Shapes: images ``x [B, 784]`` as floats in [0, 1]; latent logits ``[B, blocks, items]`` (20 × 20); a latent
sample ``z [..., B, blocks, items]`` (k ones per block, or a relaxation) decodes to pixel logits
``[..., B, 784]``. The reconstruction term is the Bernoulli cross-entropy of the pixel values (not
binarised, as in the paper), summed over pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiscreteVAE", "reconstruction_nll"]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DiscreteVAE(nn.Module):
    """Encoder 784-512-256-(blocks·items) and decoder (blocks·items)-256-512-784, ReLU between layers."""

    def __init__(self, blocks: int = 20, items: int = 20, pixels: int = 784) -> None:
        super().__init__()
        self.blocks, self.items, self.pixels = int(blocks), int(items), int(pixels)
        latent = self.blocks * self.items
        self.encoder = _mlp([pixels, 512, 256, latent])
        self.decoder = _mlp([latent, 256, 512, pixels])

    def encode(self, x: Tensor) -> Tensor:
        """``x [B, 784]`` → block logits ``[B, blocks, items]``."""
        return self.encoder(x).unflatten(-1, (self.blocks, self.items))

    def decode(self, z: Tensor) -> Tensor:
        """``z [..., blocks, items]`` → pixel logits ``[..., 784]``."""
        return self.decoder(z.flatten(-2))


def reconstruction_nll(pixel_logits: Tensor, x: Tensor) -> Tensor:
    """``-log p(x | z)`` summed over pixels: ``[..., B, 784]`` logits, ``[B, 784]`` targets → ``[..., B]``."""
    target = x.expand_as(pixel_logits)
    return F.binary_cross_entropy_with_logits(pixel_logits, target, reduction="none").sum(-1)


def images_to_float(x: Tensor) -> Tensor:
    """``uint8 [B, 784]`` → float32 pixels / 255."""
    return x.to(torch.float32) / 255.0
