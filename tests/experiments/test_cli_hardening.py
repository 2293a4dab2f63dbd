"""The command line under misuse: numeric options validated by argparse, OS errors and Ctrl-C
as one line, ``--seed`` honoured, cached units keyed by everything that changes them, umask-respecting files."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest

from ksubset import cli, experiments
from ksubset.experiments import bias_variance as bv
from ksubset.experiments import common
from ksubset.experiments.sparse_regression import study as sr

TINY_BV = {"num_estimates": 40, "seeds": [1234], "sweep_estimates": 20, "sweep_seeds": 1,
           "sweep_enum": [(6, 3)], "sweep_closed": [], "sweep_budget": 2}


@pytest.fixture
def no_run(monkeypatch):
    """Replace the experiments by a recorder: parsing is what is tested."""
    calls = []
    monkeypatch.setattr(experiments, "run", lambda *a, **kw: calls.append((a, kw)) or {})
    return calls


@pytest.mark.parametrize("argv", [
    ["bias-variance", "--num-estimates", "0"],
    ["bias-variance", "--num-estimates", "-5"],
    ["bias-variance", "--num-estimates", "many"],
    ["bias-variance", "--seed", "-1"],
    ["sparse-regression", "--seeds", "0"],
    ["sparse-regression", "--grid-seeds", "-2"],
    ["sparse-regression", "--steps", "0"],
    ["sparse-regression", "--lr", "0"],
    ["sparse-regression", "--lr", "nan"],
    ["sparse-regression", "--batch", "0"],
    ["sparse-regression", "--noise", "-1"],
    ["sparse-regression", "--lowpass", "inf"],
    ["sparse-regression", "--distractors", "300"],
    ["sparse-regression", "--large-steps", "-1"],
    ["sparse-regression", "--ks-n", "255"],
    ["sparse-regression", "--ks-tmax", "0.3"],
])
def test_bad_numeric_options_are_argparse_errors_with_exit_2(argv, no_run, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[1]}" in err and "Traceback" not in err
    assert not no_run


def test_every_numeric_option_of_every_experiment_has_a_validating_type():
    plain = []
    for name in experiments.names():
        parser = argparse.ArgumentParser()
        if experiments.get(name).add_arguments is not None:
            experiments.get(name).add_arguments(parser)
        plain += [f"{name} {a.option_strings[0]}" for a in parser._actions if a.type in (int, float)]
    assert not plain, f"use common.int_arg / common.float_arg for: {plain}"


def test_out_pointing_at_a_file_is_one_line_exit_1(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    assert cli.main(["reproduce", "bias-variance", "--out", str(target), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ksubset reproduce: error:") and str(target) in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_out_folder_is_one_line_exit_1(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli.main(["reproduce", "bias-variance", "--out", str(ro), "--no-progress"]) == 1
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err


def test_permission_error_while_writing_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    def denied(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(common, "atomic_write_bytes", denied)
    monkeypatch.setattr(bv, "QUICK", TINY_BV)
    assert cli.main(["reproduce", "bias-variance", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "Traceback" not in err


def test_ctrl_c_prints_the_resume_hint_and_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "run", interrupted)
    assert cli.main(["reproduce", "bias-variance", "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rerun the same command to resume" in err


def _bv(tmp_path, monkeypatch, *extra):
    monkeypatch.setattr(bv, "QUICK", TINY_BV)
    monkeypatch.setattr(bv, "_figures", lambda *args: [])  # matplotlib is the slow part, and not tested here
    assert cli.main(["reproduce", "bias-variance", "--out", str(tmp_path), "--no-progress", *extra]) == 0
    return json.loads((tmp_path / "bias-variance" / "results.json").read_text())


def test_bias_variance_seed_changes_the_estimates_and_is_reproducible(tmp_path, monkeypatch):
    a = _bv(tmp_path / "a", monkeypatch, "--seed", "1")
    b = _bv(tmp_path / "b", monkeypatch, "--seed", "2")
    c = _bv(tmp_path / "c", monkeypatch, "--seed", "1")
    assert a["e1"]["SIMPLE"] != b["e1"]["SIMPLE"]  # before: identical for every --seed
    assert a["e1"] == c["e1"]
    assert a["provenance"]["seed"] == 1


def test_bias_variance_units_are_keyed_by_the_estimators_hyperparameters(tmp_path, monkeypatch):
    first = _bv(tmp_path, monkeypatch)
    monkeypatch.setattr(bv, "LAM", 5.0)  # the paper's lambda for I-MLE, SIMPLE-F and SIMPLE-B
    again = _bv(tmp_path, monkeypatch)
    # 3 estimators in E1 (one seed), and the same 3 in the sweep's one problem, must be recomputed
    assert again["provenance"]["units_computed"] == 3 + 3  # before: 0 (stale results reused)
    assert again["e1"]["I-MLE"] != first["e1"]["I-MLE"]
    assert again["e1"]["SIMPLE"] == first["e1"]["SIMPLE"]


def test_sparse_regression_units_are_keyed_by_every_hyperparameter(monkeypatch):
    seen = {}

    class Recorder:
        def unit(self, key, config, compute):
            seen.update(config)
            return {}

    sr._learn_unit(Recorder(), None, sr.DataSpec("paper"), "imle", "swap", 0, sr.QUICK, {}, steps=1,
                   trajectory=False)
    from ksubset import estimators

    assert seen["hp"] == {**estimators.hyperparameters("imle"), **sr.METHODS["imle"].hp}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        common.atomic_write_text(tmp_path / "x.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o666 & ~umask  # before: always 0o600


def test_bench_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--threads", "0"])
    assert exc.value.code == 2 and "argument --threads" in capsys.readouterr().err
