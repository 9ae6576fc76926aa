"""Producer patterns: the ways a consumer daemon may feed a relay, as benchmark producers.

* `pipelined`: the synthetic producer of `bench/synthetic.py` (per stream, batches of packets
  in one `sendall`, SEND_INDEX requests pipelined, replies read later).
* `batch`: batches of `BATCH_PACKETS` packets spread over the streams: the batch's data headers
  and payloads on the data socket (one `sendmsg` of many buffers), then the batch's SEND_INDEX
  requests on the control socket; a second thread reads the replies. Every packet's data
  reaches the relay before its index.
* `consumerd`: what lttng-consumerd 2.13 does for each sub-buffer (`consumer.c`
  `lttng_consumer_on_read_subbuffer_mmap`, `relayd.c` `relayd_send_data_hdr` /
  `relayd_send_index`): the 32-byte data header in one `sendmsg`, the payload in one
  `write`, then SEND_INDEX (24-byte header and 80-byte payload in one `sendmsg`) on the
  control socket and a blocking read of its 4-byte reply before the next sub-buffer. The
  sockets keep Nagle's algorithm on (lttng sets no TCP option) and streams take turns.
* `sessions`: many short sessions (what many traced hosts, or short `lttng` sessions, look
  like), `SESSION_CONCURRENCY` at a time, through `pyrelayd.client.producer.RelaydProducer`:
  each opens its session (VERSION, CREATE_SESSION, CREATE_TRACE_CHUNK, ADD_STREAM, STREAMS_SENT,
  metadata), sends a few packets per stream as `consumerd` does (SEND_INDEX awaited), waits
  for DATA_PENDING, closes its streams and disconnects. Everything is inside the measurement.

`run_pattern` is the body of the producer process, driven as `bench/synthetic.py`'s.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

from bench.relays import LOAD_CPUS, pin_to, raise_nofile
from bench.synthetic import (
    DATA_HEADER,
    HOSTNAME,
    METADATA,
    OK_REPLY,
    SEND_INDEX_PAYLOAD_SIZE,
    SEND_INDEX_REQUEST,
    STREAM_PATH,
    PacketBatch,
    ProducerError,
    ProducerPlan,
    ProducerResult,
    SyntheticSession,
    SyntheticStream,
    stream_round_robin,
)
from pyrelayd.client.producer import ProducerStream, RelaydProducer
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.relayd import Command

PATTERNS = ("pipelined", "batch", "consumerd", "sessions")
BATCH_PACKETS = 256
SESSION_CONCURRENCY = 8
# lttng-consumerd 2.13 speaks protocol 2.13 (same layouts as 2.11 on this path).
CONSUMERD_MINOR = 13
_IOV_MAX = 1024


def _payload(packet_size: int) -> memoryview:
    pattern = bytes(range(256)) * (packet_size // 256 + 1)
    return memoryview(pattern[:packet_size])


def _index_request(stream: SyntheticStream, seq: int, packet_size: int) -> tuple[int, ...]:
    bits = packet_size * 8
    return (0, SEND_INDEX_PAYLOAD_SIZE, Command.SEND_INDEX, 0,
            stream.handle, seq, bits, bits, seq * 1000, seq * 1000 + 999, 0, 0,
            wire.UINT64_MAX, seq)  # fmt: skip


def send_buffers(sock: socket.socket, buffers: Sequence[memoryview]) -> None:
    """Every byte of `buffers`, with as few `sendmsg` calls as the kernel allows."""
    pending = list(buffers)
    while pending:
        sent = sock.sendmsg(pending[:_IOV_MAX])
        while sent:
            if sent >= len(pending[0]):
                sent -= len(pending.pop(0))
            else:
                pending[0] = pending[0][sent:]
                sent = 0


# --------------------------------------------------------------------------- batch


class ReplyReader(threading.Thread):
    """Reads `count` SEND_INDEX replies from the control socket while the producer sends."""

    def __init__(self, sock: socket.socket, count: int) -> None:
        super().__init__(name="replies", daemon=True)
        self.sock = sock
        self.count = count
        self.error: str | None = None

    def run(self) -> None:
        expected = 4 * self.count
        buffer = bytearray(min(expected, 1 << 20) or 4)
        received = 0
        carry = b""
        try:
            while received < expected:
                count = self.sock.recv_into(buffer, min(len(buffer), expected - received))
                if count == 0:
                    raise ProducerError("the relay closed the connection")
                chunk = carry + bytes(buffer[:count])
                whole = len(chunk) - len(chunk) % 4
                if chunk[:whole] != OK_REPLY * (whole // 4):
                    raise ProducerError("a SEND_INDEX was refused")
                carry = chunk[whole:]
                received += count
        except (OSError, ProducerError) as error:
            self.error = f"{type(error).__name__}: {error}"


def stream_batches(session: SyntheticSession, packet_size: int, packets_per_stream: int) -> None:
    streams = session.streams
    total = packets_per_stream * len(streams)
    reader = ReplyReader(session.control, total)
    reader.start()
    payload = _payload(packet_size)
    headers = bytearray(BATCH_PACKETS * DATA_HEADER.size)
    indexes = bytearray(BATCH_PACKETS * SEND_INDEX_REQUEST.size)
    header_views = [memoryview(headers)[i * DATA_HEADER.size : (i + 1) * DATA_HEADER.size]
                    for i in range(BATCH_PACKETS)]
    sent = 0
    while sent < total:
        count = min(BATCH_PACKETS, total - sent)
        buffers: list[memoryview] = []
        for slot in range(count):
            stream = streams[(sent + slot) % len(streams)]
            seq = stream.next_net_seq_num
            stream.next_net_seq_num += 1
            DATA_HEADER.pack_into(headers, slot * DATA_HEADER.size, 0, stream.handle, seq,
                                  packet_size, 0)
            SEND_INDEX_REQUEST.pack_into(indexes, slot * SEND_INDEX_REQUEST.size,
                                         *_index_request(stream, seq, packet_size))
            buffers += (header_views[slot], payload)
        send_buffers(session.data, buffers)
        session.control.sendall(memoryview(indexes)[: count * SEND_INDEX_REQUEST.size])
        sent += count
    reader.join()
    if reader.error:
        raise ProducerError(reader.error)


# --------------------------------------------------------------------------- consumerd


def stream_like_consumerd(session: SyntheticSession, packet_size: int,
                          packets_per_stream: int) -> None:
    payload = _payload(packet_size)
    header = bytearray(DATA_HEADER.size)
    index = bytearray(SEND_INDEX_REQUEST.size)
    reply = bytearray(4)
    data, control = session.data, session.control
    for _ in range(packets_per_stream):
        for stream in session.streams:
            seq = stream.next_net_seq_num
            stream.next_net_seq_num += 1
            DATA_HEADER.pack_into(header, 0, 0, stream.handle, seq, packet_size, 0)
            data.sendall(header)
            data.sendall(payload)
            SEND_INDEX_REQUEST.pack_into(index, 0, *_index_request(stream, seq, packet_size))
            control.sendall(index)
            received = 0
            while received < 4:
                count = control.recv_into(memoryview(reply)[received:])
                if count == 0:
                    raise ProducerError("the relay closed the connection")
                received += count
            if reply != OK_REPLY:
                raise ProducerError("a SEND_INDEX was refused")


# --------------------------------------------------------------------------- sessions


async def _one_session(plan: ProducerPlan, number: int) -> None:
    producer = RelaydProducer("127.0.0.1", plan.control_port, plan.data_port,
                              minor=CONSUMERD_MINOR, source=plan.source)
    await producer.connect()
    try:
        await producer.create_session(plan.session_name(number), HOSTNAME)
        await producer.create_trace_chunk(0)
        metadata = await producer.add_stream("metadata", STREAM_PATH)
        streams: list[ProducerStream] = [
            await producer.add_stream(f"channel0_{n}", STREAM_PATH)
            for n in range(plan.streams_per_session)
        ]
        await producer.streams_sent()
        await producer.send_metadata(metadata, METADATA)
        payload = bytes(_payload(plan.packet_size))
        bits = plan.packet_size * 8
        for _ in range(plan.packets_per_stream):
            for stream in streams:
                seq = await producer.send_packet(stream, payload)
                await producer.send_index(
                    stream, seq, packet_size_bits=bits, content_size_bits=bits,
                    timestamp_begin=seq * 1000, timestamp_end=seq * 1000 + 999)
        for stream in streams:
            while await producer.data_pending(stream):
                await asyncio.sleep(0.0005)
        for stream in [*streams, metadata]:
            await producer.close_stream(stream)
    finally:
        await producer.close()


async def run_sessions(plan: ProducerPlan, concurrency: int = SESSION_CONCURRENCY) -> None:
    numbers = iter(range(plan.sessions))

    async def worker() -> None:
        for number in numbers:
            await _one_session(plan, number)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, plan.sessions))))


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# --------------------------------------------------------------------------- producer process


def _open_session(plan: ProducerPlan, pattern: str) -> SyntheticSession:
    session = SyntheticSession(plan.control_port, plan.data_port, plan.session_name(0),
                               source=plan.source)
    if pattern == "consumerd":
        session.minor = CONSUMERD_MINOR
        for sock in (session.control, session.data):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    session.open(plan.streams_per_session)
    return session


def run_pattern(conn: Connection, pattern: str, plan: ProducerPlan) -> None:
    """Body of a producer process: ready -> "go" -> done (result) -> "close" -> closed."""
    pin_to(LOAD_CPUS)
    raise_nofile(4 * plan.sessions + 1024)
    session: SyntheticSession | None = None
    try:
        if pattern not in PATTERNS:
            raise ProducerError(f"unknown pattern {pattern}")
        if pattern != "sessions":
            if plan.sessions != 1:
                raise ProducerError(f"the {pattern} pattern streams one session")
            session = _open_session(plan, pattern)
        conn.send(("ready", None))
        if conn.recv() != "go":
            return
        cpu_start, start = time.process_time(), time.monotonic()
        if pattern == "sessions":
            loop = _new_event_loop()
            try:
                loop.run_until_complete(run_sessions(plan))
            finally:
                loop.close()
        else:
            assert session is not None
            if pattern == "pipelined":
                stream_round_robin([session], PacketBatch(plan.packet_size),
                                   plan.packets_per_stream)
            elif pattern == "batch":
                stream_batches(session, plan.packet_size, plan.packets_per_stream)
            else:
                stream_like_consumerd(session, plan.packet_size, plan.packets_per_stream)
            session.wait_all_received()
        wall = time.monotonic() - start
        cpu = time.process_time() - cpu_start
        packets = plan.sessions * plan.streams_per_session * plan.packets_per_stream
        conn.send(("done", ProducerResult(wall, cpu, plan.payload_bytes, packets)))
        conn.recv()  # "close"
        if session is not None:
            session.close()
            session = None
        conn.send(("closed", None))
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        if session is not None:
            session.control.close()
            session.data.close()
