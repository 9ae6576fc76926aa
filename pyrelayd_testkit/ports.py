"""TCP ports for peers that cannot be told to take any free port.

pyrelayd and lttng-relayd 2.14+ (the 2.16 of the chroot) take port 0 and report the ports they
got in port files (`--dynamic-port-allocation`, `read_port_files`, see
`pyrelayd_testkit.relays`); lttng-relayd 2.13 and the session daemon's agent port cannot, so
they get a port claimed here: free on 127.0.0.1 and claimed with an O_EXCL file per port, so
that concurrent test processes (pytest-xdist workers) never get the same one.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path

# --------------------------------------------------------------------------------------------
# TCP ports


_PORT_REGISTRY = Path(tempfile.gettempdir()) / "pyrelayd-test-ports"
# Below the Linux ephemeral range (32768-60999), so outgoing connections never take them.
_PORT_RANGE = (20000, 32000)
_reserved_here: set[int] = set()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserve(port: int) -> bool:
    """Claim `port` for this process across pytest-xdist workers (an O_EXCL file per port)."""
    _PORT_REGISTRY.mkdir(exist_ok=True)
    marker = _PORT_REGISTRY / str(port)
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(marker.read_text() or "0")
            except (FileNotFoundError, ValueError):
                owner = 0
            if owner and _pid_alive(owner):
                return False
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()  # stale claim of a dead test process
            continue
        with os.fdopen(fd, "w") as file:
            file.write(str(os.getpid()))
        _reserved_here.add(port)
        return True
    return False


def free_tcp_ports(count: int) -> list[int]:
    """`count` distinct TCP ports, free on 127.0.0.1 and claimed by this process.

    Ports are claimed until `release_tcp_ports` (or until this process exits: claims of dead
    processes are reclaimed), so concurrent pytest-xdist workers never get the same one.
    """
    ports: list[int] = []
    rng = random.Random()
    for _ in range(count):
        for _attempt in range(1000):
            port = rng.randrange(*_PORT_RANGE)
            if port in _reserved_here or not _port_is_free(port):
                continue
            if _reserve(port):
                ports.append(port)
                break
        else:
            raise RuntimeError("no free TCP port found")
    return ports


def release_tcp_ports(ports: Sequence[int]) -> None:
    for port in ports:
        if port in _reserved_here:
            _reserved_here.discard(port)
            with contextlib.suppress(FileNotFoundError):
                (_PORT_REGISTRY / str(port)).unlink()


@atexit.register
def _release_all_tcp_ports() -> None:
    release_tcp_ports(sorted(_reserved_here))


def listening_tcp_ports() -> set[int]:
    """Ports in LISTEN state on this network namespace (from /proc/net/tcp{,6})."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as file:
            next(file)
            for line in file:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports



def listening_ports_of(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket descriptors matched against
    /proc/PID/net/tcp{,6}); empty once it is gone."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                open(f"/proc/{pid}/net/{table}") as file:
            next(file)
            for line in file:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # TCP_LISTEN, ours
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def read_port_files(run_dir: Path) -> dict[str, int] | None:
    """The ports a relay started with `--dynamic-port-allocation` wrote to
    RUN_DIR/relayd/{control,data,live}.port, or None until all three are there.

    A file counts once it holds "PORT\\n": pyrelayd, and lttng-relayd for control and data,
    write it whole (a temporary file renamed), but lttng-relayd's live.port is created first
    and written after (`utils_create_pid_file`), so it can be seen empty.
    """
    ports = {}
    for name in ("control", "data", "live"):
        try:
            text = (run_dir / "relayd" / f"{name}.port").read_text()
        except FileNotFoundError:
            return None
        if not text.endswith("\n") or not text.strip().isdigit():
            return None
        ports[name] = int(text)
    return ports
