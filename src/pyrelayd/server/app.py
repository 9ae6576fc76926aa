"""The relay daemon process: listeners, connection tracking, signals and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING

from pyrelayd import logs
from pyrelayd.config import RELAYD_FD_POOL_SIZE_RESERVE, ListenAddress, RelaydOptions, TcpKeepAlive
from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.server import notify
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from pyrelayd.server.health import (
    RUN_SUBDIRECTORY,
    Component,
    HealthMonitor,
    HealthServer,
    default_socket_path,
    make_run_directory,
)
from pyrelayd.server.live import LiveServer
from pyrelayd.server.timeouts import Stallable, StallSweeper, stall_timeout

if TYPE_CHECKING:
    from pyrelayd.server.metrics import MetricsEndpoint
    from pyrelayd.server.workers import Router, WorkerChannel

log = logging.getLogger(__name__)

ReadyCallback = Callable[[dict[str, int]], None]


def fd_budget(fd_pool_size: int | None) -> int:
    """Descriptors the relay may have open at once: the pool size, or the process limit."""
    if fd_pool_size is None:
        fd_pool_size, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if fd_pool_size == resource.RLIM_INFINITY:
            fd_pool_size = 1 << 20
    return fd_pool_size


def open_descriptor_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listing the directory
    except OSError:
        return 0


def _apply_keep_alive(sock: socket.socket, settings: TcpKeepAlive) -> None:
    if not settings.enabled:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = (
        (socket.TCP_KEEPIDLE, settings.idle_time_s),
        (socket.TCP_KEEPINTVL, settings.probe_interval_s),
        (socket.TCP_KEEPCNT, settings.max_probe_count),
        (socket.TCP_USER_TIMEOUT, settings.abort_threshold_s * 1000
         if settings.abort_threshold_s is not None else None),
    )
    for option, value in options:
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class RelayDaemon:
    """The relay process. Three shapes: a whole relay (the default); with `--workers N`,
    the router in front of N workers (server/workers.py); or one of those workers, which
    gets its connections from the router's `channel` instead of listening."""

    def __init__(self, options: RelaydOptions, *, shard: tuple[int, int] = (0, 1),
                 channel: socket.socket | None = None) -> None:
        self.options = options
        self.relay = Relay(RelaySettings(
            output_root=options.output_root,
            group_output_by=options.group_output_by,
            allow_clear=options.allow_clear,
            fd_pool_size=None,  # limited in `start`, once what is already open is known
            id_shard=shard,
        ))
        self.fd_budget = fd_budget(options.fd_pool_size)
        if options.fd_pool_size is not None and shard[1] > 1:  # --fd-pool-size: the total
            self.fd_budget = max(RELAYD_FD_POOL_SIZE_RESERVE, self.fd_budget // shard[1])
        self.channel = channel
        self.worker_channel: WorkerChannel | None = None
        self.router: Router | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[asyncio.BaseProtocol] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.ports: dict[str, int] = {}
        self._stopping = asyncio.Event()
        self.live: LiveServer | None = None
        self.metrics: MetricsEndpoint | None = None
        # Operations: health socket, its loop heartbeat, stalled peers, systemd's watchdog.
        self.health = HealthMonitor(options.health_check_delta_s)
        self.health.connection_fds = self._connection_fds
        self.health_server: HealthServer | None = None
        self.sweeper = StallSweeper(stall_timeout(options.network_socket_timeout_ms),
                                    self._stallable_connections)
        self._close_listener: dict[str, Callable[[], None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def _listen(self, name: str, address: ListenAddress,
                      factory: Callable[[], asyncio.BaseProtocol]) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if address.ipv6 else socket.AF_INET

        def protocol() -> asyncio.BaseProtocol:
            return factory()

        server = await loop.create_server(
            protocol, host=address.host, port=address.port, family=family,
            reuse_address=True, backlog=1024,
        )
        for sock in server.sockets:
            self.ports[name] = sock.getsockname()[1]
            self.health.add_listener(Component.LISTENER, name, sock)
        self.servers.append(server)
        self._close_listener[name] = server.close
        log.info("%s listening on %s port %d", name, address.host, self.ports[name])

    def _control_protocol(self) -> asyncio.BaseProtocol:
        self.relay.counters.connections_accepted["control"] += 1
        return _with_socket_options(ControlProtocol(self.relay, self.connections),
                                    self.options.tcp_keep_alive)

    def _data_protocol(self) -> asyncio.BaseProtocol:
        self.relay.counters.connections_accepted["data"] += 1
        return _with_socket_options(DataProtocol(self.relay, self.connections),
                                    self.options.tcp_keep_alive)

    async def start(self) -> None:
        self.options.output_root.mkdir(parents=True, exist_ok=True)
        if self.channel is not None:
            await self._start_worker(self.channel)
            return
        if self.options.workers > 1:
            await self._start_router(self.options.workers)
            return
        control, data = self._control_protocol, self._data_protocol
        await self._listen("control", self.options.control, control)
        await self._listen("data", self.options.data, data)
        self.live = LiveServer(self.relay, self._live_listener(self.options.live))
        self.live.start()
        self.health.add_listener(Component.LIVE_LISTENER, "live", self.live.acceptor.listener)
        self._close_listener["live"] = self.live.acceptor.close
        if self.options.metrics is not None:
            await self._start_metrics(self.options.metrics)
        self._start_operations()
        # What the pool may use: the budget minus what is open now (standard streams, the
        # event loop's own descriptors, listeners) and a margin for sockets being accepted.
        untracked = open_descriptor_count() + RELAYD_FD_POOL_SIZE_RESERVE
        self.relay.fd_pool.limit = max(1, self.fd_budget - untracked)
        log.info("fd pool: %d descriptors for stream files, sockets and viewers",
                 self.relay.fd_pool.limit)

    # ----------------------------------------------------------------- --workers

    async def _start_router(self, count: int) -> None:
        from pyrelayd.server.workers import Router

        self.router = router = Router(self, count)
        listeners = {name: self._bind(name, address) for name, address in
                     (("control", self.options.control), ("data", self.options.data),
                      ("live", self.options.live))}
        try:
            await router.start_workers()
        except BaseException:
            for listener in listeners.values():
                listener.close()
            await router.stop_workers()
            raise
        for name in ("control", "data"):
            router.listen(name, listeners[name])
            self.health.add_listener(Component.LISTENER, name, listeners[name])
            self._close_listener[name] = router.acceptors[-1].close
        acceptor = router.listen_live(listeners["live"])
        self.health.add_listener(Component.LIVE_LISTENER, "live", listeners["live"])
        self._close_listener["live"] = acceptor.close
        if self.options.metrics is not None:
            from pyrelayd.server.metrics import RouterMetricsEndpoint

            self.metrics = RouterMetricsEndpoint(self, router)
            self.ports["metrics"] = await self.metrics.start(self.options.metrics)
        self._start_operations()
        log.info("%d workers serving", count)

    async def _start_worker(self, channel: socket.socket) -> None:
        from pyrelayd.server.workers import WorkerChannel

        self.live = LiveServer(self.relay, None)
        if self.options.metrics is not None:  # served by the router, from what we send it
            from pyrelayd.server.metrics import MetricsEndpoint

            self.metrics = MetricsEndpoint(self)
            self.metrics.loop_lag.start()
        self._start_operations()
        untracked = open_descriptor_count() + RELAYD_FD_POOL_SIZE_RESERVE
        self.relay.fd_pool.limit = max(1, self.fd_budget - untracked)
        self.worker_channel = WorkerChannel(self, channel)
        self.worker_channel.start()

    def adopt(self, kind: bytes, peer: str, fd: int) -> None:
        """A connection the router passed to this worker: serve it as if accepted here."""
        from pyrelayd.server import workers

        try:
            sock = socket.socket(fileno=fd)
        except OSError as error:
            os.close(fd)
            log.error("connection from %s: unusable descriptor: %s", peer, error)
            return
        if kind == workers.METRICS:
            task = asyncio.get_running_loop().create_task(self._send_metrics(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if kind == workers.LIVE:
            assert self.live is not None
            host, _, port = peer.rpartition(":")
            self.live.adopt(sock, (host, int(port) if port.isdigit() else 0))
            return
        factory = self._control_protocol if kind == workers.CONTROL else self._data_protocol
        loop = asyncio.get_running_loop()

        async def connect() -> None:
            try:
                await loop.connect_accepted_socket(factory, sock)
            except OSError as error:
                log.error("connection from %s: %s", peer, error)
                sock.close()

        task = loop.create_task(connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_metrics(self, sock: socket.socket) -> None:
        """This worker's metrics and status, for the router's /metrics and /status."""
        try:
            body = b"" if self.metrics is None else await self.metrics.snapshot()
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_sendall(sock, body)
        except OSError as error:
            log.warning("cannot send metrics to the router: %s", error)
        finally:
            sock.close()

    def _bind(self, name: str, address: ListenAddress) -> socket.socket:
        family = socket.AF_INET6 if address.ipv6 else socket.AF_INET
        infos = socket.getaddrinfo(address.host, address.port, family, socket.SOCK_STREAM)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        self.ports[name] = sock.getsockname()[1]
        log.info("%s listening on %s port %d", name, address.host, self.ports[name])
        return sock

    # ----------------------------------------------------------------- operations

    def _start_operations(self) -> None:
        """The health socket (a listener like the others: bound before readiness), the
        loop's heartbeat, the stall sweep and systemd's watchdog."""
        if self.channel is not None:  # a worker: the router has the health socket
            self._beat()
            self.sweeper.start()
            return
        run_dir = self.options.run_dir
        for directory in (run_dir, run_dir / RUN_SUBDIRECTORY):
            make_run_directory(directory, self.options.tracing_group)
        path = self.options.health_socket or default_socket_path(run_dir, os.getpid())
        loop = asyncio.get_running_loop()

        def health_thread_failed() -> None:  # as lttng-relayd: the relay stops
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                loop.call_soon_threadsafe(self.stop)

        self.health_server = HealthServer(path, self.health,
                                          tracing_group=self.options.tracing_group,
                                          on_failure=health_thread_failed)
        self.health_server.start()
        self._beat()
        self.sweeper.start()
        watchdog = notify.watchdog_interval()
        if watchdog is not None:
            log.info("systemd watchdog: pinging every %g s", watchdog)
            self._timers["watchdog"] = loop.call_later(watchdog, self._ping_watchdog, watchdog)

    def _stop_operations(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self.sweeper.stop()
        if self.health_server is not None:
            self.health_server.stop()
            self.health_server = None

    def _beat(self) -> None:
        """The loop's heartbeat for the health check; it also notices dead listeners."""
        self.health.beat()
        if self.worker_channel is not None:
            self.worker_channel.beat()
        if self.router is not None:
            self.router.check_workers()
        for name in self.health.check_listeners():
            log.error("%s port: no longer listening; the health check reports it", name)
            close = self._close_listener.pop(name, None)
            if close is not None:
                close()  # a dead listener would keep the loop busy
        loop = asyncio.get_running_loop()
        self._timers["heartbeat"] = loop.call_later(self.health.beat_interval, self._beat)

    def _ping_watchdog(self, interval: float) -> None:
        # From the loop: a stalled loop stops pinging, and systemd restarts the relay.
        notify.notify(notify.WATCHDOG)
        loop = asyncio.get_running_loop()
        self._timers["watchdog"] = loop.call_later(interval, self._ping_watchdog, interval)

    def _stallable_connections(self) -> Iterator[Stallable]:
        for connection in self.connections:
            if isinstance(connection, (ControlProtocol, DataProtocol)):
                yield connection
        if self.live is not None:
            yield from self.live.connections

    def _connection_fds(self) -> Iterator[tuple[Component, int]]:
        """Peer sockets by component, for the health thread while the loop is stalled."""
        for connection in list(self.connections):
            transport = getattr(connection, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                yield Component.WORKER, sock.fileno()
        if self.live is not None:
            for viewer in list(self.live.connections):
                yield Component.LIVE_WORKER, viewer.fd

    async def _start_metrics(self, address: ListenAddress) -> None:
        # Imported only when asked for: a relay without metrics never loads prometheus_client.
        from pyrelayd.server.metrics import MetricsEndpoint

        self.metrics = MetricsEndpoint(self)
        self.ports["metrics"] = await self.metrics.start(address)

    def _live_listener(self, address: ListenAddress) -> socket.socket:
        return self._bind("live", address)

    def stop(self) -> None:
        self._stopping.set()

    async def serve(self, on_ready: ReadyCallback | None = None) -> None:
        try:
            await self.start()
            if on_ready is not None:
                on_ready(dict(self.ports))
            notify.notify(notify.READY)
            await self._stopping.wait()
            await self.shutdown()
        finally:
            self._stop_operations()

    async def shutdown(self) -> None:
        log.info("shutting down")
        notify.notify(notify.STOPPING)
        self._stop_operations()
        if self.metrics is not None:
            self.metrics.close()
        if self.router is not None:
            await self.router.close()
            await self.router.stop_workers()
        if self.worker_channel is not None:
            self.worker_channel.close()
        for server in self.servers:
            server.close()
        if self.live is not None:
            await self.live.stop()
        for connection in list(self.connections):
            abort = getattr(connection, "abort", None)
            if abort is not None:
                abort()
        # Let connection_lost callbacks run so streams close and files are flushed.
        for _ in range(3):
            await asyncio.sleep(0)
        self.relay.shutdown()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)


def _with_socket_options(protocol: asyncio.BaseProtocol,
                         keep_alive: TcpKeepAlive) -> asyncio.BaseProtocol:
    if not keep_alive.enabled:
        return protocol
    original = protocol.connection_made

    def connection_made(transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                _apply_keep_alive(sock, keep_alive)
            except OSError as error:
                log.warning("cannot set TCP keep-alive: %s", error)
        original(transport)

    protocol.connection_made = connection_made  # type: ignore[method-assign]
    return protocol


def run(options: RelaydOptions, on_ready: ReadyCallback | None = None) -> int:
    """Run the relay until SIGINT or SIGTERM; returns the process exit code."""

    async def main() -> int:
        daemon = RelayDaemon(options)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, daemon.stop)
        if options.log_file is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: _reopen_logs(daemon))  # logrotate
        try:
            await daemon.serve(on_ready)
        except OSError as error:
            log.error("cannot start: %s", error)
            print(f"pyrelayd: error: {error}", flush=True, file=sys.stderr)
            return 1
        return 0

    return _run_loop(main())


def _reopen_logs(daemon: RelayDaemon) -> None:
    logs.reopen()
    if daemon.router is not None:
        daemon.router.forward_signal(signal.SIGHUP)


def run_worker(options: RelaydOptions, channel: socket.socket, shard: tuple[int, int]) -> int:
    """Run one worker of `--workers` until SIGTERM/SIGINT or until its router is gone."""

    async def main() -> int:
        daemon = RelayDaemon(options, shard=shard, channel=channel)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, daemon.stop)
        if options.log_file is not None:
            loop.add_signal_handler(signal.SIGHUP, logs.reopen)
        await daemon.serve(None)
        return 0

    return _run_loop(main())


def _run_loop(main: Coroutine[None, None, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
