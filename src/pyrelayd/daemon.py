"""Becoming a daemon and saying when ready: fork and detach (-d, -b), the PID file, the port
files of --dynamic-port-allocation, the readiness pipe and SIGUSR1 to the parent (-S)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pyrelayd.config import RelaydOptions
from pyrelayd.server.health import RUN_SUBDIRECTORY

# Port files (--dynamic-port-allocation) go to RUN_DIR/relayd/{control,data,live}.port,
# next to the health socket.
RELAYD_RUN_SUBDIR = RUN_SUBDIRECTORY

_log = logging.getLogger(__name__)

# The server calls this once every listener is bound, with {"control": port, ...}.
ReadyCallback = Callable[[Mapping[str, int]], None]


class DaemonParent(Exception):
    """Raised in the process that started the daemon: it exits with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def daemonize(close_stdio: bool) -> int:
    """Turn this process into a daemon (fork, setsid, fork, chdir /).

    The starting process waits until the daemon reports readiness on a pipe, then exits 0;
    it exits 1 if the daemon dies first (EOF). In the daemon, returns the pipe's write end,
    to be written to once listening; raises `DaemonParent` in the starting process.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child != 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as readiness:
            ready = readiness.read(1)
        os.waitpid(child, 0)  # the intermediate process, gone right after its own fork
        raise DaemonParent(0 if ready else 1)
    os.close(read_end)
    os.setsid()
    # A second fork: the daemon is no session leader, so it never gains a controlling tty.
    if os.fork() != 0:
        os._exit(0)
    with contextlib.suppress(OSError):
        os.chdir("/")
    if close_stdio:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
    return write_end


def port_file_directory(options: RelaydOptions) -> Path:
    return options.run_dir / RELAYD_RUN_SUBDIR


def write_value_file(path: Path, value: int) -> None:
    """Write "VALUE\\n" to `path` atomically, so a reader never sees a partial number."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{value}\n", encoding="ascii")
    os.replace(temporary, path)


def write_pid_file(path: Path) -> None:
    path.write_text(f"{os.getpid()}\n", encoding="ascii")
    path.chmod(0o644)


class Readiness:
    """What happens once the server listens: port files, then the waiting processes."""

    def __init__(
        self, options: RelaydOptions, daemon_pipe: int | None, sig_parent_pid: int | None
    ) -> None:
        self._options = options
        self._daemon_pipe = daemon_pipe
        self._sig_parent_pid = sig_parent_pid
        self.port_files: list[Path] = []

    def __call__(self, ports: Mapping[str, int]) -> None:
        if self._options.dynamic_port_allocation:
            directory = port_file_directory(self._options)
            for listener in ("control", "data", "live"):
                if listener in ports:
                    path = directory / f"{listener}.port"
                    write_value_file(path, ports[listener])
                    if path not in self.port_files:
                        self.port_files.append(path)
        _log.info("listening: %s", ", ".join(f"{k} port {v}" for k, v in ports.items()))
        if self._daemon_pipe is not None:
            os.write(self._daemon_pipe, b"\n")
            os.close(self._daemon_pipe)
            self._daemon_pipe = None
        if self._sig_parent_pid is not None:
            try:
                os.kill(self._sig_parent_pid, signal.SIGUSR1)
            except ProcessLookupError:
                _log.warning("cannot signal parent process %d: it is gone", self._sig_parent_pid)
            self._sig_parent_pid = None

    def remove_port_files(self) -> None:
        for path in self.port_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
