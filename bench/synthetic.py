"""A fast synthetic consumer daemon: sessions, streams, packets and indexes on blocking sockets.

`pyrelayd.client.producer.RelaydProducer` awaits every reply, which caps it far below what a
relay can ingest. This producer speaks the same protocol (relayd 2.13, through the codec of
`pyrelayd.protocol.relayd`) but sends packets in batches with one `sendall` each and pipelines
SEND_INDEX requests: it writes a batch of them and reads their 4-byte replies later, keeping
at most `REPLY_WINDOW` unanswered. Packets are not CTF (no relay parses them); indexes are
valid (sizes, increasing timestamps and packet sequence numbers).

`run_producer` is the body of a producer process driven by the benchmark through a pipe:
it opens its sessions, reports their relay session ids, waits for "go", streams, waits until
the relay has every packet and index (DATA_PENDING), reports, and closes when told.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import struct
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

from bench.relays import LOAD_CPUS, pin_to, raise_nofile
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.index import RECORD_1_1
from pyrelayd.protocol.relayd import Command, ReturnCode

HOSTNAME = "bench-producer"
STREAM_PATH = "ust/uid/0/64-bit"
METADATA = b"/* CTF 1.8 */\n" + b"/* synthetic metadata, never decoded */\n" * 100
INDEX_HEADER_SIZE = 16
INDEX_RECORD_SIZE = RECORD_1_1.size  # relayd protocol 2.13 means index format 1.1

# One SEND_INDEX request: control header then the 2.8+ payload, in one struct.
SEND_INDEX_REQUEST = struct.Struct(">QQII10Q")
SEND_INDEX_PAYLOAD_SIZE = wire.SendIndex.FORMAT_1_1.size
DATA_HEADER = wire.DATA_HEADER
OK_REPLY = wire.generic_reply(ReturnCode.OK)
# Unanswered SEND_INDEX requests allowed before the producer reads replies (4 bytes each).
REPLY_WINDOW = 2048
# Bytes of packets sent per stream per `sendall`.
BATCH_BYTES = 256 * 1024


class ProducerError(Exception):
    pass


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    # Acknowledge at once: a relay that writes small replies with Nagle's algorithm on would
    # otherwise wait for our delayed ACK (40 ms) before sending the next one.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise ProducerError("the relay closed the connection")
        received += count
    return bytes(buffer)


@dataclasses.dataclass
class SyntheticStream:
    handle: int
    channel_name: str
    next_net_seq_num: int = 0

    @property
    def last_net_seq_num(self) -> int:
        return (self.next_net_seq_num - 1) & wire.UINT64_MAX


class PacketBatch:
    """A reusable buffer of (data header, packet) pairs; only the headers change."""

    def __init__(self, packet_size: int) -> None:
        self.packet_size = packet_size
        self.capacity = max(1, BATCH_BYTES // packet_size)
        self.stride = DATA_HEADER.size + packet_size
        self.buffer = bytearray(self.capacity * self.stride)
        pattern = bytes(range(256)) * (packet_size // 256 + 1)
        for slot in range(self.capacity):
            start = slot * self.stride + DATA_HEADER.size
            self.buffer[start : start + packet_size] = pattern[:packet_size]
        self.view = memoryview(self.buffer)
        self.indexes = bytearray(self.capacity * SEND_INDEX_REQUEST.size)

    def fill(self, stream: SyntheticStream, count: int) -> tuple[memoryview, memoryview]:
        """Headers for the stream's next `count` packets; returns (data bytes, index requests)."""
        size = self.packet_size
        bits = size * 8
        seq = stream.next_net_seq_num
        for slot in range(count):
            DATA_HEADER.pack_into(self.buffer, slot * self.stride, 0, stream.handle, seq, size, 0)
            SEND_INDEX_REQUEST.pack_into(
                self.indexes, slot * SEND_INDEX_REQUEST.size,
                0, SEND_INDEX_PAYLOAD_SIZE, Command.SEND_INDEX, 0,
                stream.handle, seq, bits, bits, seq * 1000, seq * 1000 + 999, 0, 0,
                wire.UINT64_MAX, seq,
            )  # fmt: skip
            seq += 1
        stream.next_net_seq_num = seq
        return (self.view[: count * self.stride],
                memoryview(self.indexes)[: count * SEND_INDEX_REQUEST.size])


class SyntheticSession:
    """One recording session as one consumer daemon streams it: a control and a data socket."""

    def __init__(self, control_port: int, data_port: int, name: str, *,
                 live_timer_us: int = 0, host: str = "127.0.0.1",
                 source: str | None = None) -> None:
        """`source`: the local address to connect from (127.0.0.N: traced host N)."""
        self.name = name
        self.live_timer_us = live_timer_us
        local = None if source is None else (source, 0)
        self.control = socket.create_connection((host, control_port), source_address=local)
        self.data = socket.create_connection((host, data_port), source_address=local)
        for sock in (self.control, self.data):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.minor = wire.RELAYD_VERSION_MINOR
        self.session_id = 0
        self.metadata: SyntheticStream | None = None
        self.streams: list[SyntheticStream] = []
        self.unanswered = 0

    # ----------------------------------------------------------------- control requests

    def _request(self, command: Command, payload: bytes, reply_size: int | None) -> bytes:
        self.control.sendall(wire.encode_request(command, payload))
        return _receive_exactly(self.control, reply_size) if reply_size else b""

    def _expect_ok(self, command: Command, payload: bytes) -> None:
        code = wire.decode_generic_reply(self._request(command, payload, 4))
        if code != ReturnCode.OK:
            raise ProducerError(f"{self.name}: {command.name} refused ({code})")

    def open(self, stream_count: int) -> None:
        """VERSION, CREATE_SESSION, CREATE_TRACE_CHUNK, ADD_STREAM (metadata first), metadata."""
        major, minor = struct.unpack(
            ">II", self._request(Command.VERSION, wire.Version(2, self.minor).encode(), 8))
        if major != 2:
            raise ProducerError(f"the relay speaks {major}.{minor}")
        self.minor = min(self.minor, minor)
        request = wire.CreateSession(
            session_name=self.name, hostname=HOSTNAME, live_timer=self.live_timer_us,
            sessiond_uuid=uuid.uuid4().bytes, sessiond_session_id=1,
            creation_time=int(time.time()),
        )
        head = self._request(Command.CREATE_SESSION, request.encode(self.minor), 16)
        (length,) = struct.unpack_from(">I", head, 12)
        session_id, code, _path = wire.decode_create_session_reply_2_11(
            head + _receive_exactly(self.control, length) if length else head)
        if code != ReturnCode.OK:
            raise ProducerError(f"{self.name}: CREATE_SESSION refused ({code})")
        self.session_id = session_id
        chunk = wire.CreateTraceChunk(0, int(time.time())).encode()
        self._expect_ok(Command.CREATE_TRACE_CHUNK, chunk)
        self.metadata = self._add_stream("metadata")
        self.streams = [self._add_stream(f"channel0_{number}") for number in range(stream_count)]
        self._expect_ok(Command.STREAMS_SENT, b"")
        header = wire.SendMetadataHeader(self.metadata.handle, 0).encode()
        self._request(Command.SEND_METADATA, header + METADATA, None)

    def _add_stream(self, channel_name: str) -> SyntheticStream:
        payload = wire.AddStream(channel_name, STREAM_PATH).encode(self.minor)
        handle, code = wire.decode_status_reply(self._request(Command.ADD_STREAM, payload, 12))
        if code != ReturnCode.OK:
            raise ProducerError(f"{self.name}: ADD_STREAM {channel_name} refused ({code})")
        return SyntheticStream(handle, channel_name)

    # ----------------------------------------------------------------- packets

    def send_packets(self, batch: PacketBatch, stream: SyntheticStream, count: int) -> None:
        """`count` (<= batch capacity) packets on the data socket, their indexes on control."""
        data, indexes = batch.fill(stream, count)
        self.data.sendall(data)
        self.control.sendall(indexes)
        self.unanswered += count
        if self.unanswered > REPLY_WINDOW:
            self.read_replies(self.unanswered - REPLY_WINDOW // 2)

    def read_replies(self, count: int) -> None:
        replies = _receive_exactly(self.control, 4 * count)
        self.unanswered -= count
        if replies != OK_REPLY * count:
            raise ProducerError(f"{self.name}: a SEND_INDEX was refused")

    def wait_all_received(self, poll_interval: float = 0.0005) -> None:
        """Until DATA_PENDING says every packet and index of every stream is in the relay."""
        self.read_replies(self.unanswered)
        pending = list(self.streams)
        while pending:
            still = []
            for stream in pending:
                payload = wire.DataPending(stream.handle, stream.last_net_seq_num).encode()
                if wire.decode_generic_reply(self._request(Command.DATA_PENDING, payload, 4)):
                    still.append(stream)
            pending = still
            if pending:
                time.sleep(poll_interval)

    def close(self) -> None:
        """CLOSE_STREAM every stream, then close both sockets."""
        try:
            for stream in [*self.streams, *([self.metadata] if self.metadata else [])]:
                payload = wire.CloseStream(stream.handle, stream.last_net_seq_num).encode()
                self._expect_ok(Command.CLOSE_STREAM, payload)
        finally:
            self.control.close()
            self.data.close()


# --------------------------------------------------------------------------- producer process


@dataclasses.dataclass(frozen=True)
class ProducerPlan:
    control_port: int
    data_port: int
    name_prefix: str
    sessions: int
    streams_per_session: int
    packet_size: int
    packets_per_stream: int
    live_timer_us: int = 0
    # Set: the sessions connect from 127.0.0.(10 + host), as traced host number `host` (a
    # relay with --workers gives each host to one worker); None: from 127.0.0.1.
    host: int | None = None

    @property
    def source(self) -> str | None:
        return None if self.host is None else f"127.0.0.{10 + self.host}"

    @property
    def payload_bytes(self) -> int:
        packets = self.sessions * self.streams_per_session * self.packets_per_stream
        return packets * self.packet_size

    def session_name(self, number: int) -> str:
        return f"{self.name_prefix}-{number}"


@dataclasses.dataclass(frozen=True)
class ProducerResult:
    wall_s: float  # first packet sent -> relay has every packet and index
    cpu_s: float  # the producer's own CPU over that interval
    payload_bytes: int
    packets: int

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / 1e6 / self.wall_s if self.wall_s else 0.0


def stream_round_robin(sessions: list[SyntheticSession], batch: PacketBatch,
                       packets_per_stream: int) -> None:
    """Every stream of every session gets a batch in turn, as the sub-buffers of many CPUs."""
    sent = 0
    while sent < packets_per_stream:
        count = min(batch.capacity, packets_per_stream - sent)
        for session in sessions:
            for stream in session.streams:
                session.send_packets(batch, stream, count)
        sent += count


def run_producer(conn: Connection, plan: ProducerPlan) -> None:
    """Body of a producer process: ready (session ids) -> "go" -> done (result) -> "close"."""
    pin_to(LOAD_CPUS)
    raise_nofile(4 * plan.sessions + 1024)
    sessions: list[SyntheticSession] = []
    try:
        for number in range(plan.sessions):
            session = SyntheticSession(plan.control_port, plan.data_port,
                                       plan.session_name(number),
                                       live_timer_us=plan.live_timer_us,
                                       source=plan.source)
            sessions.append(session)
            session.open(plan.streams_per_session)
        conn.send(("ready", [session.session_id for session in sessions]))
        if conn.recv() != "go":
            return
        batch = PacketBatch(plan.packet_size)
        cpu_start, start = time.process_time(), time.monotonic()
        stream_round_robin(sessions, batch, plan.packets_per_stream)
        for session in sessions:
            session.wait_all_received()
        wall = time.monotonic() - start
        cpu = time.process_time() - cpu_start
        packets = plan.sessions * plan.streams_per_session * plan.packets_per_stream
        conn.send(("done", ProducerResult(wall, cpu, plan.payload_bytes, packets)))
        conn.recv()  # "close"
        for session in sessions:
            session.close()
        sessions.clear()
        conn.send(("closed", None))
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        for session in sessions:
            session.control.close()
            session.data.close()


# --------------------------------------------------------------------------- verification


@dataclasses.dataclass(frozen=True)
class Verification:
    data_bytes: int
    index_records: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _session_directory(output_dir: Path, name: str) -> Path | None:
    pattern = re.compile(rf"{re.escape(name)}-\d{{8}}-\d{{6}}")
    host_dir = output_dir / HOSTNAME
    if not host_dir.is_dir():
        return None
    matches = [entry for entry in host_dir.iterdir() if pattern.fullmatch(entry.name)]
    return matches[0] if len(matches) == 1 else None


def verify_output(output_dir: Path, plan: ProducerPlan) -> Verification:
    """Every data file holds its packets and every index file one record per packet."""
    problems: list[str] = []
    data_bytes = records = 0
    expected_size = plan.packets_per_stream * plan.packet_size
    for number in range(plan.sessions):
        name = plan.session_name(number)
        session_dir = _session_directory(output_dir, name)
        if session_dir is None:
            problems.append(f"{name}: no session directory under {output_dir / HOSTNAME}")
            continue
        trace_dir = session_dir / STREAM_PATH
        for stream in range(plan.streams_per_session):
            channel = f"channel0_{stream}"
            try:
                size = os.stat(trace_dir / channel).st_size
                index_size = os.stat(trace_dir / "index" / f"{channel}.idx").st_size
            except FileNotFoundError as error:
                problems.append(f"{name}/{channel}: {error.strerror}: {error.filename}")
                continue
            count, partial = divmod(index_size - INDEX_HEADER_SIZE, INDEX_RECORD_SIZE)
            data_bytes += size
            records += count
            if size != expected_size:
                problems.append(f"{name}/{channel}: {size} bytes, expected {expected_size}")
            if partial or count != plan.packets_per_stream:
                problems.append(f"{name}/{channel}.idx: {count} records (+{partial} bytes), "
                                f"expected {plan.packets_per_stream}")
    return Verification(data_bytes, records, tuple(problems[:5]))
