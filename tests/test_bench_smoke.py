"""Every benchmark of bench/ runs, at a tiny size, and writes its table (never a timing check).

`python bench/run.py --smoke` runs the seven benchmarks against both relays in a few seconds;
this test checks that it succeeds and that each benchmark produced a table with a row for
each relay and a table of ratios; then that `--only X` works for each benchmark, chart
included (when matplotlib is installed). Benchmarks are not tests: no figure is asserted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyrelayd_testkit.lttng import host_has_lttng

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("ingest", "e2e", "many", "live", "idle", "patterns", "metrics", "scaling")
SECTIONS = ("1. Ingest throughput", "2. End to end with real LTTng", "3. Many producers",
            "4. Live serving", "5. Idle scale", "6. Producer patterns", "7. Metrics cost",
            "8. Scaling over cores")

pytestmark = [
    pytest.mark.lttng,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("lttng-relayd") is None,
                       reason="the C lttng-relayd is not installed"),
]


def sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^## ", markdown, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def test_every_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--smoke", "--no-chart",
         "--output", str(output), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    found = sections(output.read_text())
    assert list(found) == list(SECTIONS)
    e2e_unavailable = host_has_lttng()
    for title, text in found.items():
        if title.startswith("2.") and e2e_unavailable:
            assert "Not run:" in text
            continue
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        assert any("| lttng-relayd |" in row for row in rows), f"{title}: no C relay row"
        assert any("| pyrelayd |" in row for row in rows), f"{title}: no pyrelayd row"
        assert any("py/C" in row for row in rows), f"{title}: no ratio table"
        assert "| **no** |" not in text, f"{title}: output not as expected:\n{text}"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_runs_alone_and_draws_its_chart(tmp_path: Path, name: str) -> None:
    output = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--smoke", "--only", name,
         "--output", str(output), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    [title] = sections(output.read_text())
    assert title == SECTIONS[BENCHMARKS.index(name)]
    assert output.with_suffix(".png").exists() or "no chart: matplotlib" in result.stderr
