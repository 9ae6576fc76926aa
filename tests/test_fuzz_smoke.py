"""Every fuzz target runs a few thousand inputs from its seed corpus without a finding.

The long runs are `scripts/fuzz` (a million inputs per target by default); this keeps the
targets working and catches what a short run already finds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))

import targets  # noqa: E402

RUNS = 3000


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_fuzz_target_survives_a_short_run(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is a test dependency (pip install -e .[test])")
    result = subprocess.run(
        [sys.executable, str(FUZZ_DIR / "run.py"), target, f"-runs={RUNS}", "-timeout=10",
         "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(tmp_path),
         str(FUZZ_DIR / "corpus" / target)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert f"Done {RUNS} runs" in result.stderr or f"#{RUNS}\tDONE" in result.stderr, (
        result.stderr[-2000:]
    )
    assert not list(tmp_path.glob("crash-*"))
