"""Reviews as padded tensors for one aspect: token ids, lengths, targets and rationale masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .embeddings import Vocabulary
from .reviews import Review

__all__ = ["Encoded", "encode"]


@dataclass
class Encoded:
    """A split for one aspect.

    Attributes:
        ids: ``[N, L]`` token rows (0 = padding), ``L`` = the longest review after truncation.
        lengths: ``[N]`` number of real tokens (>= 1).
        y: ``[N]`` the aspect's score in [0, 1].
        rationale: ``[N, L]`` bool, True inside the aspect's annotated spans, or ``None`` without annotations.
    """

    ids: Tensor
    lengths: Tensor
    y: Tensor
    rationale: Tensor | None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def mask(self) -> Tensor:
        """``[N, L]`` True on real tokens."""
        return torch.arange(self.ids.shape[1]) < self.lengths[:, None]

    def batch(self, index: Tensor) -> Encoded:
        """Rows ``index``, trimmed to the longest of them (any padded length works downstream)."""
        L = max(int(self.lengths[index].max()), 1) if len(index) else 1
        rat = None if self.rationale is None else self.rationale[index, :L]
        return Encoded(self.ids[index, :L], self.lengths[index], self.y[index], rat)


def encode(reviews: list[Review], vocab: Vocabulary, aspect: int, max_len: int = 350) -> Encoded:
    """Encode ``reviews`` for ``aspect``; reviews longer than ``max_len`` are truncated, empty ones dropped."""
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    kept = [r for r in reviews if r.tokens]
    if not kept:
        raise ValueError("no non-empty reviews to encode")
    L = min(max_len, max(len(r.tokens) for r in kept))
    ids = torch.zeros(len(kept), L, dtype=torch.long)
    lengths = torch.zeros(len(kept), dtype=torch.long)
    annotated = all(aspect in r.spans for r in kept)
    rationale = torch.zeros(len(kept), L, dtype=torch.bool) if annotated else None
    for i, r in enumerate(kept):
        row = vocab.encode(r.tokens[:L])
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths[i] = len(row)
        if rationale is not None:
            for s, e in r.spans[aspect]:
                rationale[i, max(s, 0) : min(e, L)] = True
    y = torch.tensor([r.scores[aspect] for r in kept], dtype=torch.float32)
    return Encoded(ids, lengths, y, rationale)
