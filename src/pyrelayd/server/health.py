"""The health socket of lttng-relayd: which components are unhealthy, for liblttng-ctl.

`lttng_health_query()` connects to the Unix socket, sends a 4-byte `HEALTH_CMD_CHECK` and reads
an 8-byte bitmask of unhealthy components, both in host byte order; one query per connection.
The bits are lttng-relayd's thread types. pyrelayd runs all of them on one event loop, so:

* `HealthMonitor` decides. The loop beats every `delta / 4` (at most every second); when the
  last beat is older than `delta` (20 s, as lttng-relayd) the loop is stalled, and the
  components that cannot progress are unhealthy: the one whose code the loop is stuck in (read
  from its Python stack) and those with work waiting (a connection in a listener's backlog,
  bytes unread on a peer's socket). When neither can be told, every component is. A listener
  that stopped listening (e.g. `ss -K`) marks its component unhealthy for good.
* `HealthServer` answers on a thread of its own, so that it answers while the loop is stuck.
  Several clients are served at once; one that stays silent is dropped after a few seconds.
  What a client sends and gets back (the request, its reply, or a close without reply for
  another command) is pyrelayd.protocol.health's business: this module moves the bytes.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import grp
import logging
import os
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from pyrelayd.protocol.health import Check, HealthRequestReader, encode_reply

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 5.0  # a client that sends nothing for this long is dropped
MAX_CLIENTS = 32
RUN_SUBDIRECTORY = "relayd"  # health sockets (and port files) go to RUNDIR/relayd/


class Component(enum.IntEnum):
    """lttng-relayd's thread types, i.e. the bits of the health reply."""

    DISPATCHER = 0
    WORKER = 1
    LISTENER = 2  # control and data ports
    LIVE_DISPATCHER = 3
    LIVE_WORKER = 4
    LIVE_LISTENER = 5

    @property
    def label(self) -> str:
        """The name liblttng-ctl gives it."""
        return "Relay daemon " + self.name.lower().replace("_", " ")


ALL_COMPONENTS = frozenset(Component)
# Accepting a connection also hands it over (lttng-relayd's dispatcher threads).
_DISPATCHER_OF = {Component.LISTENER: Component.DISPATCHER,
                  Component.LIVE_LISTENER: Component.LIVE_DISPATCHER}
# Where the loop can be stuck: the module of a frame on its stack, innermost first.
_COMPONENT_OF_MODULE = {
    "pyrelayd.server.control": Component.WORKER,
    "pyrelayd.server.data": Component.WORKER,
    "pyrelayd.server.live": Component.LIVE_WORKER,
    "pyrelayd.server.listener": Component.LIVE_LISTENER,  # the live port's acceptor
}
_COMPONENT_OF_FUNCTION = {
    ("pyrelayd.server.control", "connection_made"): Component.DISPATCHER,
    ("pyrelayd.server.data", "connection_made"): Component.DISPATCHER,
    ("pyrelayd.server.live", "adopt"): Component.LIVE_DISPATCHER,
}


class ListeningSocket(Protocol):
    def fileno(self) -> int: ...
    def getsockopt(self, level: int, option: int, /) -> int: ...


def default_socket_path(run_dir: Path, pid: int) -> Path:
    """lttng-relayd's health socket path when $LTTNG_RELAYD_HEALTH does not give one."""
    return run_dir / RUN_SUBDIRECTORY / f"health-{pid}"


def tracing_group_id(name: str) -> int:
    """The tracing group's id; the root group's when there is no such group (as lttng)."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return 0


def make_run_directory(path: Path, tracing_group: str) -> None:
    """Create an LTTng run directory as lttng does: private; root:tracing 0755 as root."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.getuid() != 0:
        return
    os.chown(path, 0, tracing_group_id(tracing_group))
    path.chmod(0o755)


def is_listening(sock: ListeningSocket) -> bool:
    try:
        return sock.fileno() >= 0 and sock.getsockopt(socket.SOL_SOCKET,
                                                      socket.SO_ACCEPTCONN) == 1
    except (OSError, ValueError):
        return False


def _readable(fds: Iterable[int]) -> set[int]:
    poller = select.poll()
    for fd in fds:
        if fd >= 0:
            poller.register(fd, select.POLLIN)
    try:
        return {fd for fd, events in poller.poll(0) if events & select.POLLIN}
    except OSError:
        return set()


class HealthMonitor:
    """What is unhealthy. `beat`, `add_listener`, `check_listeners` and `fail` run on the
    event loop; `unhealthy` runs on the health thread (and reads the loop's state without
    locks: while the loop is stalled it changes nothing)."""

    def __init__(self, delta: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delta = delta
        self.clock = clock
        self.beat_interval = max(0.01, min(1.0, delta / 4))
        self.loop_thread_id = threading.get_ident()
        self.last_beat = clock()
        self.failed: set[Component] = set()  # sticky: listeners that died
        self.listeners: list[tuple[Component, str, ListeningSocket]] = []
        # The descriptors of open peer connections, by component (called while stalled).
        self.connection_fds: Callable[[], Iterable[tuple[Component, int]]] = tuple

    # ------------------------------------------------------------------ event loop side

    def beat(self) -> None:
        self.last_beat = self.clock()

    def add_listener(self, component: Component, name: str, sock: ListeningSocket) -> None:
        self.listeners.append((component, name, sock))

    def fail(self, component: Component) -> None:
        self.failed.add(component)

    def check_listeners(self) -> list[str]:
        """Mark the components of listeners that stopped listening; their names, once."""
        dead = [(component, name, sock) for component, name, sock in self.listeners
                if not is_listening(sock)]
        for entry in dead:
            self.listeners.remove(entry)
            self.fail(entry[0])
        return [name for _component, name, _sock in dead]

    # ------------------------------------------------------------------ any thread

    def stalled_for(self) -> float:
        """Seconds since the loop last beat, when that is more than `delta`; else 0."""
        age = self.clock() - self.last_beat
        return age if age > self.delta else 0.0

    def unhealthy(self) -> set[Component]:
        bad = set(self.failed)
        bad.update(component for component, _name, sock in list(self.listeners)
                   if not is_listening(sock))
        if self.stalled_for():
            bad |= self._stalled_components()
        return bad

    def bitmask(self) -> int:
        return sum(1 << component for component in self.unhealthy())

    def stuck_in(self) -> Component | None:
        """The component whose code is on the loop thread's stack, innermost first."""
        frame = sys._current_frames().get(self.loop_thread_id)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            component = _COMPONENT_OF_FUNCTION.get((module, frame.f_code.co_name),
                                                   _COMPONENT_OF_MODULE.get(module))
            if component is not None:
                return component
            frame = frame.f_back
        return None

    def waiting_work(self) -> set[Component]:
        """Components with work the stalled loop does not do: connections waiting in a
        listener's backlog, bytes unread on peer connections."""
        waiting: set[Component] = set()
        listeners = {sock.fileno(): component for component, _name, sock in list(self.listeners)}
        for fd in _readable(listeners):
            waiting.add(listeners[fd])
            waiting.add(_DISPATCHER_OF[listeners[fd]])
        try:
            connections = dict((fd, component) for component, fd in self.connection_fds())
        except RuntimeError:  # a set changed size: the loop moves, after all
            connections = {}
        waiting.update(connections[fd] for fd in _readable(connections))
        return waiting

    def _stalled_components(self) -> set[Component]:
        components = self.waiting_work()
        stuck = self.stuck_in()
        if stuck is not None:
            components.add(stuck)
        return components or set(ALL_COMPONENTS)


class HealthServer:
    """Serves the health socket at `path` on a thread of its own."""

    def __init__(self, path: Path, monitor: HealthMonitor, *, tracing_group: str = "tracing",
                 client_timeout: float = CLIENT_TIMEOUT_S,
                 on_failure: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.monitor = monitor
        self.tracing_group = tracing_group
        self.client_timeout = client_timeout
        self.on_failure = on_failure  # called from the health thread if it fails
        self._listener: socket.socket | None = None
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and listen (raises OSError when that fails), then serve in a thread."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            listener.bind(str(self.path))
            if os.getuid() == 0:
                os.chown(self.path, 0, tracing_group_id(self.tracing_group))
                self.path.chmod(0o660)
            listener.listen(MAX_CLIENTS)
        except OSError as error:
            listener.close()
            raise OSError(f"cannot create the health socket {self.path}: "
                          f"{error.strerror or error}") from error
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="health", daemon=True)
        self._thread.start()
        log.info("health socket %s", self.path)

    def stop(self) -> None:
        """Stop answering and remove the socket file."""
        if self._thread is not None:
            with contextlib.suppress(OSError):
                self._wake_write.send(b"x")
            self._thread.join(5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._wake_read.close()
        self._wake_write.close()

    # ------------------------------------------------------------------ health thread

    def _serve(self) -> None:
        assert self._listener is not None
        clients: dict[socket.socket, tuple[HealthRequestReader, float]] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_read, selectors.EVENT_READ)
            selector.register(self._listener, selectors.EVENT_READ)
            try:
                while True:
                    now = time.monotonic()
                    timeout = min((d for _b, d in clients.values()), default=now + 60) - now
                    for key, _events in selector.select(max(0.0, timeout)):
                        if key.fileobj is self._wake_read:
                            return
                        if key.fileobj is self._listener:
                            self._accept(selector, clients)
                        else:
                            sock = key.fileobj
                            assert isinstance(sock, socket.socket)
                            if self._receive(sock, clients[sock][0]):
                                self._close(selector, clients, sock)
                    now = time.monotonic()
                    for sock in [s for s, (_b, d) in clients.items() if d <= now]:
                        log.debug("health client silent for %g s: closed", self.client_timeout)
                        self._close(selector, clients, sock)
            except Exception:
                log.exception("health thread failed")
                self.on_failure()
            finally:
                for sock in list(clients):
                    sock.close()

    def _accept(self, selector: selectors.BaseSelector,
                clients: dict[socket.socket, tuple[HealthRequestReader, float]]) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("health socket: cannot accept a client: %s", error)
                    return
                raise
            if len(clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            clients[sock] = (HealthRequestReader(), time.monotonic() + self.client_timeout)
            selector.register(sock, selectors.EVENT_READ)

    def _receive(self, sock: socket.socket, reader: HealthRequestReader) -> bool:
        """Read what the client sent; True once its connection is done with."""
        try:
            data = sock.recv(reader.wanted)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        event = reader.receive(data)
        if event is None:
            return False
        if not isinstance(event, Check):
            if event.problem is not None:
                log.warning("health socket: %s: closed without reply", event.problem)
            return True
        bitmask = self.monitor.bitmask()
        if bitmask:
            names = ", ".join(c.label for c in Component if bitmask & (1 << c))
            stalled = self.monitor.stalled_for()
            log.warning("health check: unhealthy: %s%s", names,
                        f" (event loop stalled for {stalled:.0f} s)" if stalled else "")
        with contextlib.suppress(OSError):
            sock.send(encode_reply(bitmask))  # 8 bytes always fit in an empty socket buffer
        return True

    @staticmethod
    def _close(selector: selectors.BaseSelector,
               clients: dict[socket.socket, tuple[HealthRequestReader, float]],
               sock: socket.socket) -> None:
        selector.unregister(sock)
        del clients[sock]
        sock.close()
