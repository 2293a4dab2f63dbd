"""The benchmark suite (``ksubset.benchmarks``): the lean relaxation, the timing machinery, the accuracy
column, the targets, and one tiny end-to-end run of ``ksubset bench``. Timings themselves are not asserted
(the machine is shared); what is asserted is what the tables are computed from."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from ksubset import cli
from ksubset.benchmarks import applications, cases, engines, report, runner, suite

from oracle import enumerate_row

# --------------------------------------------------------------------------------------------------------
# the lean relaxation


def test_lean_relaxation_with_k_1_is_the_gumbel_softmax_of_the_same_noise():
    x = torch.randn(4, 7, dtype=torch.float64)
    out = cases.lean_relaxed_topk(x, 1, generator=torch.Generator().manual_seed(3), t=0.7)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.softmax((x - torch.log(-torch.log(u))) / 0.7, dim=-1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_lean_relaxation_k_steps_follow_the_soft_mask_recursion():
    x = torch.randn(3, 6, dtype=torch.float64)
    k = 3
    out = cases.lean_relaxed_topk(x, k, generator=torch.Generator().manual_seed(0))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keys = (x - torch.log(-torch.log(u))).numpy()
    total = np.zeros_like(keys)
    w = np.exp(keys - keys.max(-1, keepdims=True))
    for _ in range(k):  # a^j = w / sum w, then w <- w (1 - a^j): the same recursion in probability space
        a = w / w.sum(-1, keepdims=True)
        total += a
        w = w * (1 - a)
    np.testing.assert_allclose(out.numpy(), total, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.sum(-1).numpy(), k, rtol=1e-10)


def test_lean_straight_through_is_hard_topk_of_the_keys_forward_and_the_relaxation_backward():
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 9, dtype=torch.float64)
    z = cases.lean_st_relaxed_topk(x, 4, generator=torch.Generator().manual_seed(1))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keys = x.detach() - torch.log(-torch.log(u))
    hard = torch.zeros_like(keys).scatter_(-1, keys.topk(4, dim=-1).indices, 1.0)
    torch.testing.assert_close(z.detach(), hard, rtol=0, atol=1e-12)  # hard + soft - soft: rounding only
    (grad_st,) = torch.autograd.grad(z, x, g)
    soft = cases.lean_relaxed_topk(x, 4, generator=torch.Generator().manual_seed(1))
    (grad_soft,) = torch.autograd.grad(soft, x, g)
    torch.testing.assert_close(grad_st, grad_soft)


# --------------------------------------------------------------------------------------------------------
# timing machinery


def test_interleaved_runs_the_methods_round_robin_after_their_warm_ups():
    order = []
    steps = {m: (lambda m=m: order.append(m)) for m in "abc"}
    times = runner.interleaved(steps, "cpu", min_runs=dict.fromkeys("abc", 5), max_runs=5, budget_s=0.0)
    assert {m: len(ts) for m, ts in times.items()} == dict.fromkeys("abc", 5)
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]  # two warm-up runs each
    assert order[6:] == ["a", "b", "c"] * 5  # then one run of each per round


def test_interleaved_caps_every_method_when_one_is_slow():
    steps = {"fast": lambda: None, "slow": lambda: None}
    times = runner.interleaved(steps, "cpu", min_runs={"fast": 5, "slow": 3}, max_runs=40, budget_s=10.0)
    assert len(times["slow"]) == 5 and len(times["fast"]) == 5


def test_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with runner.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with runner.threads(None):
        assert torch.get_num_threads() == before


def test_a_case_in_a_child_process_reports_time_memory_and_accuracy():
    res = runner.in_child({"method": "auto", "B": 3, "n": 12, "k": 4, "runs": 2, "threads": 1,
                           "check_engine": "reference"}, timeout_s=300)
    assert "error" not in res, res
    assert len(res["times_s"]) == 2 and res["median_s"] > 0
    assert res["peak_rss_mb"] >= res["rss_before_mb"] > 10
    assert res["max_dmu"] < 1e-6 and res["check_engine"] == "reference (float64)"


def test_a_failing_child_is_reported_not_raised():
    res = runner.in_child({"method": "no_such_method", "B": 1, "n": 3, "k": 1, "runs": 1}, timeout_s=300)
    assert "error" in res and "no_such_method" in res["error"]


# --------------------------------------------------------------------------------------------------------
# accuracy column


@pytest.mark.parametrize("engine", [None, "tree", "reference"])
def test_the_accuracy_column_measures_against_an_enumerated_float64_reference(engine):
    x, _ = cases.inputs(4, 9, "cpu", seed=2)
    k = 4
    mu_enum = torch.tensor(np.stack([enumerate_row(row, k).marginals for row in x.detach().double().numpy()]))
    mu64 = cases.exact64("marginals", x, k, "reference")
    torch.testing.assert_close(mu64, mu_enum, rtol=0, atol=1e-12)
    err = cases.max_abs_error("marginals", x, k, mu_enum, engine=engine)
    assert 1e-10 < err < 1e-6  # float32 against float64: small, but above float64 rounding
    assert cases.max_abs_error("marginals", x, k, mu_enum + 0.01, engine=engine) == pytest.approx(0.01, abs=1e-6)


def test_the_kl_uniform_accuracy_against_enumeration():
    x, _ = cases.inputs(3, 8, "cpu", seed=5)
    k = 3
    kl = [math.log(math.comb(8, k)) - enumerate_row(row, k).entropy for row in x.detach().double().numpy()]
    torch.testing.assert_close(cases.exact64("kl_uniform", x, k, "reference"), torch.tensor(kl, dtype=torch.float64),
                               rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# targets and tables


def _app(**kw):
    return cases.Application("x", "src", 2, 5, 2, **kw)


@pytest.mark.parametrize(("app", "row", "met"), [
    (_app(max_ratio=0.5), {"ratio": 0.5}, True),
    (_app(max_ratio=0.5), {"ratio": 0.51}, False),
    (_app(max_ratio=0.5, min_reference_speedup=100), {"ratio": 0.4, "reference_over_simple": 99.0}, False),
    (_app(max_ratio=0.5, min_reference_speedup=100), {"ratio": 0.4, "reference_over_simple": 100.0}, True),
    (_app(kind="kl_uniform", max_ms=1.5), {"simple_s": 0.0015}, True),
    (_app(kind="kl_uniform", max_ms=1.5), {"simple_s": 0.0016}, False),
    (_app(kind="scale", max_ms=2000, max_mb=512), {"simple_s": 1.9, "peak_rss_mb": 513.0}, False),
    (_app(kind="scale", max_ms=2000, max_mb=512), {"simple_s": 1.9, "peak_rss_mb": 500.0}, True),
    (_app(kind="scale", max_ms=2000, max_mb=512), {"error": "timed out"}, False),  # no value: not met
    (_app(kind="compiled"), {"ratio": 9.0}, None),
])
def test_targets_are_judged_on_every_condition(app, row, met):
    applications._judge(app, row)
    assert row["met"] is met


def test_the_application_rows_at_tiny_shapes(monkeypatch):
    tiny = [dataclasses.replace(a, B=6, n=9, k=min(a.k, 3)) for a in cases.APPLICATIONS
            if a.kind in ("simple", "kl_uniform")][:3] + [dataclasses.replace(cases.APPLICATIONS[3], B=4, n=10, k=3)]
    tiny.append(dataclasses.replace(cases.APPLICATIONS[6], B=6, n=9, k=3))
    lines = []
    rows = applications.application_rows("cpu", True, threads=2, compile_models=False, log=lines.append, apps=tiny)
    assert [(r["name"], r["threads"]) for r in rows] == [(a.name, t) for a in tiny for t in (1, 2)]
    for r in rows:
        assert r["simple_s"] > 0 and r["max_err"] < 1e-5 and r["met"] in (True, False)
        if r["kind"] == "simple":
            assert r["ratio"] == pytest.approx(r["simple_s"] / r["baseline_s"])
            assert min(len(ts) for ts in r["times_s"].values()) >= 5
    assert "reference_over_simple" in rows[-3] and "reference_over_simple" not in rows[0]
    table = report.application_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and all(line.count("|") == 10 for line in table[2:])
    assert len(lines) == len(rows)


def test_full_only_rows_are_left_out_of_quick_runs():
    scale = dataclasses.replace(cases.APPLICATIONS[7], n=50, k=5)
    assert scale.full_only
    assert applications.application_rows("cpu", True, threads=1, compile_models=False, log=print, apps=[scale]) == []


def test_thread_counts_are_one_and_all_cores_on_cpu_only():
    assert applications.thread_counts("cpu", 4) == [1, 4]
    assert applications.thread_counts("cpu", 1) == [1]
    assert applications.thread_counts("cuda", 4) == [None]


def test_growth_slope_recovers_the_exponent_of_a_power_law():
    pts = [{"n": n, "median_s": 3e-9 * n**1.5} for n in (10, 100, 1000, 10_000, 100_000)]
    assert engines.slope(pts, "n") == pytest.approx(1.5)


def test_engine_targets_compare_against_their_limits():
    rows = [{"shape": "B128", "method": "auto", "ratio_to_relaxed_topk": 0.4, "ratio_to_relaxed_topk_lean": 0.6}]
    t = {x["target"]: x["met"] for x in report.engine_targets(rows, [], {})}
    assert t == {"B128: simple / relaxed_topk": True, "B128: simple / relaxed_topk_lean": False}


# --------------------------------------------------------------------------------------------------------
# the command


def test_bench_end_to_end_at_tiny_shapes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cases, "SHAPES", [("tiny", 3, 8, 2)])
    monkeypatch.setattr(cases, "APPLICATIONS", [dataclasses.replace(cases.APPLICATIONS[0], B=5, n=6)])
    rc = cli.main(["bench", "--quick", "--no-large", "--no-growth", "--no-compile", "--no-cardinality",
                   "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = json.loads((tmp_path / "bench.json").read_text())
    assert {r["method"] for r in out["main"]} == set(cases.EXACT + cases.BASELINES + cases.LEAN)
    assert [r["threads"] for r in out["applications"]] == [1]
    assert all(r["max_dmu"] < 1e-6 for r in out["main"] if r["method"] in cases.EXACT)
    printed = capsys.readouterr().out
    assert "application table" in printed and "| IPR-MPNN | 5 × 6 × 2 | 1 |" in printed
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "bench.json").stat().st_mode) == 0o666 & ~umask


def test_the_growth_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    pts = [{"n": n, "k": 10, "median_s": 1e-6 * n} for n in (100, 1000, 10_000)]
    growth = {"k=10": {"auto": {"points": pts, "slope": 1.0}},
              "n=1e4": {"auto": {"points": [{"n": 10_000, "k": k, "median_s": 1e-5 * k} for k in (1, 10)],
                                 "slope": 1.0}}}
    meta = {"device_name": "cpu", "torch": torch.__version__, "threads": 1}
    assert report.plot(growth, str(tmp_path / "growth.png"), meta) is None
    assert (tmp_path / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_device(capsys):
    assert suite.main(["--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
