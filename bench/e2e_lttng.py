"""Benchmark 2, end to end: real lttng-sessiond/consumerd streaming to pyrelayd and lttng-relayd.

For each relay (the C lttng-relayd and pyrelayd, in the same run, same inputs) and each mode
(non-live, live), one traced application emits N events into a blocking channel (so nothing
is discarded unless the relay really loses data); we measure the wall time from the
application's start until `lttng stop` returns (every byte acknowledged by the relay), the
relay's CPU seconds over that interval, the size written, and the discarded events.

Part of `python bench/run.py`; also runs alone:

    python bench/e2e_lttng.py --events 5000000 --payload 100      # about 750 MB per run
    python bench/e2e_lttng.py --smoke                              # seconds, for CI

Needs root and the Debian LTTng packages (scripts/install --test). The session daemon runs in
a private mount namespace (`pyrelayd_testkit.lttng`); relays are not pinned to a CPU
here, since the application and the consumer daemon need both CPUs too.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `pyrelayd_testkit` importable
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent),
                    str(Path(__file__).resolve().parent.parent / "src")]

from bench.relays import RELAY_KINDS, RELAY_NAMES, cpu_seconds
from bench.report import Section, Table, median_by, number, ratio
from pyrelayd_testkit import lttng, relays

DEFAULT_EVENTS = 1_000_000
FULL_EVENTS = 5_000_000
SMOKE_EVENTS = 20_000


@dataclasses.dataclass(frozen=True)
class E2EConfig:
    events: int = DEFAULT_EVENTS
    payload: int = 100  # bytes of the string payload of each event
    subbuf_size: str = "1M"
    num_subbuf: int = 8
    live_timer_us: int = 1_000_000
    modes: tuple[str, ...] = ("non-live", "live")
    keep: bool = False
    repeat: int = 1  # runs per figure; the median (by wall time) is reported


@dataclasses.dataclass(frozen=True)
class E2EResult:
    relay: str
    mode: str
    events: int
    wall_s: float
    relay_cpu_s: float
    bytes_written: int
    discarded: int
    runs_wall_s: tuple[float, ...] = ()  # every run of which this is the median

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / self.wall_s if self.wall_s else 0.0


def tree_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def discarded_events(sessiond: lttng.SessionDaemon, session: str) -> int:
    listing = sessiond.lttng("list", session).stdout
    return sum(int(n) for n in re.findall(r"[Dd]iscarded events:\s*(\d+)", listing))


def run_one(kind: relays.RelayKind, live: bool, config: E2EConfig,
            sessiond: lttng.SessionDaemon, apps: lttng.TracedApps,
            workdir: Path) -> E2EResult:
    mode = "live" if live else "non-live"
    relay = relays.start_relay(kind, workdir / f"{kind}-{mode}")
    name = f"bench-{kind}-{mode}"
    try:
        session = lttng.Session.create(sessiond, name, relay,
                                           live_timer_us=config.live_timer_us if live else None)
        session.lttng("enable-channel", f"--session={name}", "--userspace",
                      f"--subbuf-size={config.subbuf_size}", f"--num-subbuf={config.num_subbuf}",
                      "--blocking-timeout=inf", "channel0")
        session.channel = "channel0"
        session.enable_events()
        session.start()
        before = cpu_seconds(relay.pid)
        start = time.monotonic()
        process = sessiond.popen(
            apps.c_app_argv(config.events, payload_bytes=config.payload),
            env={**lttng.APP_ENVIRONMENT, "LTTNG_UST_ALLOW_BLOCKING": "1"},
        )
        lttng.TracedApps.finish(process, timeout=3600)
        session.stop()
        wall = time.monotonic() - start
        cpu = cpu_seconds(relay.pid) - before
        discarded = discarded_events(sessiond, name)
        session.destroy()
        written = tree_size(relay.output_dir)
        return E2EResult(kind, mode, config.events, wall, cpu, written, discarded)
    finally:
        relay.stop()
        if not config.keep:
            shutil.rmtree(relay.output_dir, ignore_errors=True)


def run_e2e(config: E2EConfig, workdir: Path) -> tuple[Section, list[E2EResult]]:
    section = Section("2. End to end with real LTTng", _description(config))
    reason = lttng.host_has_lttng()
    if reason is not None:
        section.skipped = reason
        return section, []
    workdir = Path(tempfile.mkdtemp(prefix="e2e-", dir=workdir))
    sessiond = lttng.SessionDaemon.start(workdir / "sessiond")
    results: list[E2EResult] = []
    try:
        apps = lttng.TracedApps(sessiond, lttng.build_c_app(workdir / "app"))
        for mode in config.modes:
            runs: dict[str, list[E2EResult]] = {kind: [] for kind in RELAY_KINDS}
            for attempt in range(config.repeat):
                # Alternate which relay goes first (the page cache, the sessiond's state).
                for kind in RELAY_KINDS if attempt % 2 == 0 else RELAY_KINDS[::-1]:
                    result = run_one(kind, mode == "live", config, sessiond, apps, workdir)
                    runs[kind].append(result)
                    print(f"  e2e {mode:8} {RELAY_NAMES[kind]:12}: {result.wall_s:7.2f} s "
                          f"wall, {result.relay_cpu_s:7.2f} s relay CPU, "
                          f"{result.bytes_written / 1e6:8.1f} MB, {result.discarded} discarded",
                          flush=True)
            for kind in RELAY_KINDS:
                median = median_by(runs[kind], lambda r: r.wall_s)
                results.append(dataclasses.replace(
                    median, runs_wall_s=tuple(r.wall_s for r in runs[kind])))
    finally:
        sessiond.stop()
        if not config.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    section.tables = _tables(results)
    return section, results


def _description(config: E2EConfig) -> str:
    return (
        f"A real `lttng-sessiond` and `lttng-consumerd` (LTTng 2.13) stream one traced "
        f"application's {config.events:,} events ({config.payload}-byte string payload, one "
        f"user-space channel of {config.num_subbuf} x {config.subbuf_size} sub-buffers, "
        "blocking, so a slow relay slows the application instead of losing events) to each "
        "relay, in a non-live and a live session (live timer "
        f"{config.live_timer_us // 1000} ms). Wall time: from the application's start until "
        "`lttng stop` returns (the consumer daemon has every packet acknowledged); relay CPU "
        "over the same interval; MB written: the relay's output tree after `lttng destroy`. "
        "Processes are not pinned: the application and the consumer daemon share both CPUs "
        f"with the relay. Each figure is the median run (by wall time) of {config.repeat}."
    )


def _tables(results: list[E2EResult]) -> list[Table]:
    table = Table(["mode", "relay", "events", "wall s", "wall s of the runs", "relay CPU s",
                   "MB written", "MB/s", "discarded"])
    for r in results:
        table.add(r.mode, RELAY_NAMES[r.relay], f"{r.events:,}", number(r.wall_s, 2),
                  ", ".join(f"{wall:.2f}" for wall in r.runs_wall_s),
                  number(r.relay_cpu_s, 2), number(r.bytes_written / 1e6), number(r.mb_per_s),
                  r.discarded)
    ratios = Table(["mode", "wall time py/C", "relay CPU py/C", "MB/s py/C"])
    by_mode: dict[str, dict[str, E2EResult]] = {}
    for r in results:
        by_mode.setdefault(r.mode, {})[r.relay] = r
    for mode, pair in by_mode.items():
        if "c" in pair and "py" in pair:
            c, py = pair["c"], pair["py"]
            ratios.add(mode, ratio(py.wall_s, c.wall_s), ratio(py.relay_cpu_s, c.relay_cpu_s),
                       ratio(py.mb_per_s, c.mb_per_s))
    return [table, ratios]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--full", action="store_true", help=f"{FULL_EVENTS:,} events")
    parser.add_argument("--smoke", action="store_true", help="tiny run, for CI")
    parser.add_argument("--payload", type=int, default=100, help="payload string bytes")
    parser.add_argument("--subbuf-size", default="1M")
    parser.add_argument("--num-subbuf", type=int, default=8)
    parser.add_argument("--live-timer", type=int, default=1_000_000, help="µs")
    parser.add_argument("--modes", default="non-live,live")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="where relays write (default: a temporary directory on disk)")
    parser.add_argument("--keep", action="store_true", help="keep the written traces")
    args = parser.parse_args()
    events = FULL_EVENTS if args.full else SMOKE_EVENTS if args.smoke else args.events
    config = E2EConfig(events, args.payload, args.subbuf_size, args.num_subbuf, args.live_timer,
                       tuple(args.modes.split(",")), args.keep)
    workdir = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=args.workdir))
    try:
        section, _ = run_e2e(config, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(section.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
