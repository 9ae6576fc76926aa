"""systemd notifications: the relay writes to $NOTIFY_SOCKET as it would under systemd.

Each test binds the datagram socket systemd would (a path, or an abstract `@name`), starts
the real relay with NOTIFY_SOCKET (and WATCHDOG_USEC) pointing at it, and reads what comes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyrelayd.cli import parse_options
from pyrelayd.server import notify
from tests.integration.lttng_env import wait_until
from tests.unit.lttng_health import LIBLTTNG_CTL, query_relay_health
from tests.unit.relayd_process import (
    health_bitmask,
    read_ports,
    start_relay,
    viewer_stall_request,
    wait_for_ready,
    wait_until_stalled,
)

RECEIVE_TIMEOUT = 30.0


class NotifySocket:
    """What systemd listens on: one datagram per notification."""

    def __init__(self, address: str) -> None:
        self.address = address  # as in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def receive(self) -> str:
        self.sock.settimeout(RECEIVE_TIMEOUT)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        messages = []
        self.sock.setblocking(False)
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    address = (str(tmp_path / "notify.sock") if request.param == "path"
               else f"@pyrelayd-test-{uuid.uuid4().hex}")
    listener = NotifySocket(address)
    yield listener
    listener.close()


def test_ready_once_every_listener_is_bound_then_stopping(systemd: NotifySocket,
                                                          tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "-vv", env={"NOTIFY_SOCKET": systemd.address},
                        wait=False)
    try:
        assert systemd.receive() == "READY=1\n"
        # Ready means every port listens, the health socket included.
        ports = read_ports(tmp_path / "relay" / "run")
        assert ports is not None
        for port in ports.values():
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        if LIBLTTNG_CTL is not None:
            assert query_relay_health(relay.health_socket).state == 0

        relay.signal(signal.SIGTERM)
        assert systemd.receive() == "STOPPING=1\n"
        assert relay.process.wait(30) == 0
        assert systemd.drain() == []  # no WATCHDOG=1 unless systemd asks for it
    finally:
        relay.stop()


def test_watchdog_pings_stop_while_the_loop_is_stalled(tmp_path: Path) -> None:
    systemd = NotifySocket(str(tmp_path / "notify.sock"))
    env = {"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "200000",  # ping every 0.1 s
           "PYRELAYD_HEALTH_CHECK_DELTA": "0.5"}
    relay = start_relay(tmp_path / "relay", "-v", env=env, stall_in="live", wait=False)
    try:
        assert systemd.receive() == "READY=1\n"
        wait_for_ready(relay)
        for _ in range(3):
            assert systemd.receive() == "WATCHDOG=1\n"

        with relay.connect("live") as viewer:
            viewer.sendall(viewer_stall_request())
            wait_until_stalled(relay)
            # Stuck for longer than the health delta, i.e. 5 ping intervals...
            wait_until(lambda: health_bitmask(relay.health_socket), timeout=30, interval=0.1,
                       what="the stall seen by the health check")
            systemd.drain()  # (pings sent before the loop got stuck)
            # ...and still stuck: not one ping meanwhile, so systemd would restart the relay.
            assert health_bitmask(relay.health_socket)
            assert systemd.drain() == []

            relay.release_stall()
            assert systemd.receive() == "WATCHDOG=1\n"
    finally:
        relay.stop()
        systemd.close()
    assert "systemd watchdog: pinging every 0.1 s" in relay.log_text()


def test_an_unusable_notify_socket_is_logged_and_ignored(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", env={"NOTIFY_SOCKET": "relative/path"})
    try:
        socket.create_connection(("127.0.0.1", relay.ports["control"]), timeout=10).close()
    finally:
        assert relay.stop() == 0
    assert "invalid NOTIFY_SOCKET='relative/path'" in relay.log_text()


# --- The environment, as sd_notify(3) and sd_watchdog_enabled(3) read it ---------------------


def test_notify_addresses() -> None:
    assert notify.notify_address({}) is None
    assert notify.notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == (
        "/run/systemd/notify")
    assert notify.notify_address({"NOTIFY_SOCKET": "@abstract"}) == b"\0abstract"
    assert notify.notify_address({"NOTIFY_SOCKET": "@"}) is None  # too short
    assert notify.notify_address({"NOTIFY_SOCKET": "/" + "x" * 200}) is None  # too long


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    assert notify.watchdog_interval({}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert notify.watchdog_interval(mine) == 1.0
    assert notify.watchdog_interval(mine | {"WATCHDOG_PID": "1"}) is None


# --- The unit file ------------------------------------------------------------------------------

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "pyrelayd.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    logical = UNIT.read_text().replace("\\\n", " ")
    for line in logical.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_file_asks_for_notifications_and_hardening() -> None:
    settings = unit_settings()
    for key, value in (("Type", "notify"), ("NotifyAccess", "main"), ("User", "pyrelayd"),
                       ("Group", "tracing"), ("ProtectSystem", "strict"),
                       ("ReadWritePaths", "/var/lib/pyrelayd"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("LTTNG_RELAYD_HEALTH", "/run/pyrelayd/health")):
        assert value in settings.get(key, []) or f"{key}={value}" in settings["Environment"]
    assert int(settings["WatchdogSec"][0]) > 20  # longer than the health check's delta


def test_the_unit_s_command_line_is_one_pyrelayd_accepts(tmp_path: Path) -> None:
    argv = shlex.split(unit_settings()["ExecStart"][0])
    assert argv[0] == "/opt/pyrelayd/bin/pyrelayd" and "-d" not in argv
    options = parse_options(argv[1:], {"LTTNG_HOME": str(tmp_path)},
                            system_config=tmp_path / "none")
    assert str(options.output_root).startswith("/var/lib/pyrelayd/")  # in ReadWritePaths


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit_file(tmp_path: Path) -> None:
    unit = tmp_path / "pyrelayd.service"
    pyrelayd = Path(sys.executable).parent / "pyrelayd"  # the installed entry point
    unit.write_text(UNIT.read_text().replace("/opt/pyrelayd/bin/pyrelayd", str(pyrelayd)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "pyrelayd.service" not in result.stderr  # no warning about it either
