"""Where the relay's log lines go: stderr, a log file (reopened on SIGHUP) or syslog.

Levels follow lttng-relayd's verbosity: errors and warnings (every refused input among them)
by default; `-v` adds what happens to connections, sessions and trace chunks (INFO); `-vv`
each stream and command worth a line (DEBUG); `-vvv` each live request (TRACE).

A daemon (`-d`, `-b`) has no terminal, so it logs to syslog (the journal, when journald owns
`/dev/log`) unless `--log-file` names a file. Under systemd without `-d`, stderr goes to the
journal: lines then start with a `<N>` priority prefix so that `journalctl -p` works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from pyrelayd.constants import TRACE as TRACE

IDENT = "pyrelayd"
DEFAULT_SYSLOG_SOCKET = "/dev/log"
# Another syslog socket than /dev/log (a chroot, a container, tests).
ENV_SYSLOG_SOCKET = "PYRELAYD_SYSLOG_SOCKET"
LOG_DAEMON = 3  # syslog facility
# Longer lines are cut: a datagram that large is refused by some syslog daemons.
MAX_SYSLOG_MESSAGE = 16 * 1024

_VERBOSITY_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG, TRACE)
_TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s [%(process)d] %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# syslog and the journal stamp lines themselves.
_BARE_FORMAT = "%(levelname)s %(name)s: %(message)s"

_installed: list[logging.Handler] = []


def level_for(verbosity: int) -> int:
    """The lowest level logged at `-v` x `verbosity`."""
    return _VERBOSITY_LEVELS[max(0, min(verbosity, len(_VERBOSITY_LEVELS) - 1))]


def syslog_severity(levelno: int) -> int:
    """The syslog severity of a logging level (err, warning, info, debug...)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class LogFileHandler(logging.FileHandler):
    """Appends to a file; `reopen()` (on SIGHUP) starts writing to whatever now has its name,
    as logrotate expects after renaming the old file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.setFormatter(logging.Formatter(_TEXT_FORMAT, _DATE_FORMAT))

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                with contextlib.suppress(OSError):
                    old.close()
        finally:
            self.release()


class SyslogHandler(logging.Handler):
    """Sends each record as one datagram to the syslog socket (`<PRI>pyrelayd[PID]: ...`).

    Records are formatted at once and sent by a thread of their own (started in the process
    that logs: after daemonizing), through a bounded queue, so that a slow syslog (the
    socket's queue holds only a few datagrams) delays no one. When the queue is full or
    syslog does not take a line within `SEND_TIMEOUT_S`, the line is dropped and counted. A
    syslog daemon that restarts is reconnected to; one that is absent costs the lost lines.
    """

    QUEUE_SIZE = 10_000
    SEND_TIMEOUT_S = 2.0

    def __init__(self, address: str = DEFAULT_SYSLOG_SOCKET, facility: int = LOG_DAEMON) -> None:
        super().__init__()
        self.address = address
        self.facility = facility
        self.dropped = 0
        self._socket: socket.socket | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.QUEUE_SIZE)
        self._sender: threading.Thread | None = None
        self._sender_pid = 0
        self.setFormatter(logging.Formatter(_BARE_FORMAT))

    def connected(self) -> bool:
        """Whether the syslog socket accepts us now (connecting if need be)."""
        if self._sender is not None and self._sender_pid == os.getpid():
            return self._socket is not None  # the sender's: not ours to touch
        return self._connect() is not None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        priority = self.facility * 8 + syslog_severity(record.levelno)
        data = f"<{priority}>{IDENT}[{record.process}]: {message}".encode(errors="replace")
        if self._sender_pid != os.getpid():
            self._start_sender()  # first line, or first since a fork (threads do not follow)
        try:
            self._queue.put_nowait(data[:MAX_SYSLOG_MESSAGE])
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Send what is queued (a few seconds at most), then close."""
        sender, self._sender = self._sender, None
        if sender is not None and self._sender_pid == os.getpid():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=self.SEND_TIMEOUT_S)
            sender.join(self.SEND_TIMEOUT_S * 2)
        self._disconnect()
        super().close()

    # ------------------------------------------------------------------ sender thread

    def _start_sender(self) -> None:
        self._sender_pid = os.getpid()
        self._queue = queue.Queue(self.QUEUE_SIZE)
        self._sender = threading.Thread(target=self._send_queued, name="syslog", daemon=True)
        self._sender.start()

    def _send_queued(self) -> None:
        while (data := self._queue.get()) is not None:
            if not self._send(data):
                self.dropped += 1

    def _send(self, data: bytes) -> bool:
        for _attempt in range(2):  # once more after reconnecting (syslog restarted)
            sock = self._connect()
            if sock is None:
                return False
            try:
                sock.send(data)
                return True
            except TimeoutError:
                return False  # syslog does not read: drop the line rather than wait
            except OSError:
                self._disconnect()
        return False

    def _connect(self) -> socket.socket | None:
        if self._socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                return None
            sock.settimeout(self.SEND_TIMEOUT_S)
            self._socket = sock
        return self._socket

    def _disconnect(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()


class _JournalFormatter(logging.Formatter):
    """`<N>` + the line: the journal reads the priority from the prefix."""

    def __init__(self) -> None:
        super().__init__(_BARE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_severity(record.levelno)}>{super().format(record)}"


def stderr_is_journal(environ: Mapping[str, str]) -> bool:
    """Whether stderr is systemd's journal stream ($JOURNAL_STREAM names its device:inode)."""
    stream = environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def _stderr_handler(environ: Mapping[str, str]) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal(environ):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT, _DATE_FORMAT))
    return handler


def configure(
    verbosity: int,
    *,
    log_file: Path | None = None,
    syslog: bool = False,
    stderr: bool = True,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send the root logger's records at `verbosity` to the destinations named; replaces
    what an earlier call installed. Raises OSError when the log file cannot be opened."""
    environ = os.environ if environ is None else environ
    handlers: list[logging.Handler] = []
    if log_file is not None:
        handlers.append(LogFileHandler(log_file))
    if syslog:
        handlers.append(SyslogHandler(environ.get(ENV_SYSLOG_SOCKET) or DEFAULT_SYSLOG_SOCKET))
    if stderr:
        handlers.append(_stderr_handler(environ))
    reset()
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(level_for(verbosity))


def reset() -> None:
    """Remove (and close) the handlers `configure` installed."""
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()


def syslog_handler() -> SyslogHandler | None:
    return next((h for h in _installed if isinstance(h, SyslogHandler)), None)


def reopen() -> None:
    """SIGHUP: reopen the log file (after logrotate renamed it)."""
    for handler in _installed:
        if isinstance(handler, LogFileHandler):
            try:
                handler.reopen()
            except OSError as error:
                logging.getLogger(__name__).error(
                    "cannot reopen log file %s: %s", handler.baseFilename, error.strerror)
                continue
            logging.getLogger(__name__).info("log file %s reopened", handler.baseFilename)
