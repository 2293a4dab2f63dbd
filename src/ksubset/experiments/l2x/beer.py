"""The original BeerAdvocate files (Lei et al. 2016 processing): read them, and write data in their format.

Formats (plain text, optionally gzip-compressed with a ``.gz`` suffix):

* ``reviews.aspect{A}.train.txt`` / ``reviews.aspect{A}.heldout.txt``: one review per line,
  ``"y_0 y_1 ... y_m<TAB>token token ..."`` (scores in [0, 1]; aspect A's score is ``y_A``);
* ``annotations.json``: one JSON object per line, ``{"0": [[start, end], ...], "1": ..., "x": tokens,
  "y": scores}`` — the human rationale spans ``[start, end)`` per aspect (the 994 annotated test reviews);
* a word-vector text file: ``word v_1 ... v_d`` per line.

:func:`load_beer` turns a folder with these files into the same splits and :class:`Vocabulary` the substitute
data use, so ``ksubset reproduce l2x --data-dir D`` runs the real experiment when the files are at hand.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from .embeddings import Vocabulary
from .reviews import Review

__all__ = ["read_reviews", "read_annotations", "read_vectors", "find_file", "load_beer", "write_original_format"]


def _open(path: Path):
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def find_file(data_dir: Path, name: str) -> Path:
    """``data_dir/name`` or ``data_dir/name.gz``; a clear ``ValueError`` when neither exists."""
    for candidate in (Path(data_dir) / name, Path(data_dir) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"data_dir {str(data_dir)!r} has no {name} (or {name}.gz)")


def read_reviews(path: Path) -> list[Review]:
    """Reviews of a ``reviews.aspect*.txt`` file (no rationales)."""
    out = []
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            head, sep, text = line.rstrip("\n").partition("\t")
            try:
                scores = [float(v) for v in head.split()]
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'scores<TAB>text', got {line[:60]!r}") from None
            if not sep or not scores:
                raise ValueError(f"{path}:{lineno}: expected 'scores<TAB>text', got {line[:60]!r}")
            out.append(Review(text.split(), scores, {}))
    return out


def read_annotations(path: Path) -> list[Review]:
    """Annotated reviews of an ``annotations.json`` file (spans keyed by aspect number)."""
    out = []
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                tokens, scores = list(rec["x"]), [float(v) for v in rec["y"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{lineno}: not an annotation record ({err})") from None
            spans = {int(key): [[int(s), int(e)] for s, e in val] for key, val in rec.items() if key.isdigit()}
            out.append(Review(tokens, scores, spans))
    return out


def read_vectors(path: Path, keep: set[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Words and vectors ``[V, d]`` of a word-vector text file (only the words in ``keep``, if given)."""
    words, rows, dim = [], [], None
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2 or (keep is not None and parts[0] not in keep):
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                raise ValueError(f"{path}:{lineno}: {len(parts) - 1} values, expected {dim}")
            words.append(parts[0])
            rows.append(np.asarray(parts[1:], dtype=np.float32))
    if not rows:
        raise ValueError(f"{path}: no word vectors found")
    return words, np.stack(rows)


def _vectors_file(data_dir: Path) -> Path:
    skip = ("reviews.", "annotations")
    found = sorted(p for p in Path(data_dir).iterdir()
                   if p.is_file() and not p.name.startswith(skip) and p.name.endswith((".txt", ".txt.gz")))
    if len(found) != 1:
        raise ValueError(
            f"data_dir {str(data_dir)!r}: expected exactly one word-vector text file (*.txt or *.txt.gz besides "
            f"the reviews files), found {[p.name for p in found]}; pass --vectors PATH"
        )
    return found[0]


def load_beer(data_dir: Path, aspect: int, vectors: Path | None = None) -> tuple[dict[str, list[Review]], Vocabulary]:
    """``({"train", "val", "test"}, vocabulary)`` from the original files for ``aspect`` (0..3)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data_dir {str(data_dir)!r} is not a folder")
    splits = {
        "train": read_reviews(find_file(data_dir, f"reviews.aspect{aspect}.train.txt")),
        "val": read_reviews(find_file(data_dir, f"reviews.aspect{aspect}.heldout.txt")),
        "test": read_annotations(find_file(data_dir, "annotations.json")),
    }
    for name, reviews in splits.items():
        short = [i for i, r in enumerate(reviews) if len(r.scores) <= aspect]
        if short:
            raise ValueError(f"{name} review {short[0]} has {len(reviews[short[0]].scores)} scores; aspect {aspect}")
    tokens = {t for reviews in splits.values() for r in reviews for t in r.tokens}
    words, table = read_vectors(vectors or _vectors_file(data_dir), keep=tokens)
    return splits, Vocabulary.build(tokens, words, table)


def write_original_format(splits: dict[str, list[Review]], out_dir: Path, aspects=(0, 1, 2, 3)) -> list[Path]:
    """Write ``splits`` as the original files (train/heldout per aspect, test as ``annotations.json``)."""
    from ..common import atomic_write_text

    out_dir = Path(out_dir)
    written = []
    for a in aspects:
        for split, name in (("train", "train"), ("val", "heldout")):
            path = out_dir / f"reviews.aspect{a}.{name}.txt"
            text = "".join(" ".join(f"{s:g}" for s in r.scores) + "\t" + " ".join(r.tokens) + "\n"
                           for r in splits[split])
            atomic_write_text(path, text)
            written.append(path)
    path = out_dir / "annotations.json"
    atomic_write_text(path, "".join(json.dumps(r.annotation()) + "\n" for r in splits["test"]))
    return [*written, path]
