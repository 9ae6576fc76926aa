"""One relay on several cores (`--workers N`): a router process and N worker processes.

The router owns the ports. It accepts every connection and passes it, with `SCM_RIGHTS`, to
the worker serving the traced host it comes from; the worker is a whole relay (the same
handlers, model and storage as a single-process pyrelayd) for the hosts it is given. All the
connections of one host (the session daemon's control connections and the consumers' data
connections, for every session) go to one worker, because they share sessions, streams and
trace chunks; a new host goes to the worker serving the fewest (`HostTable`). Packets never
pass through the router: a worker reads its peers' sockets itself.

Viewers see one relay: the router keeps each viewer connection and opens one viewer
connection to every worker over a socket pair; `LiveRouter` (protocol/liveroute.py) sends
each request to the worker owning the session or stream it names (ids are unique across
workers: `RelaySettings.id_shard`) or, for CONNECT, CREATE_NEW_SESSION and LIST_SESSIONS, to
all of them, and makes one reply of theirs.

A worker that dies is started again (its sessions are lost, as with a relay restart; its
peers reconnect to the new one); the health check reports the worker component meanwhile.
The router and every worker run their own event loop on their own core.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from pyrelayd.protocol.live import LiveFramer
from pyrelayd.protocol.liveroute import LiveRouter, Route
from pyrelayd.protocol.viewer import ProtocolError
from pyrelayd.server.health import Component
from pyrelayd.server.listener import Acceptor

if TYPE_CHECKING:
    from pyrelayd.config import RelaydOptions
    from pyrelayd.server.app import RelayDaemon

log = logging.getLogger(__name__)

#: Set in a worker's environment: "INDEX/COUNT/FD" (FD: its end of the router's socket pair).
WORKER_ENV = "PYRELAYD_WORKER"

# What the router sends a worker on their SOCK_SEQPACKET pair: one message per connection, a
# kind byte and the peer's address, with the connection's descriptor attached.
CONTROL, DATA, LIVE = b"C", b"D", b"L"
METRICS = b"M"  # a socket to write this worker's metrics and status to (`--metrics-port`)
OPTIONS = b"O"  # the first message: the relay's options (pickled: the worker is our child)
READY = b"R"  # worker to router: serving
BEAT = b"B"  # worker to router: its event loop turns (sent at each heartbeat)
_MESSAGE_MAX = 1 << 16

_READY_TIMEOUT_S = 60.0
_RESTART_DELAY_S = 1.0
_STOP_TIMEOUT_S = 10.0
_VIEWER_READ = 1 << 16
_MAX_WAITING = 4096
_PIECE = 256 * 1024


class HostTable:
    """Which worker serves each traced host: once chosen, always the same one (its control
    and data connections must meet), a new host going to the worker with the fewest hosts.
    The table remembers the `capacity` most recently seen hosts."""

    def __init__(self, worker_count: int, capacity: int = 1 << 18) -> None:
        self.capacity = capacity
        self.hosts: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.load = [0] * worker_count

    def worker_for(self, host: str) -> int:
        worker = self.hosts.get(host)
        if worker is not None:
            self.hosts.move_to_end(host)
            return worker
        if len(self.hosts) >= self.capacity:
            _, evicted = self.hosts.popitem(last=False)
            self.load[evicted] -= 1
        worker = min(range(len(self.load)), key=self.load.__getitem__)
        self.hosts[host] = worker
        self.load[worker] += 1
        return worker


def _peer_text(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


class WorkerProcess:
    """One worker process as the router sees it: its process and its end of the pair."""

    def __init__(self, index: int, count: int, options: RelaydOptions) -> None:
        self.index = index
        self.count = count
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.loop = asyncio.get_running_loop()
        self.ready = self.loop.create_future()
        self.started_at = 0.0
        self.last_beat = 0.0
        # Connections not passed yet: the worker is starting (again), or its end of the pair
        # is full (a unix datagram queue holds net.unix.max_dgram_qlen messages, 10 by
        # default): passed as soon as it is ready and can take them, in order.
        self.waiting: collections.deque[tuple[bytes, str, socket.socket]] = collections.deque()
        self.flushing = False  # waiting for the channel to be writable

    def spawn(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            env[WORKER_ENV] = f"{self.index}/{self.count}/{theirs.fileno()}"
            env.pop("NOTIFY_SOCKET", None)  # only the router talks to systemd
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyrelayd.server.workers"],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.started_at = time.monotonic()
        mine.sendall(OPTIONS + pickle.dumps(self.options))
        mine.setblocking(False)
        self.channel = mine

    def give(self, kind: bytes, peer: str, sock: socket.socket) -> None:
        """Pass `sock` to the worker now or as soon as it can take it (never blocking the
        router); `sock` is ours to close either way. Raises OSError when too many wait."""
        if len(self.waiting) >= _MAX_WAITING:
            sock.close()
            raise OSError(f"{_MAX_WAITING} connections already wait for worker {self.index}")
        self.waiting.append((kind, peer, sock))
        self.flush()

    def flush(self) -> None:
        """Pass what waits, in order, while the worker is ready and its channel takes it."""
        if self.channel is None or not self.ready.done() or self.ready.cancelled() \
                or self.ready.exception() is not None:
            return
        while self.waiting:
            kind, peer, sock = self.waiting[0]
            try:
                socket.send_fds(self.channel, [kind + peer.encode()], [sock.fileno()])
            except (BlockingIOError, InterruptedError):
                if not self.flushing:
                    self.loop.add_writer(self.channel.fileno(), self._writable)
                    self.flushing = True
                return
            except OSError as error:
                log.error("connection from %s: cannot pass it to worker %d: %s; closed",
                          peer, self.index, error)
            self.waiting.popleft()
            sock.close()
        self._stop_flushing()

    def _writable(self) -> None:
        self.flush()

    def _stop_flushing(self) -> None:
        if self.flushing and self.channel is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(self.channel.fileno())
        self.flushing = False

    def drop_waiting(self) -> None:
        for _kind, _peer, sock in self.waiting:
            sock.close()
        self.waiting.clear()

    def close(self) -> None:
        self._stop_flushing()
        if self.channel is not None:
            with contextlib.suppress(OSError):
                self.channel.close()
            self.channel = None


class Router:
    """The router's side: workers started and watched, connections passed, viewers routed."""

    def __init__(self, daemon: RelayDaemon, count: int) -> None:
        self.daemon = daemon
        self.options = daemon.options
        self.loop = asyncio.get_running_loop()
        self.hosts = HostTable(count)
        self.workers = [WorkerProcess(index, count, daemon.options) for index in range(count)]
        self.acceptors: list[Acceptor] = []
        self.viewers: set[asyncio.Task[None]] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # watching dead workers
        self.viewers_accepted = 0
        self.stopping = False
        self.serving = False  # all workers started once: from then on, a dead one restarts

    # ----------------------------------------------------------------- workers

    async def start_workers(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        try:
            await asyncio.wait_for(asyncio.gather(*(w.ready for w in self.workers)),
                                   _READY_TIMEOUT_S)
        except TimeoutError:
            raise OSError(f"the workers did not start within {_READY_TIMEOUT_S:g} s") from None
        self.serving = True

    def _spawn(self, worker: WorkerProcess) -> None:
        worker.spawn()
        assert worker.channel is not None
        self.loop.add_reader(worker.channel.fileno(), self._from_worker, worker)
        log.info("worker %d: started (pid %d)", worker.index,
                 worker.process.pid if worker.process else -1)

    def _from_worker(self, worker: WorkerProcess) -> None:
        assert worker.channel is not None
        try:
            message = worker.channel.recv(_MESSAGE_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            message = b""
        if message == BEAT:
            worker.last_beat = time.monotonic()
            return
        if message == READY:
            worker.last_beat = time.monotonic()
            if not worker.ready.done():
                worker.ready.set_result(None)
            self.check_workers()
            worker.flush()
            return
        if message:
            log.warning("worker %d: unexpected message %r", worker.index, message[:16])
            return
        self.loop.remove_reader(worker.channel.fileno())
        worker.close()
        task = self.loop.create_task(self._worker_gone(worker))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _worker_gone(self, worker: WorkerProcess) -> None:
        status = await self.loop.run_in_executor(None, worker.process.wait) \
            if worker.process is not None else None
        if self.stopping:
            worker.drop_waiting()
            return
        if not self.serving:  # the relay is starting: it fails to start
            worker.drop_waiting()
            if not worker.ready.done():
                worker.ready.set_exception(OSError(f"worker {worker.index} exited with status "
                                                   f"{status} before it was ready"))
            return
        log.error("worker %d (pid %s) exited with status %s: its sessions are lost; starting "
                  "it again", worker.index, worker.process.pid if worker.process else "?",
                  status)
        self.daemon.health.fail(Component.WORKER)
        if worker.ready.done():
            worker.ready = self.loop.create_future()  # connections wait for the new one
        if time.monotonic() - worker.started_at < 10 * _RESTART_DELAY_S:
            await asyncio.sleep(_RESTART_DELAY_S)
        if not self.stopping:
            try:
                self._spawn(worker)
            except OSError as error:
                log.error("worker %d: cannot start: %s", worker.index, error)
                worker.drop_waiting()

    def check_workers(self) -> None:
        """The health check's worker bit: set while a worker is down, starting, or has not
        beaten for the health check's delta (its event loop is stuck)."""
        now = time.monotonic()
        delta = self.daemon.health.delta
        healthy = all(w.ready.done() and not w.ready.cancelled() and w.ready.exception() is None
                      and now - w.last_beat < delta for w in self.workers)
        if healthy:
            self.daemon.health.failed.discard(Component.WORKER)
        else:
            self.daemon.health.fail(Component.WORKER)

    async def stop_workers(self) -> None:
        self.stopping = True
        for worker in self.workers:
            worker.drop_waiting()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if process.poll() is None:
                log.error("worker %d did not stop in %g s: killed", worker.index,
                          _STOP_TIMEOUT_S)
                process.kill()
                await self.loop.run_in_executor(None, process.wait)
            if worker.channel is not None:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(worker.channel.fileno())
            worker.close()

    def forward_signal(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    # ----------------------------------------------------------------- connections

    def listen(self, name: str, listener: socket.socket) -> None:
        kind = CONTROL if name == "control" else DATA

        def accepted(sock: socket.socket, address: tuple[str, int]) -> None:
            self._pass(kind, sock, address)

        acceptor = Acceptor(name, listener, accepted)
        acceptor.start()
        self.acceptors.append(acceptor)

    def listen_live(self, listener: socket.socket) -> Acceptor:
        def accepted(sock: socket.socket, address: tuple[str, int]) -> None:
            self.viewers_accepted += 1
            task = self.loop.create_task(self._viewer(sock, address))
            self.viewers.add(task)
            task.add_done_callback(self.viewers.discard)

        acceptor = Acceptor("live", listener, accepted)
        acceptor.start()
        self.acceptors.append(acceptor)
        return acceptor

    def _pass(self, kind: bytes, sock: socket.socket, address: tuple[str, int]) -> None:
        worker = self.workers[self.hosts.worker_for(address[0])]
        try:
            worker.give(kind, _peer_text(address), sock)
        except OSError as error:
            log.error("%s connection from %s: cannot pass it to worker %d: %s; closed",
                      "control" if kind == CONTROL else "data", _peer_text(address),
                      worker.index, error)

    async def _viewer(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Serve one viewer: its requests to the workers, their replies back."""
        name = f"viewer {_peer_text(address)}"
        log.info("%s: connected", name)
        links: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        writer: asyncio.StreamWriter | None = None
        reason = "connection closed by the viewer"
        try:
            for worker in self.workers:
                mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    worker.give(LIVE, _peer_text(address), theirs)
                except OSError:
                    mine.close()
                    raise
                links.append(await asyncio.open_unix_connection(sock=mine))
            reader, writer = await asyncio.open_connection(sock=sock)
            router = LiveRouter(len(self.workers))
            framer = LiveFramer()
            while data := await reader.read(_VIEWER_READ):
                framer.feed(data)
                while True:
                    try:
                        request = framer.next_request()
                    except ProtocolError as error:
                        reason = str(error)
                        if error.reply:
                            writer.write(error.reply)
                            await writer.drain()
                        return
                    if request is None:
                        break
                    route = router.route(request)
                    for index in route.workers:
                        links[index][1].write(route.data)
                    if len(route.workers) == 1:  # passed on as it comes, never held whole
                        await self._pass_reply(links[route.workers[0]][0], writer, router,
                                               route)
                        continue
                    replies = [await self._reply(links[index][0], router, route)
                               for index in route.workers]
                    writer.write(router.combine(route, replies))
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as error:
            reason = str(error) or type(error).__name__
        finally:
            log.info("%s: disconnected (%s)", name, reason)
            for _, link in links:
                link.close()
            if writer is not None:
                writer.close()
            else:
                sock.close()

    @staticmethod
    async def _pass_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          router: LiveRouter, route: Route) -> None:
        """One worker's reply to the viewer, a piece at a time: its header (whose size the
        layout gives for an empty buffer) says how much follows (GET_PACKET: up to 64 MiB)."""
        head = await reader.readexactly(router.reply_missing(route, b""))
        left = router.reply_missing(route, head)
        writer.write(head)
        while left > 0:
            piece = await reader.read(min(left, _PIECE))
            if not piece:
                raise asyncio.IncompleteReadError(piece, left)
            left -= len(piece)
            writer.write(piece)
            await writer.drain()
        await writer.drain()

    @staticmethod
    async def _reply(reader: asyncio.StreamReader, router: LiveRouter, route: Route) -> bytes:
        reply = b""
        while (missing := router.reply_missing(route, reply)) > 0:
            reply += await reader.readexactly(missing)
        return reply

    async def close(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        for task in list(self.viewers):
            task.cancel()
        for task in list(self.viewers):
            with contextlib.suppress(BaseException):
                await task


# --------------------------------------------------------------------------- worker side


class WorkerChannel:
    """A worker's end of the router's socket pair: connections in, readiness out."""

    def __init__(self, daemon: RelayDaemon, channel: socket.socket) -> None:
        self.daemon = daemon
        self.channel = channel
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.channel.setblocking(False)
        self.loop.add_reader(self.channel.fileno(), self._receive)
        self.channel.send(READY)

    def beat(self) -> None:
        """Tell the router this worker's loop turns (from the loop's heartbeat)."""
        with contextlib.suppress(OSError):  # full (the router is busy) or gone: next beat
            self.channel.send(BEAT)

    def _receive(self) -> None:
        for _ in range(64):
            try:
                message, fds, _flags, _address = socket.recv_fds(self.channel, _MESSAGE_MAX, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.error("the router's channel failed: %s; stopping", error)
                message, fds = b"", []
            if not message and not fds:
                self.close()
                log.info("the router is gone: stopping")
                self.daemon.stop()
                return
            if len(fds) != 1 or message[:1] not in (CONTROL, DATA, LIVE, METRICS):
                for fd in fds:
                    os.close(fd)
                log.error("unexpected message from the router: %r", message[:16])
                continue
            self.daemon.adopt(message[:1], message[1:].decode(errors="replace"), fds[0])

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.channel.fileno())
        with contextlib.suppress(OSError):
            self.channel.close()


def worker_main() -> int:
    """A worker process (started by the router with WORKER_ENV set)."""
    from pyrelayd import cli
    from pyrelayd.server import app

    index_text, count_text, fd_text = os.environ.pop(WORKER_ENV).split("/")
    index, count = int(index_text), int(count_text)
    channel = socket.socket(fileno=int(fd_text))
    message = channel.recv(_MESSAGE_MAX)
    if not message.startswith(OPTIONS):
        print(f"pyrelayd worker {index}: no options from the router", file=sys.stderr)
        return 1
    options: RelaydOptions = pickle.loads(message[len(OPTIONS):])
    cli.configure_logging(options)
    _prefix_log_records(f"worker {index}: ")
    # The router stops the workers (SIGTERM); ^C in a terminal reaches them too.
    return app.run_worker(options, channel, (index, count))


def _prefix_log_records(prefix: str) -> None:
    factory = logging.getLogRecordFactory()

    def make(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.msg = prefix + str(record.msg)
        return record

    logging.setLogRecordFactory(make)


if __name__ == "__main__":
    sys.exit(worker_main())
