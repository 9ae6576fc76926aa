"""The relay daemons under benchmark, started by the shared launcher
(`pyrelayd_testkit.relays.start_relay`) with the benchmarks' placement.

Both relays get the same command line (`-C -D -L -o` and any extra options), the same CPU
affinity and the same open-file limit. CPU time is user + system time of every thread of the
process (`/proc/PID/stat`), memory comes from `/proc/PID/status`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from pathlib import Path

from pyrelayd_testkit.processes import cpu_seconds, pin_to, raise_nofile
from pyrelayd_testkit.relays import RELAY_KINDS, RELAY_NAMES, Relay, RelayKind, relay_available
from pyrelayd_testkit.relays import start_relay as start_any_relay

__all__ = [
    "DEFAULT_NOFILE",
    "LOAD_CPUS",
    "RELAY_CPUS",
    "RELAY_KINDS",
    "RELAY_NAMES",
    "Relay",
    "RelayKind",
    "cpu_seconds",
    "pin_to",
    "raise_nofile",
    "relay_available",
    "relay_open_file_limit",
    "start_relay",
]

# The relay gets CPU 0 to itself; producers and viewers run on the other CPUs.
RELAY_CPUS = frozenset({0})
LOAD_CPUS = frozenset(range(1, os.cpu_count() or 1)) or RELAY_CPUS
DEFAULT_NOFILE = 65536


def relay_open_file_limit() -> int:
    """The soft RLIMIT_NOFILE relays get: DEFAULT_NOFILE, or the hard limit if it is lower
    and this process may not raise it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= DEFAULT_NOFILE:
        return max(soft, DEFAULT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, DEFAULT_NOFILE))
    except (ValueError, OSError):
        return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return DEFAULT_NOFILE


def start_relay(
    kind: RelayKind,
    output_dir: Path,
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    cpus: frozenset[int] | None = RELAY_CPUS,
    nofile: int = DEFAULT_NOFILE,
    timeout: float = 20.0,
) -> Relay:
    """Start a relay writing under `output_dir`, on `cpus` with `nofile` open files; returns
    once its three ports listen."""
    relay = start_any_relay(kind, workdir, extra_args, output_dir=output_dir, timeout=timeout,
                            cpus=cpus, nofile=nofile, log_name=f"{kind}-relayd.log")
    try:
        relay.wait_live_port(timeout)
    except BaseException:
        relay.stop()
        raise
    return relay
