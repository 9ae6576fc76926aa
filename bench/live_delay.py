"""End-to-end live delay: event emitted by a traced app → printed by `babeltrace2 -i lttng-live`.

For each relay (lttng-relayd and pyrelayd, same run), a live session (`--live=100000` by
default) is followed by babeltrace2 (line-buffered through `stdbuf`) while an application
emits one event every few milliseconds. Each printed line carries the event's time (wall
clock, `--clock-seconds`); the delay is the time the line was read minus that time.

    python bench/live_delay.py                 # 200 events, 20 ms apart
    python bench/live_delay.py --smoke
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pyrelayd_testkit import lttng, processes, relays  # noqa: E402

TIMESTAMP = re.compile(r"^\[(\d+\.\d+)\]")


def follow(relay: relays.Relay, session: str, arrivals: list[tuple[float, float]],
           ready: threading.Event) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        ["stdbuf", "-oL", "babeltrace2", "--clock-seconds", "-i", "lttng-live",
         relay.live_url(session)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.time()
            match = TIMESTAMP.match(line)
            if match and "pyrelayd_test:event" in line:
                arrivals.append((float(match.group(1)), now))
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    return process


def measure(kind: relays.RelayKind, args: argparse.Namespace,
            sessiond: lttng.SessionDaemon, apps: lttng.TracedApps,
            workdir: Path) -> list[float]:
    relay = relays.start_relay(kind, workdir / kind)
    name = f"delay-{kind}"
    arrivals: list[tuple[float, float]] = []
    done = threading.Event()
    viewer = None
    try:
        session = lttng.Session.create(sessiond, name, relay, live_timer_us=args.live_timer)
        session.enable_events()
        session.start()
        relay.wait_live_port()
        viewer = follow(relay, name, arrivals, done)
        processes.wait_until(
            lambda: any(s.clients for s in lttng.list_live_sessions(relay.live_port)),
            timeout=20, what="babeltrace2 to attach")
        apps.run_c_app(args.events, delay_us=args.interval_ms * 1000, timeout=600)
        processes.wait_until(lambda: len(arrivals) >= args.events, timeout=30,
                             what="every event to be printed")
        session.destroy()
        viewer.wait(30)
    finally:
        if viewer is not None and viewer.poll() is None:
            viewer.kill()
            viewer.wait()
        relay.stop()
    return [(arrived - emitted) * 1000 for emitted, arrived in arrivals]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--interval-ms", type=int, default=20)
    parser.add_argument("--live-timer", type=int, default=100_000, help="µs")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.events = 20
    if shutil.which("stdbuf") is None:
        print("stdbuf (coreutils) is needed", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="pyrelayd-delay-"))
    sessiond = lttng.SessionDaemon.start(workdir / "sessiond")
    rows = []
    try:
        apps = lttng.TracedApps(sessiond, lttng.build_c_app(workdir / "app"))
        for kind in ("c", "py"):
            delays = measure(kind, args, sessiond, apps, workdir)
            rows.append((kind, len(delays), statistics.median(delays), percentile(delays, 0.9),
                         percentile(delays, 0.99), max(delays)))
    finally:
        sessiond.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"live timer {args.live_timer} µs, one event every {args.interval_ms} ms\n")
    print("| relay | events | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, count, p50, p90, p99, worst in rows:
        print(f"| {kind} | {count} | {p50:.1f} | {p90:.1f} | {p99:.1f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
