"""Metrics and status over HTTP (`--metrics-port`): /metrics, /status and /healthz.

Nothing here runs per packet. The model keeps plain counters (`pyrelayd.model.counters`);
`RelayCollector` turns them into Prometheus metric families when Prometheus scrapes, and
`prometheus_client` writes the exposition format, from a registry of our own. The status
document is built from the same model objects. Everything runs on the relay's event loop,
except the `statvfs` of the output directory (a thread: a hung network file system must not
stop the relay).
"""

from __future__ import annotations

import asyncio
import bisect
import http
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from pyrelayd import __version__
from pyrelayd.config import ListenAddress
from pyrelayd.model.counters import Lag, viewer_stream_lag
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from pyrelayd.server.http import HttpServer, Response
from pyrelayd.server.workers import METRICS

if TYPE_CHECKING:
    from pyrelayd.model.session import RelaySession
    from pyrelayd.server.app import RelayDaemon
    from pyrelayd.server.live import LiveConnection
    from pyrelayd.server.workers import Router

log = logging.getLogger(__name__)

PREFIX = "pyrelayd"
JSON = "application/json"
# The event loop is looked at this often; /healthz fails when a look came this late.
LOOP_LAG_INTERVAL_S = 0.25
HEALTHY_LOOP_LAG_S = 1.0
LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0)
STATVFS_TIMEOUT_S = 1.0
PORTS = ("control", "data", "live")


class LoopLagMonitor:
    """A timer that measures its own lateness: how long the loop kept callbacks waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.counts = [0] * (len(LOOP_LAG_BUCKETS_S) + 1)  # the last one is +Inf
        self.total_s = 0.0
        self.last_lag_s = 0.0
        self.last_tick = loop.time()
        self._expected = self.last_tick
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._expected = self.loop.time() + self.interval_s
        self._timer = self.loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        self.record(max(0.0, now - self._expected))
        self.last_tick = now
        self._schedule()

    def record(self, lag_s: float) -> None:
        self.counts[bisect.bisect_left(LOOP_LAG_BUCKETS_S, lag_s)] += 1
        self.total_s += lag_s
        self.last_lag_s = lag_s

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*LOOP_LAG_BUCKETS_S, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets

    def problem(self) -> str | None:
        """Why the loop is not healthy, or None. Also true right after a stall: the tick
        that would have seen it has not run yet."""
        if self.last_lag_s > HEALTHY_LOOP_LAG_S:
            return f"event loop lag {self.last_lag_s:.3f} s"
        waiting = self.loop.time() - self.last_tick
        if waiting > self.interval_s + HEALTHY_LOOP_LAG_S:
            return f"event loop stalled for {waiting:.3f} s"
        return None


class FilesystemProbe:
    """statvfs of the output directory, in a thread, at most one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.free_bytes: int | None = None
        self.size_bytes: int | None = None
        self._pending: asyncio.Future[os.statvfs_result] | None = None

    async def refresh(self) -> None:
        """Update the figures; keeps the last ones if statvfs fails or takes too long."""
        if self._pending is None or self._pending.done():
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(None, os.statvfs, self.path)
        try:
            result = await asyncio.wait_for(asyncio.shield(self._pending), STATVFS_TIMEOUT_S)
        except TimeoutError:
            log.warning("statvfs(%s) takes more than %s s", self.path, STATVFS_TIMEOUT_S)
            return
        except OSError as error:
            log.warning("statvfs(%s): %s", self.path, error)
            return
        self.free_bytes = result.f_bavail * result.f_frsize
        self.size_bytes = result.f_blocks * result.f_frsize


def _live_connections(daemon: RelayDaemon) -> list[LiveConnection]:
    return list(daemon.live.connections) if daemon.live is not None else []


def _session_viewers_lag(connection: LiveConnection) -> dict[int, Lag]:
    """The lag of one viewer connection, per relay session id it attached."""
    lags: dict[int, Lag] = {}
    viewer = connection.viewer
    if viewer is None:
        return lags
    for session in viewer.sessions:
        lags[session.id] = Lag()
    for viewer_stream in viewer.streams.values():
        session_id = viewer_stream.stream.session.id
        lags[session_id] = lags.get(session_id, Lag()) + viewer_stream_lag(viewer_stream)
    return lags


def _loop_lag_family(loop_lag: LoopLagMonitor) -> Metric:
    return HistogramMetricFamily(
        f"{PREFIX}_event_loop_lag_seconds",
        f"How late the event loop ran a timer, sampled every {loop_lag.interval_s} s",
        buckets=loop_lag.cumulative_buckets(), sum_value=loop_lag.total_s)


class RelayCollector:
    """The relay's metrics, read from the model at each scrape."""

    def __init__(self, daemon: RelayDaemon, loop_lag: LoopLagMonitor,
                 filesystem: FilesystemProbe) -> None:
        self.daemon = daemon
        self.loop_lag = loop_lag
        self.filesystem = filesystem

    def collect(self) -> Iterator[Metric]:
        relay = self.daemon.relay
        yield self._info()
        yield from self._sessions()
        yield GaugeMetricFamily(f"{PREFIX}_streams_open", "Relay streams open (metadata included)",
                                value=len(relay.streams))
        yield from self._connections()
        yield from self._viewers()
        errors = CounterMetricFamily(
            f"{PREFIX}_errors", "Inputs refused and peers dropped, by kind", labels=["kind"])
        for kind, count in relay.counters.errors.items():
            errors.add_metric([kind.value], count)
        yield errors
        yield from self._fd_pool()
        yield from self._filesystem()
        yield _loop_lag_family(self.loop_lag)

    def _info(self) -> Metric:
        info = GaugeMetricFamily(f"{PREFIX}_info", "pyrelayd version", labels=["version"])
        info.add_metric([__version__], 1)
        return info

    def _sessions(self) -> Iterator[Metric]:
        relay = self.daemon.relay
        labels = ["hostname", "session"]
        received_bytes = CounterMetricFamily(
            f"{PREFIX}_received_bytes",
            "Packet bytes received on data connections, per session (hostname and name; the "
            f"{relay.ledger.keep} newest names, older ones under session=\"other\")",
            labels=labels)
        packets = CounterMetricFamily(
            f"{PREFIX}_received_packets", "Packets received, per session", labels=labels)
        metadata = CounterMetricFamily(
            f"{PREFIX}_received_metadata_bytes", "Metadata bytes received, per session",
            labels=labels)
        for (hostname, name), received in relay.ledger.totals():
            received_bytes.add_metric([hostname, name], received.bytes)
            packets.add_metric([hostname, name], received.packets)
            metadata.add_metric([hostname, name], received.metadata_bytes)
        yield from (received_bytes, packets, metadata)
        yield GaugeMetricFamily(f"{PREFIX}_sessions_open", "Relay sessions open",
                                value=len(relay.sessions))
        yield CounterMetricFamily(f"{PREFIX}_sessions_created", "Relay sessions created",
                                  value=relay.ledger.created)

    def _connections(self) -> Iterator[Metric]:
        relay = self.daemon.relay
        open_counts = dict.fromkeys(PORTS, 0)
        for connection in list(self.daemon.connections):
            if isinstance(connection, ControlProtocol):
                open_counts["control"] += 1
            elif isinstance(connection, DataProtocol):
                open_counts["data"] += 1
        open_counts["live"] = len(_live_connections(self.daemon))
        opened = GaugeMetricFamily(f"{PREFIX}_connections_open", "Connections open, by port",
                                   labels=["port"])
        accepted = CounterMetricFamily(f"{PREFIX}_connections_accepted",
                                       "Connections accepted, by port", labels=["port"])
        for port in PORTS:
            opened.add_metric([port], open_counts[port])
            accepted.add_metric([port], relay.counters.connections_accepted[port])
        yield from (opened, accepted)

    def _viewers(self) -> Iterator[Metric]:
        connections = _live_connections(self.daemon)
        viewers = [c for c in connections if c.viewer is not None]
        sent = self.daemon.relay.counters.viewer_sent_bytes
        sent += sum(connection.sent_bytes for connection in connections)
        lags = [lag for c in viewers for lag in _session_viewers_lag(c).values()]
        yield GaugeMetricFamily(f"{PREFIX}_viewers_open",
                                "Live viewer connections with a viewer session",
                                value=len(viewers))
        yield GaugeMetricFamily(
            f"{PREFIX}_viewer_streams_open", "Viewer streams open (one per stream and viewer)",
            value=sum(len(c.viewer.streams) for c in viewers if c.viewer is not None))
        yield CounterMetricFamily(f"{PREFIX}_viewer_sent_bytes",
                                  "Bytes sent to live viewers (replies and packets)", value=sent)
        yield GaugeMetricFamily(
            f"{PREFIX}_viewer_max_lag_bytes",
            "Largest lag of a viewer on a session: packet bytes indexed, not yet fetched",
            value=max((lag.bytes for lag in lags), default=0))
        yield GaugeMetricFamily(
            f"{PREFIX}_viewer_max_lag_seconds",
            "Largest lag of a viewer on a session, in trace time behind the newest packet",
            value=max((lag.seconds for lag in lags), default=0.0))

    def _fd_pool(self) -> Iterator[Metric]:
        pool = self.daemon.relay.fd_pool
        if pool.limit is not None:
            yield GaugeMetricFamily(f"{PREFIX}_fd_pool_size",
                                    "Descriptors the relay may use (--fd-pool-size)",
                                    value=pool.limit)
        yield GaugeMetricFamily(
            f"{PREFIX}_fd_pool_in_use",
            "Descriptors in use: stream files open plus sockets and viewers' files",
            value=pool.open_count + pool.held)
        yield CounterMetricFamily(f"{PREFIX}_fd_pool_evictions",
                                  "Stream files closed to make room in the pool",
                                  value=pool.evicted)
        yield CounterMetricFamily(f"{PREFIX}_fd_pool_reopens",
                                  "Stream files reopened after an eviction", value=pool.reopened)

    def _filesystem(self) -> Iterator[Metric]:
        probe = self.filesystem
        if probe.free_bytes is not None and probe.size_bytes is not None:
            yield GaugeMetricFamily(f"{PREFIX}_output_filesystem_free_bytes",
                                    "Bytes available to the relay on the output file system",
                                    value=probe.free_bytes)
            yield GaugeMetricFamily(f"{PREFIX}_output_filesystem_size_bytes",
                                    "Size of the output file system", value=probe.size_bytes)


# --------------------------------------------------------------------------- /status


def _session_status(session: RelaySession) -> dict[str, Any]:
    chunk = session.current_chunk
    received = session.received()
    return {
        "id": session.id,
        "hostname": session.hostname,
        "name": session.name,
        "trace_format": session.trace_format.label,
        "live_timer_us": session.live_timer,
        "snapshot": session.snapshot,
        "protocol": f"{session.info.major}.{session.minor}",
        "output_path": session.output_path,
        "streams": len(session.streams),
        "received_bytes": received.bytes,
        "received_packets": received.packets,
        "received_metadata_bytes": received.metadata_bytes,
        "current_chunk": None if chunk is None else {"id": chunk.id, "path": chunk.path},
        "viewers": len(session.viewers),
        "connection_closed": session.connection_closed,
    }


def _lag_status(lag: Lag) -> dict[str, Any]:
    return {"packets": lag.packets, "bytes": lag.bytes, "seconds": round(lag.seconds, 6)}


def _viewer_status(connection: LiveConnection) -> dict[str, Any]:
    lags = _session_viewers_lag(connection)
    total = sum(lags.values(), Lag())
    return {
        "peer": connection.peer,
        "protocol": f"2.{connection.minor}",
        "sent_bytes": connection.sent_bytes,
        "sessions": [{"id": session_id, "lag": _lag_status(lag)}
                     for session_id, lag in lags.items()],
        "lag": _lag_status(total),
    }


def status_document(daemon: RelayDaemon, started: float) -> dict[str, Any]:
    relay = daemon.relay
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_seconds": round(time.monotonic() - started, 3),
        "ports": dict(daemon.ports),
        "output": str(relay.settings.output_root),
        "sessions": [_session_status(session) for session in list(relay.sessions.values())],
        "viewers": [_viewer_status(connection) for connection in _live_connections(daemon)],
    }


# --------------------------------------------------------------------------- the endpoint


def _json_response(document: dict[str, Any]) -> Response:
    return Response(http.HTTPStatus.OK, (json.dumps(document, indent=2) + "\n").encode(), JSON)


class MetricsEndpoint:
    """The HTTP server of /metrics, /status and /healthz for one relay daemon."""

    def __init__(self, daemon: RelayDaemon) -> None:
        self.daemon = daemon
        self.started = time.monotonic()
        loop = asyncio.get_running_loop()
        self.loop_lag = LoopLagMonitor(loop)
        self.filesystem = FilesystemProbe(daemon.relay.settings.output_root)
        self.registry = self._registry()
        self.http = HttpServer("metrics", {
            "/metrics": self.metrics,
            "/status": self.status,
            "/healthz": self.healthz,
        }, on_open=daemon.relay.fd_pool.hold, on_close=daemon.relay.fd_pool.unhold)

    def _registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RelayCollector(self.daemon, self.loop_lag, self.filesystem))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        return registry

    async def start(self, address: ListenAddress) -> int:
        port = await self.http.start(address)
        self.loop_lag.start()
        return port

    def close(self) -> None:
        self.loop_lag.stop()
        self.http.close()

    async def metrics(self) -> Response:
        await self.filesystem.refresh()
        return Response(http.HTTPStatus.OK, generate_latest(self.registry),
                        CONTENT_TYPE_PLAIN_0_0_4)

    async def status(self) -> Response:
        return _json_response(status_document(self.daemon, self.started))

    async def healthz(self) -> Response:
        """503 while the loop lags or right after it stalled, or when the health socket would
        report a component (a listener that died)."""
        problems = [problem for problem in (self.loop_lag.problem(),) if problem]
        problems += [f"{component.label}: unhealthy"
                     for component in sorted(self.daemon.health.unhealthy())]
        if problems:
            return Response(http.HTTPStatus.SERVICE_UNAVAILABLE,
                            ("\n".join(problems) + "\n").encode())
        return Response(http.HTTPStatus.OK, b"ok\n")

    async def snapshot(self) -> bytes:
        """/metrics and /status of this relay in one JSON document: what a worker of
        `--workers` gives its router, which serves them for all (`RouterMetricsEndpoint`)."""
        await self.filesystem.refresh()
        return json.dumps({
            "metrics": generate_latest(self.registry).decode(),
            "status": status_document(self.daemon, self.started),
        }).encode()


# --------------------------------------------------------------------------- --workers

WORKER_SNAPSHOT_TIMEOUT_S = 5.0
WORKER_SNAPSHOT_MAX_BYTES = 64 << 20


#: What a worker counts of the connections the router opens to it for one viewer (one per
#: worker and viewer): the router's own figures replace them.
VIEWER_FAMILIES = frozenset({f"{PREFIX}_viewers_open"})
LIVE_PORT_FAMILIES = frozenset({f"{PREFIX}_connections_open", f"{PREFIX}_connections_accepted"})


class MergedCollector:
    """Metric families parsed from several expositions, each sample labelled with where it
    came from (`worker="0"`, ..., `worker="router"`). Viewer connection counts are taken from
    the router only (`VIEWER_FAMILIES`, the live port of `LIVE_PORT_FAMILIES`)."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, str]] = []  # (worker label, exposition text)
        self.extra: list[Metric] = []  # families of the merge itself

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for label, text in self.sources:
            for family in text_string_to_metric_families(text):
                if label != "router" and family.name in VIEWER_FAMILIES:
                    continue
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    if (label != "router" and family.name in LIVE_PORT_FAMILIES
                            and sample.labels.get("port") == "live"):
                        continue
                    merged.add_sample(sample.name, {**sample.labels, "worker": label},
                                      sample.value, sample.timestamp)
        yield from families.values()
        yield from self.extra


class RouterMetricsEndpoint(MetricsEndpoint):
    """/metrics, /status and /healthz of a relay made of a router and its workers: each
    worker's metrics with a `worker` label, the router's own (process, event loop) with
    `worker="router"`, `pyrelayd_worker_up` per worker; /status lists every worker's
    sessions and viewers, each with its worker."""

    def __init__(self, daemon: RelayDaemon, router: Router) -> None:
        self.router = router
        self.merged = MergedCollector()
        super().__init__(daemon)
        self.own = CollectorRegistry(auto_describe=False)  # the router's process, its loop,
        self.own.register(_RouterCollector(router, self.loop_lag))  # its viewer connections
        ProcessCollector(registry=self.own)
        PlatformCollector(registry=self.own)

    def _registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.merged)
        return registry

    async def _snapshots(self) -> list[dict[str, Any] | None]:
        return list(await asyncio.gather(*(self._snapshot(worker.index)
                                           for worker in self.router.workers)))

    async def _snapshot(self, index: int) -> dict[str, Any] | None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.router.workers[index].give(METRICS, "metrics", theirs)
            reader, writer = await asyncio.open_unix_connection(sock=mine, limit=1 << 20)
        except OSError as error:
            mine.close()
            log.warning("worker %d: no metrics: %s", index, error)
            return None
        try:
            data = await asyncio.wait_for(reader.read(WORKER_SNAPSHOT_MAX_BYTES),
                                          WORKER_SNAPSHOT_TIMEOUT_S)
            while data and (more := await asyncio.wait_for(
                    reader.read(WORKER_SNAPSHOT_MAX_BYTES - len(data)),
                    WORKER_SNAPSHOT_TIMEOUT_S)):
                data += more
            snapshot: dict[str, Any] = json.loads(data)
            return snapshot
        except (TimeoutError, OSError, ValueError) as error:
            log.warning("worker %d: no metrics: %s", index, error or type(error).__name__)
            return None
        finally:
            writer.close()

    async def metrics(self) -> Response:
        snapshots = await self._snapshots()
        up = GaugeMetricFamily(f"{PREFIX}_worker_up",
                               "1 when the worker answered this scrape", labels=["worker"])
        sources = [("router", generate_latest(self.own).decode())]
        for index, snapshot in enumerate(snapshots):
            up.add_metric([str(index)], 0 if snapshot is None else 1)
            if snapshot is not None:
                sources.append((str(index), str(snapshot["metrics"])))
        self.merged.sources = sources
        self.merged.extra = [up]
        return Response(http.HTTPStatus.OK, generate_latest(self.registry),
                        CONTENT_TYPE_PLAIN_0_0_4)

    async def status(self) -> Response:
        snapshots = await self._snapshots()
        # The router's own document (its relay has no sessions, its viewers are the workers').
        document = status_document(self.daemon, self.started) | {"workers": []}
        for index, snapshot in enumerate(snapshots):
            status = None if snapshot is None else snapshot["status"]
            document["workers"].append({"worker": index, "up": status is not None,
                                        "pid": None if status is None else status["pid"]})
            if status is not None:
                document["sessions"] += [{**s, "worker": index} for s in status["sessions"]]
                document["viewers"] += [{**v, "worker": index} for v in status["viewers"]]
        return _json_response(document)



class _RouterCollector:
    """The router's own metrics: its event loop and the viewer connections it holds."""

    def __init__(self, router: Router, loop_lag: LoopLagMonitor) -> None:
        self.router = router
        self.loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_viewers_open", "Viewer connections open",
                                value=len(self.router.viewers))
        opened = GaugeMetricFamily(f"{PREFIX}_connections_open", "Connections open, by port",
                                   labels=["port"])
        opened.add_metric(["live"], len(self.router.viewers))
        accepted = CounterMetricFamily(f"{PREFIX}_connections_accepted",
                                       "Connections accepted, by port", labels=["port"])
        accepted.add_metric(["live"], self.router.viewers_accepted)
        yield from (opened, accepted)
        yield _loop_lag_family(self.loop_lag)
