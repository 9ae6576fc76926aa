"""End-to-end benchmark: real lttng-sessiond/consumerd streaming to pyrelayd and to lttng-relayd.

For each relay (the C lttng-relayd and pyrelayd, in the same run, same inputs) and each mode
(non-live, live), one traced application emits N events into a blocking channel (so nothing
is discarded unless the relay really loses data); we measure the wall time from the
application's start until `lttng stop` returns (every byte acknowledged by the relay), the
relay's CPU seconds over that interval, the size written, and the discarded events.

    python bench/e2e_lttng.py --events 5000000 --payload 100      # about 750 MB per run
    python bench/e2e_lttng.py --events 20000 --smoke               # seconds, for CI

Needs root and the Debian LTTng packages (scripts/install --test).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.integration import lttng_env  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def tree_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@dataclasses.dataclass
class Result:
    relay: str
    mode: str
    events: int
    wall_s: float
    relay_cpu_s: float
    bytes_written: int
    discarded: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / self.wall_s if self.wall_s else 0.0


def discarded_events(sessiond: lttng_env.SessionDaemon, session: str) -> int:
    listing = sessiond.lttng("list", session).stdout
    return sum(int(n) for n in re.findall(r"[Dd]iscarded events:\s*(\d+)", listing))


def run_one(kind: lttng_env.RelayKind, live: bool, args: argparse.Namespace,
            sessiond: lttng_env.SessionDaemon, apps: lttng_env.TracedApps,
            workdir: Path) -> Result:
    relay = lttng_env.start_relay(kind, workdir / f"{kind}-{'live' if live else 'plain'}")
    name = f"bench-{kind}-{'live' if live else 'plain'}"
    try:
        session = lttng_env.Session.create(sessiond, name, relay,
                                           live_timer_us=args.live_timer if live else None)
        session.lttng("enable-channel", f"--session={name}", "--userspace",
                      f"--subbuf-size={args.subbuf_size}", f"--num-subbuf={args.num_subbuf}",
                      "--blocking-timeout=inf", "channel0")
        session.channel = "channel0"
        session.enable_events()
        session.start()
        before = cpu_seconds(relay.pid)
        start = time.monotonic()
        process = sessiond.popen(
            apps.c_app_argv(args.events, payload_bytes=args.payload),
            env={**lttng_env.APP_ENVIRONMENT, "LTTNG_UST_ALLOW_BLOCKING": "1"},
        )
        lttng_env.TracedApps.finish(process, timeout=3600)
        session.stop()
        wall = time.monotonic() - start
        cpu = cpu_seconds(relay.pid) - before
        discarded = discarded_events(sessiond, name)
        session.destroy()
        written = tree_size(relay.output_dir)
        return Result(kind, "live" if live else "non-live", args.events, wall, cpu, written,
                      discarded)
    finally:
        relay.stop()
        if not args.keep:
            shutil.rmtree(relay.output_dir, ignore_errors=True)


def table(results: list[Result]) -> str:
    lines = [
        "| mode | relay | events | wall s | relay CPU s | MB written | MB/s | discarded |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.relay} | {r.events} | {r.wall_s:.2f} | {r.relay_cpu_s:.2f} | "
            f"{r.bytes_written / 1e6:.1f} | {r.mb_per_s:.1f} | {r.discarded} |"
        )
    by_mode: dict[str, dict[str, Result]] = {}
    for r in results:
        by_mode.setdefault(r.mode, {})[r.relay] = r
    lines.append("")
    lines.append("| mode | wall time py/C | relay CPU py/C |")
    lines.append("|---|---:|---:|")
    for mode, pair in by_mode.items():
        if "c" in pair and "py" in pair:
            c, py = pair["c"], pair["py"]
            cpu_ratio = py.relay_cpu_s / c.relay_cpu_s if c.relay_cpu_s else float("nan")
            lines.append(f"| {mode} | {py.wall_s / c.wall_s:.2f} | {cpu_ratio:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--payload", type=int, default=100, help="payload string bytes")
    parser.add_argument("--subbuf-size", default="1M")
    parser.add_argument("--num-subbuf", type=int, default=8)
    parser.add_argument("--live-timer", type=int, default=1_000_000, help="µs")
    parser.add_argument("--modes", default="non-live,live")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where relays write (default: a temporary directory on disk)")
    parser.add_argument("--keep", action="store_true", help="keep the written traces")
    parser.add_argument("--smoke", action="store_true", help="tiny run, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.events = min(args.events, 20_000)
    workdir = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=args.workdir or "/var/tmp"))
    sessiond = lttng_env.SessionDaemon.start(workdir / "sessiond")
    results: list[Result] = []
    try:
        apps = lttng_env.TracedApps(sessiond, lttng_env.build_c_app(workdir / "app"))
        for mode in args.modes.split(","):
            for kind in ("c", "py"):
                result = run_one(kind, mode == "live", args, sessiond, apps, workdir)
                results.append(result)
                print(f"{mode:8} {kind:2}: {result.wall_s:7.2f} s wall, "
                      f"{result.relay_cpu_s:7.2f} s relay CPU, "
                      f"{result.bytes_written / 1e6:8.1f} MB, {result.discarded} discarded",
                      flush=True)
    finally:
        sessiond.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
