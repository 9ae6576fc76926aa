"""Result tables: Markdown for docs/benchmarks.md and stdout, ratios, machine description."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

MIB = 1 << 20
GIB = 1 << 30
T = TypeVar("T")


def median_by(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The median item by `key` (the lower middle one of an even count)."""
    ordered = sorted(items, key=key)
    return ordered[(len(ordered) - 1) // 2]


@dataclasses.dataclass
class Table:
    columns: Sequence[str]
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    caption: str = ""

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def markdown(self) -> str:
        lines = []
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:"
                                    for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclasses.dataclass
class Section:
    """One benchmark's results: what it measured, its tables, and remarks about this run."""

    title: str
    description: str
    tables: list[Table] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", self.description.strip(), ""]
        if self.skipped:
            parts += [f"*Not run: {self.skipped}*", ""]
        for table in self.tables:
            parts += [table.markdown(), ""]
        parts += [f"* {note}" for note in self.notes]
        return "\n".join(parts).rstrip() + "\n"


def number(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float]) -> str:
    """Every run's figure, in run order (shows how noisy a median is)."""
    return ", ".join(f"{value:.0f}" for value in values) if values else "n/a"


def ratio(py: float | None, c: float | None, digits: int = 2) -> str:
    """pyrelayd / C, as printed in every table."""
    if py is None or c is None or c == 0 or math.isnan(py) or math.isnan(c):
        return "n/a"
    return f"{py / c:.{digits}f}"


def size_label(size: int) -> str:
    if size >= GIB and size % GIB == 0:
        return f"{size // GIB} GiB"
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_description() -> list[str]:
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return [
        f"date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"`nproc`: {len(os.sched_getaffinity(0))}; CPU: {cpu_model()}; "
        f"memory: {memory_kib / (1 << 20):.1f} GiB",
        f"kernel: {platform.system()} {platform.release()}; Python {platform.python_version()}",
    ]
