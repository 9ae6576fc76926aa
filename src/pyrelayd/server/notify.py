"""systemd's service notification protocol (sd_notify), with the standard library only.

`READY=1` once every listener is bound, `STOPPING=1` when shutting down (as lttng-relayd
2.15+), and `WATCHDOG=1` every half `WatchdogSec` while the event loop runs (a pyrelayd
addition: a relay whose loop is stuck stops pinging and systemd restarts it). Each message is
one datagram to `$NOTIFY_SOCKET`: an absolute path, or `@name` for the abstract namespace.
Failures are logged, never fatal: the relay works the same without systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
READY = "READY=1\n"
STOPPING = "STOPPING=1\n"
WATCHDOG = "WATCHDOG=1\n"
_MAX_PATH = 108  # sizeof(sockaddr_un.sun_path)


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """Where to send notifications: a path, an abstract address (bytes, NUL first), or None
    when $NOTIFY_SOCKET is unset or unusable."""
    value = environ.get(ENV_NOTIFY_SOCKET)
    if not value:
        return None
    if len(value) < 2 or value[0] not in "/@":
        log.error("invalid %s=%r: the path must be absolute", ENV_NOTIFY_SOCKET, value)
        return None
    if len(value.encode()) >= _MAX_PATH:
        log.error("%s=%r is too long for a socket address", ENV_NOTIFY_SOCKET, value)
        return None
    if value[0] == "@":
        return b"\0" + value[1:].encode()
    return value


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one notification; False when there is no notify socket or sending failed."""
    address = notify_address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # the relay never waits for systemd
            sock.sendto(message.encode(), address)
    except OSError as error:
        log.error("cannot send %r to systemd: %s", message.strip(), error)
        return False
    log.debug("systemd notified: %s", message.strip())
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 (half of WatchdogSec), or None when systemd did not ask
    this process for them (sd_watchdog_enabled's rules)."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get(ENV_WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get(ENV_WATCHDOG_PID)
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
