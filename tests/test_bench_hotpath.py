"""`bench/hotpath.py` replays each producer pattern in process, at a tiny size (no timing check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("pattern", ["consumerd", "pipelined", "batch", "sessions"])
def test_each_pattern_replays(pattern: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "hotpath.py"), pattern, "--packets", "300",
         "--sessions", "3", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "CPU per" in result.stdout
    assert list(tmp_path.iterdir()) == []  # its files are removed
