"""A pyrelayd process with `--metrics-port`, a producer session to feed it, and HTTP helpers.

Shared by the metrics endpoint tests and the end-to-end Prometheus test. The relay is started
by the one launcher of tests and benchmarks (`pyrelayd_testkit.relays.start_relay`), its
metrics port chosen by the OS (port 0) and read back from the relay's listening sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pyrelayd.client.producer import ProducerStream, RelaydProducer
from pyrelayd_testkit.processes import wait_until
from pyrelayd_testkit.relays import Relay, start_relay

HOST = "127.0.0.1"
STREAM_PATH = "ust/uid/0/64-bit"
METADATA = b"/* CTF 1.8 */\n" + b"/* test metadata, never decoded */\n" * 10
SECOND_NS = 1_000_000_000
LIVE_TIMER_US = 1_000_000


@dataclasses.dataclass
class MetricsRelay:
    relay: Relay
    metrics_port: int

    @property
    def control_port(self) -> int:
        return self.relay.control_port

    @property
    def data_port(self) -> int:
        return self.relay.data_port

    @property
    def live_port(self) -> int:
        return self.relay.live_port


@contextlib.contextmanager
def relay_with_metrics(workdir: Path, *extra_args: str) -> Iterator[MetricsRelay]:
    """pyrelayd on fresh ports, serving metrics on 127.0.0.1."""
    relay = start_relay("py", workdir, ["--metrics-port", f"tcp://{HOST}:0", *extra_args])
    try:
        [metrics_port] = wait_until(relay.other_listening_ports, timeout=20,
                                    what="the metrics port listening")
        yield MetricsRelay(relay, metrics_port)
    finally:
        relay.stop()


# --------------------------------------------------------------------------- HTTP


@dataclasses.dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def parse_replies(raw: bytes, *, head_only: bool = False) -> list[HttpReply]:
    """Every whole response in `raw` (Content-Length framed; no body after HEAD)."""
    replies: list[HttpReply] = []
    while raw:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        if not separator:
            raise AssertionError(f"incomplete response head: {raw[:200]!r}")
        status_line, *lines = head.decode("ascii").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        replies.append(HttpReply(int(status_line.split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return replies


async def exchange(port: int, request: bytes, timeout: float = 20.0) -> tuple[bytes, bool]:
    """Send raw bytes; returns what came back and whether the relay then closed the
    connection (False: it stayed open, silent, for `timeout` seconds)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        received = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), timeout):
                received += chunk
        except TimeoutError:
            return received, False
        return received, True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def http_get(port: int, path: str, method: str = "GET") -> HttpReply:
    request = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    raw, closed = await exchange(port, request.encode())
    assert closed, "the relay kept a Connection: close request open"
    [reply] = parse_replies(raw, head_only=method == "HEAD")
    return reply


Sample = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[Sample, float]:
    """Every sample of an exposition, by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(metrics: Mapping[Sample, float], name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


# --------------------------------------------------------------------------- producer


@dataclasses.dataclass
class FedSession:
    producer: RelaydProducer
    session_id: int
    metadata: ProducerStream
    streams: list[ProducerStream]


def packet_times(number: int) -> tuple[int, int]:
    """Trace time of packet `number` of a stream: one second each, back to back."""
    return number * SECOND_NS, (number + 1) * SECOND_NS - 1


async def open_session(relay: MetricsRelay, name: str, hostname: str, *,
                       streams: int = 2) -> FedSession:
    """A live session as a 2.15 consumer daemon opens it: chunk 0, metadata, data streams."""
    producer = RelaydProducer(HOST, relay.control_port, relay.data_port)
    await producer.connect()
    session_id = await producer.create_session(name, hostname, live_timer=LIVE_TIMER_US)
    await producer.create_trace_chunk(0)
    metadata = await producer.add_stream("metadata", STREAM_PATH)
    data = [await producer.add_stream(f"channel0_{n}", STREAM_PATH) for n in range(streams)]
    await producer.streams_sent()
    await producer.send_metadata(metadata, METADATA)
    return FedSession(producer, session_id, metadata, data)


async def send_packets(fed: FedSession, stream: ProducerStream, count: int,
                       size: int) -> int:
    """`count` packets of `size` bytes with their indexes; returns the bytes sent."""
    for _ in range(count):
        number = stream.next_net_seq_num
        seq = await fed.producer.send_packet(stream, bytes([number % 256]) * size)
        begin, end = packet_times(number)
        await fed.producer.send_index(stream, seq, packet_size_bits=size * 8,
                                      content_size_bits=size * 8, timestamp_begin=begin,
                                      timestamp_end=end)
    return count * size


async def wait_received(fed: FedSession) -> None:
    """Until DATA_PENDING says the relay has every packet of every stream."""
    for stream in fed.streams:
        while await fed.producer.data_pending(stream):
            await asyncio.sleep(0.01)
