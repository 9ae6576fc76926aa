"""Processes the tests and benchmarks start: waiting, running, stopping them by pid, and
measuring them from /proc."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

DEFAULT_COMMAND_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CommandError(RuntimeError):
    """A command exited with a non-zero status; the message carries its output."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.argv = list(argv)
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        super().__init__(
            f"command failed with status {result.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | bool | None],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns a truthy value, which is returned; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; raise `CommandError` on failure."""
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process, timeout=2.0)
        stdout, stderr = process.communicate()
        raise CommandError(
            argv,
            subprocess.CompletedProcess(
                argv, -1, stdout, f"{stderr}\n[timed out after {timeout} s]"
            ),
        ) from None
    result = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise CommandError(argv, result)
    return result


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM a process we started, then SIGKILL it after `timeout`; return its status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10.0)
    return process.returncode


def descendant_pids(pid: int) -> list[int]:
    """Pids of all live descendants of `pid` (children first, depth first)."""
    found: list[int] = []
    try:
        task_dirs = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in task_dirs:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for child in (task / "children").read_text().split():
                found.append(int(child))
                found.extend(descendant_pids(int(child)))
    return found


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (tells a pid's reuse apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the parenthesised command name; starttime is field 22 of the line.
    return int(stat.rsplit(")", 1)[1].split()[19])


def kill_if_same_process(pid: int, start_time: int | None) -> None:
    """SIGKILL `pid` unless it exited meanwhile (and its pid went to another process)."""
    if start_time is not None and process_start_time(pid) == start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)



def _stat_ticks(pid: int) -> list[int]:
    """utime, stime, cutime, cstime of /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return [int(field) for field in fields[11:15]]


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), not its children's."""
    utime, stime, _, _ = _stat_ticks(pid)
    return (utime + stime) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included, plus that of its
    living child processes (pyrelayd's `--workers`) and of the children it has reaped."""
    total = sum(_stat_ticks(pid)) / CLOCK_TICKS
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def child_pids(pid: int) -> list[int]:
    """The living children of a process (all its threads')."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return children


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM, ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def open_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pin_to(cpus: frozenset[int] | None) -> None:
    """Run this process on `cpus` only (None or empty: leave it)."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def raise_nofile(limit: int) -> int:
    """Raise this process's soft open-file limit to `limit`, or to the hard limit when the
    hard limit cannot be raised (no CAP_SYS_RESOURCE); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= limit:
        return soft
    if hard != resource.RLIM_INFINITY and hard < limit:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            limit = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return limit


def set_nofile(limit: int) -> None:
    """Make this process's soft open-file limit exactly `limit` (raised first if needed)."""
    raise_nofile(limit)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft > limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
