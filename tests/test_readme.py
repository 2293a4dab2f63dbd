"""The README's quick start runs and does what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_and_learns_the_target():
    text = README.read_text()
    block = re.search(r"<!-- quick-start -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its quick-start block"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), "README quick-start", "exec"), {})
    printed = out.getvalue()
    assert "tensor([1., 1., 1., 1., 1., 0." in printed, printed


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "ksubset reproduce" in text
    assert "<!-- test-command" in text and "pytest" in text
