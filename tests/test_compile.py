"""torch.compile (inductor, CPU) in a fresh process: fullgraph core functions and KSubsetLayer models.

One subprocess runs every check (inductor's start-up dominates; see tests/compile_check.py for what is
compared and how randomness is kept identical).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ksubset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results() -> list[dict]:
    script = Path(__file__).with_name("compile_check.py")
    env = dict(os.environ)
    src = str(Path(ksubset.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=3000, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _checks(results, prefix):
    rows = [r for r in results if r.get("check", "").startswith(prefix)]
    assert rows, f"no {prefix} checks ran"
    return rows


@pytest.mark.parametrize("name", ["marginals", "log_partition", "sample", "simple"])
def test_fullgraph_equals_eager(results, name):
    rows = _checks(results, f"fullgraph:{name}")
    assert sorted(r["batch"] for r in rows) == [3, 5, 8]
    assert all(r["ok"] for r in rows), rows


def test_validation_raises_in_compiled_code(results):
    rows = _checks(results, "fullgraph:validation")
    assert all(r["ok"] for r in rows), rows


def test_every_pathwise_estimator_compiles_in_a_layer(results):
    rows = _checks(results, "layer:")
    names = {r["check"].split(":", 1)[1] for r in rows}
    expected = {n for n in ksubset.estimators.available() if ksubset.estimators.get(n).pathwise}
    assert names == expected
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
