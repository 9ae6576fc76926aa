"""Logs an operator can find: syslog for a daemon, a log file that logrotate can rotate.

A real relay serves a real (synthetic) session and a viewer; the tests read its lines where an
operator would: from the syslog socket (a datagram socket the test binds, and Debian's
rsyslogd when installed), or from the --log-file, across a logrotate-style rotation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from pyrelayd import logs
from pyrelayd.client.producer import ProducerError, RelaydProducer
from pyrelayd.client.viewer import LiveClient
from pyrelayd.protocol.relayd import CloseCommand
from pyrelayd.protocol.viewer import Seek
from tests.integration.lttng_env import stop_process, wait_until
from tests.requirements import require_tool
from tests.unit.relayd_process import start_daemon, start_relay

PACKET = b"P" * 4096
CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
SYSLOG_LINE = re.compile(r"<(\d+)>pyrelayd\[(\d+)\]: (\w+) ([\w.]+): (.*)", re.DOTALL)
# One line per event, each with what it is about: the peer, the session.
EXPECTED_EVENTS = (
    r"control 127\.0\.0\.1:\d+: connected$",
    r"data 127\.0\.0\.1:\d+: connected$",
    r"control 127\.0\.0\.1:\d+ \[myhost/mysess\]: session 1 created in /\S+/myhost/mysess-\d+-\d+ "
    r"\(protocol 2\.15, trace format ctf-1\.8, live timer 1000000 us\)$",
    r"WARNING .*control 127\.0\.0\.1:\d+ \[myhost/mysess\]: ADD_STREAM refused: "
    r"stream path '\.\./\.\./escape' has a '\.\.' or hidden component$",
    r"\[myhost/mysess\]: trace chunk 1 created$",
    r"\[myhost/mysess\]: trace chunk 0 closed \(move_to_completed\): myhost/mysess-\d+-\d+$",
    r"viewer 127\.0\.0\.1:\d+: connected$",
    r"viewer 127\.0\.0\.1:\d+: attach session 1 \[myhost/mysess\]: OK, 2 streams$",
    r"viewer 127\.0\.0\.1:\d+: disconnected \(connection closed by the viewer\)$",
    r"control 127\.0\.0\.1:\d+ \[myhost/mysess\]: disconnected$",
    r"data 127\.0\.0\.1:\d+ \[myhost/mysess\]: disconnected$",
    r"session 1 \[myhost/mysess\]: destroyed$",
)


async def traced_session(ports: dict[str, int], name: str = "mysess") -> None:
    """What a session daemon and a viewer do, one refusal included; returns once the relay
    let the session go."""
    producer = RelaydProducer("127.0.0.1", ports["control"], ports["data"])
    await producer.connect()
    await producer.create_session(name, "myhost", live_timer=1_000_000)
    await producer.create_trace_chunk(0)
    metadata = await producer.add_stream("metadata", "ust/uid/0/64-bit")
    stream = await producer.add_stream("channel0_0", "ust/uid/0/64-bit")
    with pytest.raises(ProducerError):
        await producer.add_stream("channel0_1", "../../escape")
    await producer.streams_sent()
    await producer.send_metadata(metadata, b"/* CTF 1.8 */")
    seq = await producer.send_packet(stream, PACKET)
    await producer.send_index(stream, seq, packet_size_bits=len(PACKET) * 8,
                              content_size_bits=len(PACKET) * 8, timestamp_begin=1,
                              timestamp_end=2)
    async with LiveClient("127.0.0.1", ports["live"]) as viewer:
        sessions = await viewer.list_sessions()
        await viewer.create_session()
        streams = await viewer.attach(sessions[0].id, Seek.BEGINNING)
        await viewer.get_next_index(next(s.id for s in streams if not s.is_metadata))
    await producer.create_trace_chunk(1)
    await producer.close_trace_chunk(0, CloseCommand.MOVE_TO_COMPLETED)
    for each in (metadata, stream):
        await producer.close_stream(each)
    await producer.close()


def assert_every_event(text: str) -> None:
    for pattern in EXPECTED_EVENTS:
        assert re.search(pattern, text, re.MULTILINE), pattern


# --- syslog -----------------------------------------------------------------------------------


class SyslogSocket:
    """/dev/log as syslog daemons bind it: a datagram socket, one message per datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def receive_until(self, pattern: str) -> None:
        self.sock.settimeout(30)
        while not any(re.search(pattern, m) for m in self.messages):
            self.messages.append(self.sock.recv(65536).decode())


async def test_a_daemon_logs_to_syslog(tmp_path: Path) -> None:
    syslog = SyslogSocket(tmp_path / "log.sock")
    daemon = start_daemon(tmp_path / "relay", "-v",
                          env={logs.ENV_SYSLOG_SOCKET: str(syslog.path)})
    try:
        await traced_session(daemon.ports)
        await asyncio.to_thread(syslog.receive_until, r"destroyed$")
    finally:
        daemon.stop()
    await asyncio.to_thread(syslog.receive_until, "shutting down")

    assert "syslog" not in daemon.launcher.stderr  # no warning: syslog was there
    lines = []
    for message in syslog.messages:
        match = SYSLOG_LINE.fullmatch(message)
        assert match, message
        priority, pid, level, _logger, text = match.groups()
        assert "\n" not in text and int(pid) == daemon.pid
        assert divmod(int(priority), 8) == (3, {"INFO": 6, "WARNING": 4}[level])  # daemon.*
        lines.append(f"{level} {_logger}: {text}")
    assert_every_event("\n".join(lines))


def test_a_daemon_without_syslog_says_so_before_leaving_the_terminal(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path / "relay", env={logs.ENV_SYSLOG_SOCKET: str(tmp_path / "no")})
    daemon.stop()

    assert "warning: cannot log to syslog" in daemon.launcher.stderr
    assert "use --log-file" in daemon.launcher.stderr


# facility.severity, then the line as received (tag, message), one per line.
RSYSLOG_TEMPLATE = ("%syslogfacility-text%.%syslogseverity-text% "
                    "%syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n")
RSYSLOG_CONF = """\
global(workDirectory="{dir}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}")
template(name="line" type="string" string="{template}")
*.* action(type="omfile" file="{file}" template="line")
"""


async def test_rsyslog_receives_the_daemon_s_lines(tmp_path: Path) -> None:
    require_tool("rsyslogd", "rsyslog")
    sock, messages = tmp_path / "rsyslog.sock", tmp_path / "messages"
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(RSYSLOG_CONF.format(dir=tmp_path, socket=sock, file=messages,
                                    template=RSYSLOG_TEMPLATE))
    rsyslogd = subprocess.Popen(["rsyslogd", "-n", "-f", str(conf), "-i",
                                 str(tmp_path / "rsyslogd.pid")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, timeout=30, what="rsyslogd's socket")
        daemon = start_daemon(tmp_path / "relay", "-v", env={logs.ENV_SYSLOG_SOCKET: str(sock)})
        try:
            await traced_session(daemon.ports)
        finally:
            daemon.stop()
        wait_until(lambda: messages.exists() and "shutting down" in messages.read_text(),
                   timeout=30, what="rsyslog's file")
    finally:
        stop_process(rsyslogd, 10)

    text = messages.read_text()
    assert f"daemon.info pyrelayd[{daemon.pid}]: INFO pyrelayd.server.control: control" in text
    assert f"daemon.warning pyrelayd[{daemon.pid}]: WARNING pyrelayd.server.control:" in text
    assert_every_event(re.sub(r"^daemon\.\w+ pyrelayd\[\d+\]: ", "", text, flags=re.MULTILINE))


# --- A log file -------------------------------------------------------------------------------


LOGROTATE_CONF = """\
{log} {{
    rotate 2
    missingok
    postrotate
        kill -HUP {pid}
    endscript
}}
"""


@pytest.mark.parametrize("rotation", ["rename + SIGHUP", "logrotate"])
async def test_the_log_file_is_reopened_after_rotation(rotation: str, tmp_path: Path) -> None:
    if rotation == "logrotate":
        require_tool("logrotate", "logrotate")
    log = tmp_path / "pyrelayd.log"
    relay = start_relay(tmp_path / "relay", "-v", "--log-file", str(log))
    try:
        await traced_session(relay.ports, "before")
        wait_until(lambda: "[myhost/before]: destroyed" in log.read_text(), timeout=30)
        if rotation == "logrotate":
            conf = tmp_path / "logrotate.conf"
            conf.write_text(LOGROTATE_CONF.format(log=log, pid=relay.pid))
            subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                           check=True, timeout=60)
        else:
            log.rename(tmp_path / "pyrelayd.log.1")
            relay.signal(signal.SIGHUP)
        wait_until(log.exists, timeout=30, what="a new log file")
        await traced_session(relay.ports, "after")
        wait_until(lambda: "[myhost/after]: destroyed" in log.read_text(), timeout=30)
    finally:
        assert relay.stop() == 0

    rotated, current = (tmp_path / "pyrelayd.log.1").read_text(), log.read_text()
    assert "[myhost/before]: session 1 created" in rotated
    assert "[myhost/after]" not in rotated
    assert f"log file {log} reopened" in current
    assert "[myhost/after]: session 2 created" in current
    assert "shutting down" in current
    assert relay.log_text() == ""  # nothing on stderr: the file has it all


def test_the_logrotate_snippet_signals_the_relay_of_the_pid_file() -> None:
    snippet = (CONTRIB / "logrotate" / "pyrelayd").read_text()
    assert "/var/log/pyrelayd.log {" in snippet
    assert 'kill -HUP "$(cat /run/pyrelayd.pid)"' in snippet


async def test_a_daemon_logs_to_the_log_file_of_its_config_file(tmp_path: Path) -> None:
    log = tmp_path / "from-config.log"
    config = tmp_path / "relayd.conf"
    config.write_text(f"[relayd]\nlog-file = {log}\nverbose = 1\n")
    syslog = SyslogSocket(tmp_path / "log.sock")
    daemon = start_daemon(tmp_path / "relay", "-f", str(config),
                          env={logs.ENV_SYSLOG_SOCKET: str(syslog.path)})
    try:
        await traced_session(daemon.ports)
        wait_until(lambda: "destroyed" in log.read_text(), timeout=30)
    finally:
        daemon.stop()

    assert_every_event(log.read_text())
    syslog.sock.setblocking(False)
    with pytest.raises(BlockingIOError):  # the file instead of syslog, not both
        syslog.sock.recv(65536)


@pytest.mark.parametrize(("verbosity", "shown", "hidden"), [
    ([], ["WARNING", "ADD_STREAM refused"], ["INFO", "DEBUG", "TRACE"]),
    (["-v"], ["WARNING", "INFO", "session 1 created"], ["DEBUG", "TRACE"]),
    (["-vv"], ["INFO", "DEBUG", "stream 2 ust/uid/0/64-bit/channel0_0"], ["TRACE"]),
    (["-vvv"], ["INFO", "DEBUG", "TRACE", "GET_NEXT_INDEX"], []),
])
async def test_verbosity_as_lttng_relayd(verbosity: list[str], shown: list[str],
                                         hidden: list[str], tmp_path: Path) -> None:
    log = tmp_path / "pyrelayd.log"
    relay = start_relay(tmp_path / "relay", *verbosity, "--log-file", str(log))
    try:
        await traced_session(relay.ports)
    finally:
        assert relay.stop() == 0

    text = log.read_text()
    for word in shown:
        assert word in text
    for word in hidden:
        assert f" {word} [" not in text


# --- In process ------------------------------------------------------------------------------


def test_levels_follow_the_verbosity() -> None:
    assert [logs.level_for(v) for v in range(5)] == [
        logging.WARNING, logging.INFO, logging.DEBUG, logs.TRACE, logs.TRACE]
    assert [logs.syslog_severity(level) for level in (
        logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG,
        logs.TRACE)] == [2, 3, 4, 6, 7, 7]


def test_syslog_going_away_costs_lines_not_errors(tmp_path: Path) -> None:
    record = logging.LogRecord("pyrelayd", logging.WARNING, __file__, 1, "line %d", (1,), None)
    handler = logs.SyslogHandler(str(tmp_path / "log.sock"))
    handler.emit(record)
    handler.close()  # sends what is queued first
    assert handler.dropped == 1  # no syslog: the line is lost, nothing else happens

    syslog = SyslogSocket(tmp_path / "log.sock")
    handler = logs.SyslogHandler(str(syslog.path))
    handler.emit(record)
    syslog.receive_until("line 1")
    syslog.sock.close()  # syslog restarts...
    syslog.path.unlink()
    syslog = SyslogSocket(tmp_path / "log.sock")
    record.args = (2,)
    handler.emit(record)
    syslog.receive_until("line 2")  # ...and the next line reaches the new one
    handler.close()
    assert handler.dropped == 0
    assert syslog.messages[-1] == f"<28>pyrelayd[{os.getpid()}]: WARNING pyrelayd: line 2"
