"""Run every benchmark against lttng-relayd and pyrelayd; write docs/benchmarks.md and a chart.

    python bench/run.py              # the documented sizes (about 20 minutes on 2 CPUs)
    python bench/run.py --full       # the same, with 5 million events end to end
    python bench/run.py --smoke      # seconds: every benchmark at a tiny size (CI)
    python bench/run.py --only ingest,live --output /tmp/b.md
    python bench/run.py --only patterns       # the producer patterns of bench/producers.py

Every figure is measured for both relays in the same run, on the same inputs, and shown with
its pyrelayd / C ratio. Tables are printed as each benchmark completes; the Markdown file is
written at the end, keeping the hand-written block between NOTES_BEGIN and NOTES_END of an
existing file. The relay runs pinned to CPU 0, load generators on the other CPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # as a script: `bench`, `pyrelayd_testkit`, `pyrelayd`
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "src")]

from bench.chart import write_chart  # noqa: E402
from bench.e2e_lttng import FULL_EVENTS, SMOKE_EVENTS, E2EConfig, run_e2e  # noqa: E402
from bench.idle import IdleConfig, IdleResult, run_idle  # noqa: E402
from bench.ingest import IngestConfig, IngestResult, run_ingest  # noqa: E402
from bench.live import LiveConfig, LiveResult, run_live  # noqa: E402
from bench.many import ManyConfig, ManyResult, run_many  # noqa: E402
from bench.metrics_cost import MetricsCostConfig, run_metrics_cost  # noqa: E402
from bench.patterns import PatternResult, PatternsConfig, run_patterns  # noqa: E402
from bench.relays import (  # noqa: E402
    LOAD_CPUS,
    RELAY_CPUS,
    relay_available,
    relay_open_file_limit,
)
from bench.report import GIB, MIB, Section, load_average, machine_description  # noqa: E402
from bench.scaling import ScalingConfig, run_scaling  # noqa: E402

BENCHMARKS = ("ingest", "e2e", "many", "live", "idle", "patterns", "metrics", "scaling")
NOTES_BEGIN = "<!-- NOTES_BEGIN: hand-written, kept by bench/run.py -->"
NOTES_END = "<!-- NOTES_END -->"
COMMAND = "python bench/run.py"


@dataclasses.dataclass(frozen=True)
class Sizes:
    ingest: IngestConfig
    e2e: E2EConfig
    many: ManyConfig
    live: LiveConfig
    idle: IdleConfig
    patterns: PatternsConfig
    metrics: MetricsCostConfig
    scaling: ScalingConfig


def sizes(smoke: bool, full: bool) -> Sizes:
    if smoke:
        return Sizes(
            IngestConfig(4 * MIB, sync=False),
            E2EConfig(SMOKE_EVENTS),
            ManyConfig(5, 2, 2 * MIB),
            LiveConfig(4 * MIB, (1, 2), viewer_timeout_s=30, settle_s=0.05),
            IdleConfig(20, idle_s=0.5, limited_sessions=5, limited_streams=40),
            PatternsConfig(MIB, repeat=1, sessions=4, session_packets_per_stream=2),
            MetricsCostConfig(2 * MIB, repeat=1),
            ScalingConfig(MIB, packet_sizes=(4096,), patterns=("pipelined",), repeat=1),
        )
    return Sizes(
        IngestConfig(GIB, repeat=5),
        E2EConfig(FULL_EVENTS if full else 1_000_000, repeat=5),
        ManyConfig(200, 8, GIB),
        LiveConfig(512 * MIB, repeat=3),
        IdleConfig(1000, idle_s=5.0),
        PatternsConfig(256 * MIB, repeat=5),
        MetricsCostConfig(GIB, repeat=5),
        ScalingConfig(256 * MIB, repeat=3),
    )


@dataclasses.dataclass
class Results:
    sections: list[Section] = dataclasses.field(default_factory=list)
    ingest: list[IngestResult] = dataclasses.field(default_factory=list)
    many: list[ManyResult] = dataclasses.field(default_factory=list)
    live: list[LiveResult] = dataclasses.field(default_factory=list)
    idle: list[IdleResult] = dataclasses.field(default_factory=list)
    patterns: list[PatternResult] = dataclasses.field(default_factory=list)


def run(selected: list[str], plan: Sizes, workdir: Path) -> Results:
    results = Results()
    for name in selected:
        print(f"\n### {name}", flush=True)
        start = time.monotonic()
        if name == "ingest":
            section, results.ingest = run_ingest(plan.ingest, workdir)
        elif name == "e2e":
            section, _ = run_e2e(plan.e2e, workdir)
        elif name == "many":
            section, results.many = run_many(plan.many, workdir)
        elif name == "live":
            section, results.live = run_live(plan.live, workdir)
        elif name == "idle":
            section, results.idle = run_idle(plan.idle, workdir)
        elif name == "patterns":
            section, results.patterns = run_patterns(plan.patterns, workdir)
        elif name == "metrics":
            section, _ = run_metrics_cost(plan.metrics, workdir)
        else:
            section, _ = run_scaling(plan.scaling, workdir)
        section.notes.append(f"Benchmark time: {time.monotonic() - start:.0f} s.")
        results.sections.append(section)
        print()
        print(section.markdown(), flush=True)
    return results


def kept_notes(path: Path) -> str:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ""
    start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(NOTES_END)]


def document(results: Results, args: argparse.Namespace, chart: Path | None,
             load_before: str, elapsed_s: float) -> str:
    options = " --smoke" if args.smoke else " --full" if args.full else ""
    if args.only != list(BENCHMARKS):
        options += f" --only {','.join(args.only)}"
    lines = [
        "# Benchmarks: pyrelayd vs lttng-relayd 2.13",
        "",
        f"Generated by `{COMMAND}{options}` in {elapsed_s / 60:.1f} minutes; every figure is "
        "measured for both relays in the same run, on the same inputs, and each table is "
        "followed by its ratios (pyrelayd / C: above 1 means pyrelayd is higher, i.e. faster "
        "for MB/s, costlier for CPU, memory and times).",
        "",
        "Machine:",
        "",
        *[f"* {line}" for line in machine_description()],
        f"* load average before / after the run: {load_before} / {load_average()} (other "
        "work on the machine, if any, perturbs the figures)",
        "",
        "Method and caveats:",
        "",
        f"* The relay under test runs pinned to CPU {sorted(RELAY_CPUS)}; the load generators "
        f"(synthetic producer, viewers) run pinned to CPU {sorted(LOAD_CPUS)}, the benchmark "
        "driver is not pinned. On this 2-CPU machine the producer and the viewers share one "
        "CPU, so with many viewers part of an ingest slowdown is the producer's share of "
        "CPU, not the relay; relay CPU figures tell the two apart. The end-to-end benchmark "
        "does not pin anything (the traced application and the consumer daemon need CPU "
        "too).",
        "* Both relays are started fresh by the benchmark (`-C -D -L` on free 127.0.0.1 ports, "
        "`-o` in a temporary directory), with the same open-file limit "
        f"({relay_open_file_limit()}), and stopped by pid.",
        "* `disk` output is /var/tmp: with this much RAM the writes land in the page cache "
        "(the benchmark syncs between runs, untimed), so disk and tmpfs differ little.",
        "* Relay CPU is user + system time of all threads from /proc/PID/stat (10 ms ticks).",
        "",
    ]
    notes = kept_notes(args.output)
    if notes:
        lines += [notes, ""]
    if chart is not None:
        lines += [f"![benchmark chart]({chart.name})", ""]
    for section in results.sections:
        lines.append(section.markdown())
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    size.add_argument("--full", action="store_true", help="5 million events end to end")
    parser.add_argument("--only", type=lambda text: text.split(","), default=list(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
                        help="Markdown file to write (default: docs/benchmarks.md)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="scratch directory (relay logs, end-to-end traces)")
    args = parser.parse_args()
    unknown = [name for name in args.only if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    missing = [reason for kind in ("c", "py") if (reason := relay_available(kind))]
    if missing:
        print(f"bench: {'; '.join(missing)}", file=sys.stderr)
        return 2
    start, load_before = time.monotonic(), load_average()
    workdir = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=args.workdir))
    try:
        results = run([name for name in BENCHMARKS if name in args.only],
                      sizes(args.smoke, args.full), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    chart: Path | None = None
    if not args.no_chart:
        chart = args.output.with_suffix(".png")
        why_not = write_chart(chart, results.ingest, results.live, results.many, results.idle)
        if why_not:
            print(f"bench: no chart: {why_not}", file=sys.stderr)
            chart = None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(document(results, args, chart, load_before,
                                    time.monotonic() - start))
    print(f"\nwrote {args.output}" + (f" and {chart}" if chart else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
