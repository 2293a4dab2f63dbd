"""Where E3's data come from: the substitute generator (GloVe + VADER) or the original files (``--data-dir``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .beer import load_beer
from .dataset import Encoded, encode
from .embeddings import Vocabulary, glove_words_and_vectors, vader_lexicon
from .reviews import ASPECTS, Review, ReviewConfig, generate, sentiment_pool

__all__ = ["DataSource"]


class DataSource:
    """Encoded train/test splits per aspect, built once and cached in memory.

    ``data_dir=None`` generates the substitute data with ``review_config``; otherwise the original files are
    read from ``data_dir`` (one aspect at a time, as they come per aspect).
    """

    def __init__(self, review_config: ReviewConfig, data_dir: Path | None = None, vectors: Path | None = None,
                 max_len: int = 350):
        self.review_config, self.data_dir, self.vectors, self.max_len = review_config, data_dir, vectors, max_len
        self._splits: dict[int | None, tuple[dict[str, list[Review]], Vocabulary]] = {}
        self._encoded: dict[int, tuple[Encoded, Encoded, torch.Tensor]] = {}
        self.sentiment_words = 0

    @property
    def substitute(self) -> bool:
        return self.data_dir is None

    def _real_dir(self) -> Path:
        """The folder of the original files (only called when ``data_dir`` was given)."""
        assert self.data_dir is not None, "the substitute data have no data folder"
        return Path(self.data_dir)

    def describe(self) -> dict:
        """What the unit results depend on (hashed into every unit's configuration)."""
        if self.substitute:
            return {"source": "substitute", "max_len": self.max_len, **asdict(self.review_config)}
        return {"source": "beeradvocate", "data_dir": str(Path(self._real_dir()).resolve()), "max_len": self.max_len,
                "vectors": None if self.vectors is None else str(self.vectors)}

    def splits(self, aspect: int) -> tuple[dict[str, list[Review]], Vocabulary]:
        key = None if self.substitute else aspect
        if key not in self._splits:
            if self.substitute:
                words, vectors = glove_words_and_vectors()
                lexicon = vader_lexicon()
                vocab_set = set(words)
                frequent = set(words[: self.review_config.vocab_limit])  # GloVe rows are ordered by frequency
                splits = generate(self.review_config, lexicon, vocab_set, frequent)
                self.sentiment_words = len(sentiment_pool(lexicon, frequent)[0])
                tokens = {t for reviews in splits.values() for r in reviews for t in r.tokens}
                self._splits[key] = (splits, Vocabulary.build(tokens, words, vectors))
            else:
                self._splits[key] = load_beer(self._real_dir(), aspect, self.vectors)
        return self._splits[key]

    def encoded(self, aspect: int) -> tuple[Encoded, Encoded, torch.Tensor]:
        """``(train, test, vectors [V, d])`` for ``aspect``."""
        if aspect not in self._encoded:
            splits, vocab = self.splits(aspect)
            train = encode(splits["train"], vocab, aspect, self.max_len)
            test = encode(splits["test"], vocab, aspect, self.max_len)
            self._encoded[aspect] = (train, test, torch.from_numpy(vocab.vectors))
        return self._encoded[aspect]

    def statistics(self, aspect: int = 1) -> dict:
        """Lengths, vocabulary, aspect correlation and rationale sizes (of the data behind ``aspect``)."""
        splits, vocab = self.splits(aspect)
        stats: dict = {"vocabulary": len(vocab) - 2, "embedding_dim": int(vocab.vectors.shape[1])}
        if self.substitute:
            stats["sentiment_words"] = self.sentiment_words
        for name, reviews in splits.items():
            lengths = np.array([len(r.tokens) for r in reviews])
            stats[name] = {"reviews": len(reviews), "length_mean": float(lengths.mean()) if len(lengths) else 0.0,
                           "length_min": int(lengths.min()) if len(lengths) else 0,
                           "length_max": int(lengths.max()) if len(lengths) else 0}
        y = np.array([r.scores[:4] for r in splits["train"] if len(r.scores) >= 4])
        if len(y) > 1:
            stats["aspect_correlation"] = np.corrcoef(y.T).round(3).tolist()
        test = splits["test"]
        if test and all(r.spans for r in test):
            stats["rationale_tokens_mean"] = {
                ASPECTS[a]: float(np.mean([sum(e - s for s, e in r.spans.get(a, [])) for r in test]))
                for a in range(4)
            }
        return stats
