"""The health socket, queried by the real liblttng-ctl as `lttng_health_query()` does.

pyrelayd answers as lttng-relayd: at LTTNG_RELAYD_HEALTH or RUNDIR/relayd/health-PID, one
8-byte bitmask of unhealthy components per connection. A component is unhealthy when the
event loop is stuck in it or has work for it it cannot do, or when its listener died.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyrelayd.protocol import relayd
from pyrelayd.protocol.health import REPLY, REQUEST
from pyrelayd.server.health import (
    Component,
    HealthMonitor,
    tracing_group_id,
)
from tests.integration.lttng_env import free_tcp_ports, release_tcp_ports, stop_process, wait_until
from tests.unit.lttng_health import LIBLTTNG_CTL, HealthReport, query_relay_health
from tests.unit.relayd_process import (
    Relay,
    relay_environment,
    start_relay,
    viewer_stall_request,
    wait_closed_by_relay,
    wait_until_stalled,
)

pytestmark = pytest.mark.skipif(LIBLTTNG_CTL is None, reason="liblttng-ctl0 is not installed")

THREAD_NAMES = (
    "Relay daemon dispatcher",
    "Relay daemon worker",
    "Relay daemon listener",
    "Relay daemon live dispatcher",
    "Relay daemon live worker",
    "Relay daemon live listener",
)
HEALTHY = HealthReport(0, 0, tuple((name, 0) for name in THREAD_NAMES))
# Short, so that a stall is seen quickly (lttng-relayd's is 20 s).
FAST_HEALTH = {"PYRELAYD_HEALTH_CHECK_DELTA": "0.5"}


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    relay = start_relay(tmp_path / "relay", "-v")
    yield relay
    relay.stop()


def unhealthy_report(relay: Relay, wanted: set[str]) -> HealthReport:
    """Query until exactly `wanted` are unhealthy (the watchdog needs its delta to see it)."""
    def matches() -> HealthReport | None:
        report = query_relay_health(relay.health_socket)
        return report if report.unhealthy == wanted else None

    return wait_until(matches, timeout=30, interval=0.1, what=f"unhealthy == {wanted}")


def raw_query(path: Path, request: bytes) -> bytes:
    """Send `request` on a fresh connection; what the relay answers before closing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return wait_closed_by_relay(sock)


# --- A healthy relay -------------------------------------------------------------------------


def start_c_relay(workdir: Path) -> tuple[subprocess.Popen[bytes], Path, list[int]]:
    ports = free_tcp_ports(3)
    env = relay_environment(workdir)
    health = Path(env["LTTNG_RELAYD_HEALTH"])
    process = subprocess.Popen(
        ["lttng-relayd", "-C", f"tcp://127.0.0.1:{ports[0]}", "-D", f"tcp://127.0.0.1:{ports[1]}",
         "-L", f"tcp://127.0.0.1:{ports[2]}", "-o", str(workdir / "traces")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_until(health.exists, timeout=30, what="lttng-relayd's health socket")
    return process, health, ports


@pytest.mark.skipif(shutil.which("lttng-relayd") is None, reason="lttng-relayd not installed")
def test_a_healthy_relay_answers_as_lttng_relayd_does(relay: Relay, tmp_path: Path) -> None:
    c_relay, c_health, ports = start_c_relay(tmp_path / "c-relay")
    try:
        c_report = query_relay_health(c_health)
    finally:
        stop_process(c_relay, 30)
        release_tcp_ports(ports)

    assert c_report == HEALTHY
    assert query_relay_health(relay.health_socket) == HEALTHY


def test_the_reply_is_8_bytes_in_host_byte_order(relay: Relay) -> None:
    reply = raw_query(relay.health_socket, struct.pack("=I", 0))

    assert len(reply) == REPLY.size == 8
    assert struct.unpack("=Q", reply) == (0,)


def test_default_path_permissions_and_removal_at_exit(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", env={"LTTNG_RELAYD_HEALTH": ""}, wait=False)
    path = tmp_path / "relay" / "run" / "relayd" / f"health-{relay.pid}"
    relay.health_socket = path
    try:
        wait_until(path.exists, timeout=30, what="the health socket")
        assert query_relay_health(path) == HEALTHY
        mode = path.stat()
        assert stat.S_ISSOCK(mode.st_mode)
        if os.getuid() == 0:  # as lttng-relayd: root:tracing 0660, run directories 0755
            assert stat.S_IMODE(mode.st_mode) == 0o660
            assert (mode.st_uid, mode.st_gid) == (0, tracing_group_id("tracing"))
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    finally:
        assert relay.stop() == 0
    assert not path.exists()


def test_a_daemon_names_its_socket_after_its_own_pid(tmp_path: Path) -> None:
    workdir = tmp_path / "relay"
    workdir.mkdir()
    env = relay_environment(workdir, {"LTTNG_RELAYD_HEALTH": ""})
    pid_file = workdir / "relayd.pid"
    started = subprocess.run(
        [sys.executable, "-m", "pyrelayd", "-d", "-P", str(pid_file),
         "-C", "tcp://127.0.0.1:0", "-D", "tcp://127.0.0.1:0", "-L", "tcp://127.0.0.1:0",
         "--dynamic-port-allocation", "-o", str(workdir / "traces")],
        env=env, timeout=60, check=False)
    assert started.returncode == 0
    pid = int(pid_file.read_text())
    path = workdir / "run" / "relayd" / f"health-{pid}"
    try:
        assert query_relay_health(path) == HEALTHY
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not path.exists(), timeout=30, what="the socket removed at exit")


def test_a_relay_without_its_health_socket_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "health"
    relay = start_relay(tmp_path / "relay", env={"LTTNG_RELAYD_HEALTH": str(path)}, wait=False)

    assert relay.process.wait(30) == 1  # as lttng-relayd, whose health thread stops it
    assert f"pyrelayd: error: cannot create the health socket {path}: No such file" in (
        relay.log_text())


# --- Misbehaving clients -------------------------------------------------------------------


def test_an_unknown_command_is_closed_without_reply(relay: Relay) -> None:
    assert raw_query(relay.health_socket, REQUEST.pack(7)) == b""
    assert raw_query(relay.health_socket, b"\0\0") == b""  # half a request

    assert query_relay_health(relay.health_socket) == HEALTHY
    assert "health socket: unknown command 7" in relay.log_text()


def test_a_silent_client_does_not_hold_up_the_others(relay: Relay) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(relay.health_socket))

        assert query_relay_health(relay.health_socket) == HEALTHY
        # Answered while the silent client was still waited for...
        with pytest.raises(BlockingIOError):
            silent.recv(1, socket.MSG_DONTWAIT)
        # ...which is dropped in the end.
        assert wait_closed_by_relay(silent) == b""


# --- Unhealthy relays ----------------------------------------------------------------------


def test_a_stalled_live_request_sets_the_live_worker_bit(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "-v", env=FAST_HEALTH, stall_in="live")
    try:
        assert query_relay_health(relay.health_socket) == HEALTHY
        with relay.connect("live") as live:
            live.sendall(viewer_stall_request())
            wait_until_stalled(relay)

            report = unhealthy_report(relay, {"Relay daemon live worker"})
            assert (report.query, report.state, report.bitmask) == (0, -1, 1 << 4)

            # A producer knocking at the control port now waits too: listener and dispatcher.
            with relay.connect("control"):
                unhealthy_report(relay, {"Relay daemon live worker", "Relay daemon listener",
                                         "Relay daemon dispatcher"})
                relay.release_stall()
                wait_until(lambda: query_relay_health(relay.health_socket) == HEALTHY,
                           timeout=30, what="healthy again")
            live.settimeout(30)
            assert live.recv(4096)  # the CONNECT reply (and LIST_SESSIONS's) left at last
        assert "health check: unhealthy: Relay daemon live worker (event loop stalled" in (
            relay.log_text())
    finally:
        assert relay.stop() == 0


def test_a_stalled_control_command_sets_the_worker_bit(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", env=FAST_HEALTH, stall_in="control")
    try:
        create = relayd.CreateSession(
            session_name="stalled", hostname="host", base_path="", live_timer=0, snapshot=False,
            sessiond_uuid=bytes(range(1, 17)), sessiond_session_id=1,
            creation_time=int(time.time()))
        with relay.connect("control") as control:
            control.sendall(
                relayd.encode_request(relayd.Command.VERSION, relayd.Version(2, 13).encode())
                + relayd.encode_request(relayd.Command.CREATE_SESSION, create.encode(13)))
            wait_until_stalled(relay)

            report = unhealthy_report(relay, {"Relay daemon worker"})
            assert report.bitmask == 1 << Component.WORKER
            relay.release_stall()
            wait_until(lambda: query_relay_health(relay.health_socket) == HEALTHY, timeout=30,
                       what="healthy again")
    finally:
        assert relay.stop() == 0


def kill_listener(port: int) -> None:
    """Destroy a listening socket from outside (`ss -K`), as a tool or a bug might."""
    subprocess.run(["ss", "-K", "state", "listening", "sport", "=", f":{port}"],
                   capture_output=True, check=False)


def ss_can_kill_listeners() -> bool:
    if shutil.which("ss") is None:
        return False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        probe.listen()
        kill_listener(probe.getsockname()[1])
        return probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0


@pytest.mark.skipif(not ss_can_kill_listeners(), reason="`ss -K` cannot destroy sockets here")
def test_a_listener_that_dies_is_reported_and_the_rest_goes_on(relay: Relay) -> None:
    kill_listener(relay.ports["live"])
    unhealthy_report(relay, {"Relay daemon live listener"})

    kill_listener(relay.ports["control"])
    unhealthy_report(relay, {"Relay daemon live listener", "Relay daemon listener"})

    with relay.connect("data"):  # the relay still runs and the data port still accepts
        pass
    for name in ("live", "control"):  # said by the loop's next heartbeat
        wait_until(lambda: f"{name} port: no longer listening" in relay.log_text(),  # noqa: B023
                   timeout=30, what=f"the {name} listener reported dead")
    assert relay.process.poll() is None


# --- The monitor's decisions, in process -----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stall_nobody_can_place_makes_every_component_unhealthy() -> None:
    clock = Clock()
    monitor = HealthMonitor(20, clock)
    monitor.loop_thread_id = -1  # no such thread: no stack to read
    assert monitor.bitmask() == 0
    clock.now += 20
    assert monitor.bitmask() == 0  # not more than the delta
    clock.now += 1
    assert monitor.bitmask() == 0b111111
    monitor.beat()
    assert monitor.bitmask() == 0


def test_waiting_connections_name_the_listener_and_its_dispatcher() -> None:
    clock = Clock()
    monitor = HealthMonitor(1, clock)
    monitor.loop_thread_id = -1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monitor.add_listener(Component.LIVE_LISTENER, "live", listener)
        clock.now += 2
        assert monitor.bitmask() == 0b111111
        with socket.create_connection(listener.getsockname()):
            assert monitor.unhealthy() == {Component.LIVE_LISTENER, Component.LIVE_DISPATCHER}


def test_a_closed_listener_is_reported_for_good() -> None:
    monitor = HealthMonitor(20)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    monitor.add_listener(Component.LISTENER, "control", listener)
    assert monitor.check_listeners() == []
    listener.close()

    assert monitor.unhealthy() == {Component.LISTENER}
    assert monitor.check_listeners() == ["control"]
    assert monitor.check_listeners() == []  # said once
    assert monitor.unhealthy() == {Component.LISTENER}


def test_component_labels_are_liblttng_ctl_thread_names() -> None:
    assert tuple(component.label for component in Component) == THREAD_NAMES
