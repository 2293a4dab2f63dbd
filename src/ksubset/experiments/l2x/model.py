"""The networks of E3 (selector and predictor over word vectors) and of the L2X tabular sets."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Selector", "Predictor", "TabularSelector", "TabularPredictor"]


class Selector(nn.Module):
    """One logit per token: frozen embedding → Conv1D(100, 3, ReLU); a global branch (masked max-pool →
    Dense(100)) and a local branch (two Conv1D(100, 3, ReLU)); concatenated → Dropout(0.2) →
    Conv1D(100, 1, ReLU) → Conv1D(1, 1). ``(emb [B, L, d], mask [B, L]) → logits [B, L]``; padding gets
    ``-inf`` so that no estimator can select it."""

    def __init__(self, dim: int, hidden: int = 100, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Conv1d(dim, hidden, 3, padding=1)
        self.glob = nn.Linear(hidden, hidden)
        self.local = nn.Sequential(
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Conv1d(2 * hidden, hidden, 1), nn.ReLU(), nn.Conv1d(hidden, 1, 1)
        )

    def forward(self, emb: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(1)  # [B, 1, L]
        h = torch.relu(self.conv((emb * mask.unsqueeze(-1)).transpose(1, 2))) * m  # [B, H, L]
        g = self.glob(h.masked_fill(~m, float("-inf")).amax(-1))  # [B, H]
        x = torch.cat([g.unsqueeze(-1).expand_as(h), self.local(h)], 1)
        return self.head(x).squeeze(1).masked_fill(~mask, float("-inf"))


class Predictor(nn.Module):
    """Rating from the selected words: ``mean_k(emb ⊙ z)`` → Dense(250, ReLU) → Dense(1, sigmoid).

    ``(emb [..., L, d], z [..., L], k [B]) → [...]`` (leading sample dimensions broadcast); the mean divides
    by each row's k, as the original.
    """

    def __init__(self, dim: int, hidden: int = 250):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, emb: Tensor, z: Tensor, k: Tensor) -> Tensor:
        pooled = (emb * z.unsqueeze(-1)).sum(-2) / k.clamp_min(1).unsqueeze(-1).to(emb.dtype)
        return self.net(pooled).squeeze(-1)


class TabularSelector(nn.Module):
    """L2X's selector for the tabular sets: ``x [B, d] → logits [B, d]`` (MLP 100-100)."""

    def __init__(self, dim: int, hidden: int = 100):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TabularPredictor(nn.Module):
    """L2X's predictor: ``(x [..., B, d], z [..., B, d]) → class logits [..., B, 2]`` (MLP 200-200 on x ⊙ z)."""

    def __init__(self, dim: int, hidden: int = 200):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net(x * z)
