"""E3's model, methods and command, on the tiny fixture of test_l2x_data (no data packages needed)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from test_l2x_data import fixture_splits, fixture_vocabulary

from ksubset import experiments
from ksubset.experiments.l2x import beer
from ksubset.experiments.l2x.dataset import encode
from ksubset.experiments.l2x.embeddings import Vocabulary
from ksubset.experiments.l2x.methods import METHODS, REFERENCE_ROWS, l2x_relaxation
from ksubset.experiments.l2x.tabular import train_tabular
from ksubset.experiments.l2x.train import TrainConfig, train_rationale


@pytest.fixture(scope="module")
def fixture_data():
    splits = fixture_splits(n_train=120, n_test=40)
    words, vec = fixture_vocabulary()
    vocab = Vocabulary.build({t for s in splits.values() for r in s for t in r.tokens}, words, vec)
    return encode(splits["train"], vocab, 1), encode(splits["test"], vocab, 1), torch.from_numpy(vocab.vectors)


@pytest.mark.parametrize("method", [*METHODS, *REFERENCE_ROWS])
def test_a_few_training_steps_lower_the_loss(fixture_data, method):
    train, test, vectors = fixture_data
    out = train_rationale(method, train, test, vectors, TrainConfig(k=5, lr=5e-3, epochs=6, batch_size=20), seed=0)
    first, last = out["train_loss"][0], out["train_loss"][-1]
    assert last < 0.8 * first, out["train_loss"]
    assert 0 <= out["precision"] <= 1 and out["test_mse"] > 0
    sel = out["examples"]["0"]
    assert len(sel) == 5 and max(sel) < int(test.lengths[0])  # top-k of real tokens only


def test_l2x_relaxation_masks_and_bounds():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 12, requires_grad=True)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, 6:] = False
    k = torch.tensor([3, 3, 1, 12])
    z = l2x_relaxation(logits, k, mask, tau=0.1, generator=g)
    assert z.shape == (4, 12) and (z >= 0).all() and (z <= 1).all()
    assert (z[1, 6:] == 0).all()
    # each of the k draws is a softmax (sums to 1), so the max over them sums to between 1 and k
    s = z.sum(-1)
    assert (s >= 1 - 1e-5).all() and (s <= k + 1e-5).all()
    assert torch.allclose(l2x_relaxation(logits, 1, tau=1.0, generator=torch.Generator().manual_seed(1)).sum(-1),
                          torch.ones(4))
    z.sum().backward()
    assert logits.grad is not None and logits.grad[1, 6:].eq(0).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tau"):
        l2x_relaxation(logits, 2, tau=0.0)


@pytest.mark.parametrize("method", list(METHODS))
def test_tabular_unit_runs_and_reports_its_ideal(method):
    out = train_tabular("orange_skin", method, 0, n_train=300, n_test=50, epochs=1)
    assert out["ideal"] == 2.5 and 2.5 <= out["median_rank"] <= 8.5


def test_simple_finds_the_orange_skin_features():
    out = train_tabular("orange_skin", "simple", 0, n_train=2000, n_test=200, epochs=3)
    assert out["median_rank"] < 3.0  # ideal 2.5; a selector blind to the features gives 5.5 on average


def _write_fixture(path):
    splits = fixture_splits(n_train=80, n_val=10, n_test=30)
    beer.write_original_format(splits, path)
    words, vec = fixture_vocabulary()
    with gzip.open(path / "vectors.txt.gz", "wt") as fh:
        fh.writelines(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n" for w, v in zip(words, vec, strict=True))


def test_command_writes_every_output_and_resumes(tmp_path):
    data = tmp_path / "beer"
    data.mkdir()
    _write_fixture(data)
    opts = {"data_dir": str(data), "n_train": 40, "epochs": 1, "tabular_rows": 100, "k": 7}
    first = experiments.run("l2x", tmp_path / "out", mode="quick", options=opts, show_progress=False)
    out = tmp_path / "out" / "l2x"
    for name in ("results.json", "report.md", "selections.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["provenance"]["units_computed"] == len(METHODS) + 1 + 4 * len(METHODS)
    table = res["table"]["aspect 1 (aroma), k = 7"]["methods"]
    assert set(table) == {*METHODS, "random"}  # no oracle row without training rationales
    report = (out / "report.md").read_text()
    assert "BeerAdvocate" in report.splitlines()[0] and "median rank" in report and "MSE × 100" in report
    # resumes: a second run computes nothing and gives the same numbers
    again = experiments.run("l2x", tmp_path / "out", mode="quick", options=opts, show_progress=False)
    assert again["provenance"]["units_computed"] == 0 and again["table"] == first["table"]
    # --report-only with more seeds: nothing computed, the missing units listed, partial results marked
    part = experiments.run("l2x", tmp_path / "out", mode="quick", options={**opts, "seeds": 2, "report_only": True},
                           show_progress=False)
    assert part["provenance"]["units_computed"] == 0 and not part["complete"]
    assert "rationale-a1-k7-simple-s1" in part["missing_units"]
    assert "Partial results" in (out / "report.md").read_text()


@pytest.mark.parametrize("opts,match", [({"aspect": 5}, "--aspect"), ({"k": 0}, "--k"),
                                        ({"methods": ["nope"]}, "--methods"), ({"seeds": 0}, "--seeds"),
                                        ({"data_dir": "/nonexistent/beer"}, "data_dir")])
def test_bad_options_are_rejected(tmp_path, opts, match):
    with pytest.raises(ValueError, match=match):
        experiments.run("l2x", tmp_path, mode="quick", options={"skip_tabular": True, **opts}, show_progress=False)
