"""A seeded generator of multi-aspect reviews *with ground-truth rationales* (substitute for BeerAdvocate).

BeerAdvocate (Lei et al.'s processed version) cannot be obtained without network, so this module writes
reviews with the same structure and a known answer:

* four aspects (0 appearance, 1 aroma, 2 palate, 3 taste), each with its own cue nouns and descriptors;
* per review a latent quality ``g ~ N(0, 1)`` and aspect scores ``s_a = round10(Phi(rho g + sqrt(1 - rho^2)
  e_a))`` in [0, 1] in 0.1 steps: ``rho`` sets how strongly aspects correlate — the hard case of the real
  data, where a selector can score well on MSE by picking another aspect's words;
* per aspect enough sentences (at least ``min_rationale`` annotated tokens) whose sentiment words are drawn
  from the VADER lexicon (restricted to the embedding vocabulary) with probability
  ``∝ exp(-(valence - 6 (s_a - 0.5))^2 / (2 width^2))``: the aspect's score decides its words;
* neutral filler sentences, an "overall" sentence drawn from the latent quality (correlated with every
  aspect, annotated for none) and sometimes a remark on price or label with an unrelated score;
* shuffled sentence order.

A review's rationale for aspect a is the token range ``[start, end)`` of each of its aspect-a sentences
(without the final period), in the original ``annotations.json`` convention
(``{"0": [[start, end], ...], ..., "3": [...], "x": tokens, "y": [s_0, s_1, s_2, s_3, overall]}``), so the
original precision definition applies unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["ASPECTS", "Review", "ReviewConfig", "generate", "sentiment_pool", "template_words"]

ASPECTS = ("appearance", "aroma", "palate", "taste")
CUES = (
    ("appearance", "look", "color", "head", "lacing", "foam", "clarity"),
    ("aroma", "smell", "nose", "scent", "bouquet"),
    ("palate", "mouthfeel", "body", "carbonation", "texture"),
    ("taste", "flavor", "finish", "aftertaste"),
)
DESCRIPTORS = (
    ("amber", "golden", "copper", "brown", "white", "tan", "haze"),
    ("citrus", "pine", "malt", "caramel", "hops", "grapefruit", "yeast"),
    ("medium", "thin", "thick", "bubbles", "tongue", "mouth"),
    ("bitterness", "coffee", "chocolate", "toffee", "bread", "roast"),
)
ADVERBS = ("very", "quite", "really", "rather", "somewhat", "fairly", "slightly", "extremely")
# Aspect sentence templates: C cue noun, S sentiment word, A adverb, D descriptor.
ASPECT_TEMPLATES = (
    ("the", "C", "is", "S"),
    ("the", "C", "is", "A", "S", "and", "S"),
    ("S", "C", "with", "some", "D", "and", "D"),
    ("the", "C", "was", "S", ",", "A", "S", "with", "hints", "of", "D"),
    ("i", "thought", "the", "C", "was", "S"),
    ("A", "S", "C", ",", "lots", "of", "D"),
)
FILLERS = (
    ("i", "had", "this", "one", "from", "a", "X"),
    ("poured", "into", "a", "X", "at", "the", "Y"),
    ("picked", "it", "up", "at", "the", "Y", "last", "W"),
    ("served", "at", "about", "N", "degrees"),
    ("shared", "with", "a", "friend", "on", "a", "W", "night"),
)
FILLER_SLOTS = {
    "X": ("bottle", "can", "glass", "pint", "growler", "tulip", "mug"),
    "Y": ("store", "shop", "brewery", "pub", "market", "house"),
    "W": ("week", "month", "friday", "saturday", "summer", "winter"),
    "N": ("forty", "fifty", "sixty", "ten", "twelve"),
}
OVERALL_TEMPLATES = (("overall", "a", "S", "beer"), ("overall", "it", "is", "S"))
DISTRACTOR_TEMPLATE = ("the", "P", "was", "S")
DISTRACTOR_NOUNS = ("price", "label", "cap", "service", "bar", "website")


def template_words() -> set[str]:
    """Every word the templates can emit besides sentiment words (must be in the vocabulary)."""
    words: set[str] = set()
    for group in (*CUES, *DESCRIPTORS, ADVERBS, DISTRACTOR_NOUNS, *FILLER_SLOTS.values()):
        words.update(group)
    for t in (*ASPECT_TEMPLATES, *FILLERS, *OVERALL_TEMPLATES, DISTRACTOR_TEMPLATE):
        words.update(w for w in t if not (len(w) == 1 and w.isupper()))
    return words | {"."}


def sentiment_pool(lexicon: dict[str, float], vocabulary: set[str]) -> tuple[list[str], np.ndarray]:
    """Sentiment words: alphabetic lexicon entries in ``vocabulary`` that no template uses; with valences."""
    reserved = template_words()
    words = sorted(w for w in lexicon if w.isalpha() and w in vocabulary and w not in reserved)
    if len(words) < 20:
        raise ValueError(f"lexicon ∩ vocabulary has only {len(words)} usable sentiment words (need >= 20)")
    return words, np.array([lexicon[w] for w in words], dtype=np.float64)


@dataclass(frozen=True)
class ReviewConfig:
    """What the generator draws. Sizes are per split; the test split is the annotated one."""

    n_train: int = 1200
    n_val: int = 200
    n_test: int = 994
    correlation: float = 0.8  # rho: loading of every aspect on the latent quality
    min_rationale: int = 15  # annotated tokens per aspect at least (>= the largest k, so the oracle fills k)
    width: float = 0.6  # spread of sentiment valences around the score's target valence
    fillers: tuple[int, int] = (1, 2)  # filler sentences per review, inclusive range
    p_overall: float = 0.8
    p_distractor: float = 0.5
    vocab_limit: int = 20000  # sentiment words come from the embedding's most frequent words (better vectors)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"ReviewConfig.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.correlation <= 1.0:
            raise ValueError(f"ReviewConfig.correlation must be in [0, 1], got {self.correlation!r}")
        if self.width <= 0:
            raise ValueError(f"ReviewConfig.width must be > 0, got {self.width!r}")


@dataclass
class Review:
    """One review: ``tokens``, ``scores`` (4 aspects + overall, each in [0, 1]) and ``spans`` per aspect."""

    tokens: list[str]
    scores: list[float]
    spans: dict[int, list[list[int]]] = field(default_factory=dict)

    def annotation(self) -> dict:
        """The original ``annotations.json`` record."""
        rec: dict = {str(a): [list(s) for s in self.spans.get(a, [])] for a in range(len(ASPECTS))}
        rec["x"] = list(self.tokens)
        rec["y"] = list(self.scores)
        return rec


def _round10(p: np.ndarray) -> np.ndarray:
    return np.round(p * 10.0) / 10.0


def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


class _Writer:
    def __init__(self, cfg: ReviewConfig, words: list[str], valences: np.ndarray, rng: np.random.Generator):
        self.cfg, self.words, self.rng = cfg, words, rng
        # one categorical distribution over sentiment words per score level 0.0, 0.1, ..., 1.0
        levels = np.arange(11) / 10.0
        logits = -((valences[None, :] - 6.0 * (levels[:, None] - 0.5)) ** 2) / (2 * cfg.width**2)
        w = np.exp(logits - logits.max(1, keepdims=True))
        self.cdf = np.cumsum(w / w.sum(1, keepdims=True), axis=1)

    def sentiment(self, score: float) -> str:
        cdf = self.cdf[int(round(score * 10))]
        return self.words[min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cdf) - 1)]

    def fill(self, template, score: float, cue_group=(), descriptors=(), slots=None) -> list[str]:
        pick = lambda seq: seq[self.rng.integers(len(seq))]  # noqa: E731
        out = []
        for w in template:
            if w == "S":
                out.append(self.sentiment(score))
            elif w == "C":
                out.append(pick(cue_group))
            elif w == "D":
                out.append(pick(descriptors))
            elif w == "A":
                out.append(pick(ADVERBS))
            elif slots and w in slots:
                out.append(pick(slots[w]))
            else:
                out.append(w)
        return out

    def review(self, scores: np.ndarray, overall: float) -> Review:
        cfg, rng = self.cfg, self.rng
        sentences: list[tuple[int | None, list[str]]] = []
        for a in range(len(ASPECTS)):
            annotated = 0
            while annotated < cfg.min_rationale:
                t = ASPECT_TEMPLATES[rng.integers(len(ASPECT_TEMPLATES))]
                s = self.fill(t, float(scores[a]), CUES[a], DESCRIPTORS[a])
                sentences.append((a, s))
                annotated += len(s)
        for _ in range(int(rng.integers(cfg.fillers[0], cfg.fillers[1] + 1))):
            sentences.append((None, self.fill(FILLERS[rng.integers(len(FILLERS))], 0.5, slots=FILLER_SLOTS)))
        if rng.random() < cfg.p_overall:
            sentences.append((None, self.fill(OVERALL_TEMPLATES[rng.integers(2)], overall)))
        if rng.random() < cfg.p_distractor:
            noise_score = float(_round10(np.asarray(rng.random())))
            sentences.append((None, self.fill(DISTRACTOR_TEMPLATE, noise_score, slots={"P": DISTRACTOR_NOUNS})))
        order = rng.permutation(len(sentences))
        tokens: list[str] = []
        spans: dict[int, list[list[int]]] = {a: [] for a in range(len(ASPECTS))}
        for i in order:
            aspect, words = sentences[i]
            if aspect is not None:
                spans[aspect].append([len(tokens), len(tokens) + len(words)])
            tokens += [*words, "."]
        return Review(tokens, [*map(float, scores), float(overall)], spans)


def _split(cfg: ReviewConfig, words, valences, n: int, stream: int) -> list[Review]:
    rng = np.random.default_rng([cfg.seed, stream])
    g = rng.standard_normal(n)
    e = rng.standard_normal((n, len(ASPECTS)))
    rho = cfg.correlation
    scores = _round10(_phi(rho * g[:, None] + math.sqrt(1 - rho**2) * e)) if n else np.zeros((0, 4))
    overall = _round10(_phi(g)) if n else np.zeros(0)
    writer = _Writer(cfg, words, valences, rng)
    return [writer.review(scores[i], float(overall[i])) for i in range(n)]


def generate(cfg: ReviewConfig, lexicon: dict[str, float], vocabulary: set[str],
             frequent: set[str] | None = None) -> dict[str, list[Review]]:
    """``{"train", "val", "test"}`` lists of :class:`Review`, a pure function of ``cfg`` and the word lists.

    Every emitted token is in ``vocabulary`` (template words must be: a missing one raises ``ValueError``);
    sentiment words are taken from ``frequent`` (default: ``vocabulary``) ∩ the lexicon.
    """
    missing = sorted(template_words() - set(vocabulary))
    if missing:
        raise ValueError(f"vocabulary lacks template words {missing[:10]}{'...' if len(missing) > 10 else ''}")
    words, valences = sentiment_pool(lexicon, set(vocabulary) if frequent is None else set(frequent) & set(vocabulary))
    return {
        "train": _split(cfg, words, valences, cfg.n_train, 0),
        "val": _split(cfg, words, valences, cfg.n_val, 1),
        "test": _split(cfg, words, valences, cfg.n_test, 2),
    }


def config_dict(cfg: ReviewConfig) -> dict:
    return asdict(cfg)
