"""Training and evaluation of one (data, method, k, seed) unit of E3."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...estimators import score_function
from .dataset import Encoded
from .methods import METHODS, REFERENCE_ROWS, l2x_relaxation, top_k
from .metrics import oracle_selection, random_selection, subset_precision
from .model import Predictor, Selector

__all__ = ["TrainConfig", "train_rationale"]


@dataclass(frozen=True)
class TrainConfig:
    k: int
    lr: float
    epochs: int = 20
    batch_size: int = 40
    max_steps: int | None = None  # stop early (tests); None = every epoch to the end

    def __post_init__(self) -> None:
        for name in ("k", "epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")


class _Model(nn.Module):
    def __init__(self, vectors: Tensor):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(vectors, freeze=True, padding_idx=0)
        self.selector = Selector(vectors.shape[1])
        self.predictor = Predictor(vectors.shape[1])


def _rationale(b: Encoded) -> Tensor:
    """The batch's annotated words (the oracle row only runs on annotated reviews)."""
    if b.rationale is None:
        raise ValueError("the oracle selection needs annotated rationales, and this batch has none")
    return b.rationale


def _loss(method: str, model: _Model, b: Encoded, k: Tensor, layer, generator) -> Tensor:
    """The training loss of one batch (mean squared error on the aspect's score)."""
    emb, mask = model.embedding(b.ids), b.ids != 0
    if method in REFERENCE_ROWS:
        kmax = int(k.max())
        if method == "random":
            z = random_selection(mask, kmax, generator)
        else:
            z = oracle_selection(_rationale(b), mask, kmax, generator)
        return ((model.predictor(emb, z, k) - b.y) ** 2).mean()
    logits = model.selector(emb, mask)
    spec = METHODS[method]
    if spec.kind == "score_function":
        def f(z: Tensor) -> Tensor:  # [S, B, L] -> [S, B]
            return (model.predictor(emb, z, k) - b.y) ** 2

        return score_function(logits, k, f, mask, generator=generator, **spec.hyperparameters).mean()
    if spec.kind == "l2x":
        z = l2x_relaxation(logits, k, mask, generator=generator, **spec.hyperparameters)
    else:
        z = layer(logits, mask, k, generator=generator)
    return ((model.predictor(emb, z, k) - b.y) ** 2).mean()


@torch.no_grad()
def _evaluate(method: str, model: _Model, data: Encoded, k: int, generator, batch_size: int = 200):
    """Test MSE, precision (if annotated) and the selections ``[N, L]`` with top-k at test time."""
    model.eval()
    sq, selected = [], torch.zeros(data.ids.shape, dtype=torch.bool)
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        b = data.batch(idx)
        emb, mask = model.embedding(b.ids), b.ids != 0
        kk = torch.clamp(b.lengths, max=k)
        if method == "random":
            z = random_selection(mask, k, generator)
        elif method == "oracle":
            z = oracle_selection(_rationale(b), mask, k, generator)
        else:
            z = top_k(model.selector(emb, mask), kk, mask)
        sq.append((model.predictor(emb, z, kk) - b.y) ** 2)
        selected[idx, : b.ids.shape[1]] = z.bool()
    model.train()
    mse = float(torch.cat(sq).mean())
    precision = None
    if data.rationale is not None:
        precision = subset_precision(selected, data.rationale, torch.clamp(data.lengths, max=k))
    return mse, precision, selected


def train_rationale(method: str, train: Encoded, test: Encoded, vectors: Tensor, cfg: TrainConfig, seed: int,
                    example_rows: tuple[int, ...] = (0,)) -> dict:
    """Train selector and predictor with ``method`` (or a reference row) and evaluate on ``test``.

    Returns ``test_mse``, ``precision`` (None without annotations), ``train_loss`` (mean per epoch),
    ``steps``, ``seconds`` and ``examples`` (the test-time selected positions of ``example_rows``).
    """
    if method not in METHODS and method not in REFERENCE_ROWS:
        raise ValueError(f"unknown method {method!r}; available: {[*METHODS, *REFERENCE_ROWS]}")
    if method == "oracle" and (train.rationale is None or test.rationale is None):
        raise ValueError("the oracle row needs annotated train and test data")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _Model(vectors)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    layer = METHODS[method].layer(cfg.k) if method in METHODS else None
    t0, steps, losses = time.perf_counter(), 0, []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(train), cfg.batch_size):
            b = train.batch(order[start : start + cfg.batch_size])
            k = torch.clamp(b.lengths, max=cfg.k)
            loss = _loss(method, model, b, k, layer, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count, steps = total + float(loss.detach()) * len(b), count + len(b), steps + 1
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        losses.append(total / max(count, 1))
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    mse, precision, selected = _evaluate(method, model, test, cfg.k, gen)
    return {
        "test_mse": mse,
        "precision": precision,
        "train_loss": losses,
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 2),
        "examples": {str(r): selected[r].nonzero().flatten().tolist() for r in example_rows if r < len(test)},
    }
