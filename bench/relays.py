"""The relay daemons under benchmark: started on free ports, measured from /proc, stopped by pid.

Both relays get the same command line (`-C -D -L -o` and any extra options), the same CPU
affinity and the same open-file limit. CPU time is user + system time of every thread of the
process (`/proc/PID/stat`), memory comes from `/proc/PID/status`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from tests.integration.lttng_env import free_tcp_ports, listening_tcp_ports, release_tcp_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO_ROOT / "src"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

RelayKind = Literal["c", "py"]
#: The C relay first: it is the reference every ratio divides by.
RELAY_KINDS: tuple[RelayKind, ...] = ("c", "py")
RELAY_NAMES: dict[str, str] = {"c": "lttng-relayd", "py": "pyrelayd"}

# The relay gets CPU 0 to itself; producers and viewers run on the other CPUs.
RELAY_CPUS = frozenset({0})
LOAD_CPUS = frozenset(range(1, os.cpu_count() or 1)) or RELAY_CPUS
DEFAULT_NOFILE = 65536


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM, ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def open_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pin_to(cpus: frozenset[int] | None) -> None:
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


def relay_available(kind: RelayKind) -> str | None:
    """None when the relay can run here, else why not."""
    if kind == "c" and shutil.which("lttng-relayd") is None:
        return "lttng-relayd is not installed"
    return None


@dataclasses.dataclass
class RelayProcess:
    kind: RelayKind
    process: subprocess.Popen[bytes]
    control_port: int
    data_port: int
    live_port: int
    output_dir: Path
    log_path: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def name(self) -> str:
        return RELAY_NAMES[self.kind]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def open_fds(self) -> int:
        return open_fd_count(self.pid)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def check_running(self) -> None:
        if not self.is_running():
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(10)
        release_tcp_ports([self.control_port, self.data_port, self.live_port])
        return self.process.returncode


def relay_argv(kind: RelayKind) -> list[str]:
    if kind == "c":
        return ["lttng-relayd"]
    return [sys.executable, "-m", "pyrelayd"]


def _preexec(cpus: frozenset[int] | None, nofile: int) -> Callable[[], None]:
    def setup() -> None:
        pin_to(cpus)
        raise_nofile(nofile)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft > nofile:  # exactly this limit (the idle benchmark's 1024-descriptor run)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return setup


def start_relay(
    kind: RelayKind,
    output_dir: Path,
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    cpus: frozenset[int] | None = RELAY_CPUS,
    nofile: int = DEFAULT_NOFILE,
    timeout: float = 20.0,
) -> RelayProcess:
    """Start a relay writing under `output_dir`; returns once its three ports listen."""
    workdir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    control, data, live = free_tcp_ports(3)
    argv = [
        *relay_argv(kind),
        "-C", f"tcp://127.0.0.1:{control}",
        "-D", f"tcp://127.0.0.1:{data}",
        "-L", f"tcp://127.0.0.1:{live}",
        "-o", str(output_dir),
        *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "LTTNG_HOME": str(home)}
    if kind == "py":
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SOURCE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    log_path = workdir / f"{kind}-relayd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=_preexec(cpus, nofile))
    relay = RelayProcess(kind, process, control, data, live, output_dir, log_path, argv)
    deadline = time.monotonic() + timeout
    try:
        while not {control, data, live} <= listening_tcp_ports():
            relay.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{relay.name} not listening after {timeout} s:\n"
                                   f"{relay.log_tail()}")
            time.sleep(0.02)
    except BaseException:
        relay.stop()
        raise
    return relay
