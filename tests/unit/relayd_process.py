"""A real pyrelayd process for the operations tests (health, logs, systemd, timeouts).

The relay runs as an operator runs it (`python -m pyrelayd` with its command line and
environment) on ports the OS picks (`--dynamic-port-allocation`, read back from the port
files of a private run directory), its health socket at a known path.

To test what happens when the event loop stalls, `stall_in` starts the relay through a
driver that first makes one real handler block (until the test creates a file): a live
LIST_SESSIONS, or a control CREATE_SESSION. Everything else is the real relay.

Benchmarks and the other tests start relays with `pyrelayd_testkit.relays.start_relay`; this
one differs in what the operations tests look at (the run directory, the health socket, the
environment an init system gives, a driver in front of `main`), and shares its port files
and process handling with it (`pyrelayd_testkit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pyrelayd.protocol import viewer
from pyrelayd_testkit.ports import read_port_files
from pyrelayd_testkit.processes import stop_process, wait_until

SRC = Path(__file__).resolve().parents[2] / "src"
READY_TIMEOUT = 30.0

StallTarget = Literal["live", "control"]

STALL_DRIVER = """\
import os, pathlib, sys, time
from pyrelayd import cli
from pyrelayd.protocol.live import LiveHandler
from pyrelayd.server import control, live

entered = pathlib.Path(os.environ["STALL_ENTERED"])
release = pathlib.Path(os.environ["STALL_RELEASE"])

def blocking(original):
    def handler(self, *args):
        entered.touch()
        while not release.exists():  # the event loop waits here, as on a hung disk
            time.sleep(0.02)
        return original(self, *args)
    return handler

if os.environ["STALL_IN"] == "live":
    LiveHandler._list_sessions = blocking(LiveHandler._list_sessions)
else:
    control.ControlHandler._create_session = blocking(control.ControlHandler._create_session)
raise SystemExit(cli.main(sys.argv[1:]))
"""


@dataclasses.dataclass
class Relay:
    process: subprocess.Popen[bytes]
    workdir: Path
    ports: dict[str, int]
    health_socket: Path
    log_path: Path
    stall_release: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connect(self, port: str) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[port]), timeout=10)

    def release_stall(self) -> None:
        self.stall_release.touch()

    def stop(self, timeout: float = 30.0) -> int:
        self.release_stall()
        return stop_process(self.process, timeout)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)


def relay_environment(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    environment = {
        key: value for key, value in os.environ.items()
        if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                       "LTTNG_NETWORK_SOCKET_TIMEOUT", "LTTNG_RELAYD_HEALTH")
    }
    environment |= {
        "LTTNG_HOME": str(home),
        "LTTNG_RUNDIR": str(workdir / "run"),
        "LTTNG_RELAYD_HEALTH": str(workdir / "health.sock"),
        "PYTHONPATH": str(SRC),
    }
    return environment | dict(extra or {})


def relay_argv(workdir: Path, args: Sequence[str], stall_in: StallTarget | None) -> list[str]:
    program = ["-c", STALL_DRIVER] if stall_in else ["-m", "pyrelayd"]
    return [sys.executable, *program,
            "-C", "tcp://127.0.0.1:0", "-D", "tcp://127.0.0.1:0", "-L", "tcp://127.0.0.1:0",
            "--dynamic-port-allocation", "-o", str(workdir / "traces"), *args]


def read_ports(run_dir: Path) -> dict[str, int] | None:
    """The ports the relay wrote to RUN_DIR/relayd/*.port, or None until all three are."""
    return read_port_files(run_dir)


def start_relay(workdir: Path, *args: str, env: Mapping[str, str] | None = None,
                stall_in: StallTarget | None = None, wait: bool = True) -> Relay:
    """Start pyrelayd; with `wait`, return once its ports and health socket are there."""
    workdir.mkdir(parents=True, exist_ok=True)
    environment = relay_environment(workdir, env)
    environment |= {"STALL_IN": stall_in or "", "STALL_ENTERED": str(workdir / "stalled"),
                    "STALL_RELEASE": str(workdir / "release")}
    log_path = workdir / "relayd.stderr"
    with log_path.open("wb") as log:
        process = subprocess.Popen(relay_argv(workdir, args, stall_in), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=environment)
    relay = Relay(process, workdir, {}, Path(environment["LTTNG_RELAYD_HEALTH"]), log_path,
                  workdir / "release")
    if wait:
        try:
            wait_for_ready(relay)
        except BaseException:
            relay.stop()
            raise
    return relay


def wait_for_ready(relay: Relay) -> None:
    def ready() -> dict[str, int] | None:
        if relay.process.poll() is not None:
            raise RuntimeError(f"pyrelayd exited with {relay.process.returncode}:\n"
                               f"{relay.log_text()}")
        ports = read_ports(relay.workdir / "run")
        return ports if ports and relay.health_socket.exists() else None

    relay.ports = wait_until(ready, timeout=READY_TIMEOUT, what="pyrelayd listening")


def wait_until_stalled(relay: Relay) -> None:
    wait_until(lambda: (relay.workdir / "stalled").exists(), timeout=READY_TIMEOUT,
               what="the event loop to block in the stalled handler")


def wait_closed_by_relay(sock: socket.socket, timeout: float = READY_TIMEOUT) -> bytes:
    """Read `sock` until the relay closes it (EOF or reset); what it sent before. Raises
    TimeoutError when it stays open for `timeout`."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(4096):
            received += data
    return received


def health_bitmask(path: Path) -> int:
    """One health query on the wire (host byte order): the bitmask of unhealthy components.
    (The tests of the health socket itself use liblttng-ctl.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(struct.pack("=I", 0))
        reply = wait_closed_by_relay(sock)
    (bitmask,) = struct.unpack("=Q", reply)
    return int(bitmask)


def viewer_stall_request() -> bytes:
    """CONNECT then LIST_SESSIONS: what a viewer sends first (the live stall blocks in the
    second)."""
    return b"".join(viewer.encode_request(request) for request in (
        viewer.Connect(minor=15, connection_type=viewer.ConnectionType.COMMAND),
        viewer.ListSessions()))


@dataclasses.dataclass
class Daemon:
    """A relay started with -d: its launcher exited once it was ready."""

    pid: int
    workdir: Path
    ports: dict[str, int]
    pid_file: Path
    launcher: subprocess.CompletedProcess[str]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        wait_until(lambda: not self.pid_file.exists(), timeout=READY_TIMEOUT,
                   what="the daemon gone (its PID file removed)")


def start_daemon(workdir: Path, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
    """`pyrelayd -d ARGS`, as an init script runs it; returns once the daemon is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    pid_file = workdir / "relayd.pid"
    launcher = subprocess.run(
        [*relay_argv(workdir, ("-d", "-P", str(pid_file), *args), None)],
        env=relay_environment(workdir, env), capture_output=True, text=True,
        timeout=READY_TIMEOUT, check=False)
    if launcher.returncode != 0:
        raise RuntimeError(f"pyrelayd -d exited with {launcher.returncode}: {launcher.stderr}")
    ports = read_ports(workdir / "run")
    assert ports is not None
    return Daemon(int(pid_file.read_text()), workdir, ports, pid_file, launcher)
