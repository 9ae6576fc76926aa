"""Data connections (port 5343): a one-way stream of (32-byte header, packet) pairs.

`DataProtocol` is fed the way asyncio feeds a BufferedProtocol (get_buffer, then
buffer_updated), over a fake transport; control-side halves (indexes, close requests) are given
to the stream model directly. Also here: the control framing's payload size limit.
"""

from __future__ import annotations

import itertools
import os
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrelayd.model.relay import Relay
from pyrelayd.model.session import RelaySession
from pyrelayd.model.stream import RelayStream, StreamError
from pyrelayd.protocol.data import DataHandler
from pyrelayd.protocol.index import PacketIndex, read_index_file
from pyrelayd.protocol.relayd import (
    MAX_CONTROL_PAYLOAD,
    UINT64_MAX,
    Command,
    ControlHeader,
    DataFramer,
    DataHeader,
    SendIndex,
    Version,
    version_reply,
)
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from tests.unit.fakes import FakeTransport

STREAM_PATH = "ust/uid/1000/64-bit"




class DataConnection:
    def __init__(self, relay: Relay) -> None:
        self.transport = FakeTransport()
        self.protocol = DataProtocol(relay, set())
        self.protocol.connection_made(self.transport)

    @property
    def aborted(self) -> bool:
        return self.transport.aborted

    def send(self, raw: bytes, pieces: Iterable[int] = ()) -> None:
        """Deliver `raw` in reads of the given sizes (then in reads as large as possible)."""
        view = memoryview(raw)
        sizes = iter(pieces)
        while view and not self.transport.is_closing():
            buffer = self.protocol.get_buffer(-1)
            size = min(len(buffer), len(view), next(sizes, len(view)))
            buffer[:size] = view[:size]
            self.protocol.buffer_updated(size)
            view = view[size:]

    def disconnect(self) -> None:
        self.protocol.connection_lost(None)


def packet(stream: RelayStream, net_seq_num: int, payload: bytes, padding: int = 0) -> bytes:
    return DataHeader(stream.handle, net_seq_num, len(payload), padding).encode() + payload


def control_half(stream: RelayStream, net_seq_num: int, packet_bytes: int) -> SendIndex:
    """What SEND_INDEX tells the relay about a packet (packet_seq_num = net_seq_num here)."""
    return SendIndex(stream.handle, net_seq_num, packet_bytes * 8, packet_bytes * 8,
                     10 * net_seq_num, 10 * net_seq_num + 9, 0, 1, 2, net_seq_num)


def stream_directory(stream: RelayStream) -> Path:
    assert stream.chunk is not None
    return stream.chunk.directory / stream.path_name


def index_records(path: Path) -> list[PacketIndex]:
    return read_index_file(path.read_bytes())[1]


@pytest.fixture
def channel(relay: Relay, session: RelaySession) -> RelayStream:
    return relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)


# --------------------------------------------------------------------------- framing


def test_a_packet_is_appended_with_its_padding_and_indexed(relay: Relay,
                                                           channel: RelayStream) -> None:
    data = DataConnection(relay)
    channel.add_index(control_half(channel, 0, 100))

    data.send(packet(channel, 0, b"x" * 90, padding=10))

    directory = stream_directory(channel)
    assert (directory / "channel0_0").read_bytes() == b"x" * 90 + bytes(10)
    assert index_records(directory / "index/channel0_0.idx") == [
        PacketIndex(0, 800, 800, 0, 9, 0, 1, 2, 0)]
    assert channel.prev_data_seq == 0
    assert not data.aborted
    assert data.transport.written == b""


def test_byte_by_byte_delivery(relay: Relay, channel: RelayStream) -> None:
    data = DataConnection(relay)
    raw = packet(channel, 0, b"a" * 40, 8) + packet(channel, 1, b"b" * 16) + packet(
        channel, 2, b"", 0)

    data.send(raw, pieces=itertools.repeat(1))

    assert (stream_directory(channel) / "channel0_0").read_bytes() == (
        b"a" * 40 + bytes(8) + b"b" * 16)
    assert channel.prev_data_seq == 2


def test_a_packet_larger_than_the_receive_buffer(relay: Relay, channel: RelayStream) -> None:
    payload = os.urandom(1 << 20) * 2 + b"tail"
    data = DataConnection(relay)

    data.send(packet(channel, 0, payload, padding=4092))

    assert (stream_directory(channel) / "channel0_0").read_bytes() == payload + bytes(4092)


# Packets are never empty: a SEND_INDEX with packet_size 0 is a live beacon.
packets = st.lists(
    st.tuples(st.binary(min_size=1, max_size=300), st.integers(0, 64)), min_size=1, max_size=6)
reads = st.lists(st.integers(1, 80), max_size=40)
counter = itertools.count()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=packets, pieces=reads, index_first=st.booleans())
def test_packets_split_anywhere_write_the_same_files(
        relay: Relay, make_session: Callable[..., RelaySession],
        contents: list[tuple[bytes, int]], pieces: list[int], index_first: bool) -> None:
    session = make_session(name=f"split-{next(counter)}")
    stream = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    halves = [control_half(stream, seq, len(payload) + padding)
              for seq, (payload, padding) in enumerate(contents)]
    if index_first:
        for half in halves:
            stream.add_index(half)

    DataConnection(relay).send(
        b"".join(packet(stream, seq, payload, padding)
                 for seq, (payload, padding) in enumerate(contents)),
        pieces)
    if not index_first:
        for half in halves:
            stream.add_index(half)

    directory = stream_directory(stream)
    assert (directory / "channel0_0").read_bytes() == b"".join(
        payload + bytes(padding) for payload, padding in contents)
    sizes = [len(payload) + padding for payload, padding in contents]
    offsets = list(itertools.accumulate(sizes, initial=0))[:-1]
    assert [record.offset for record in index_records(directory / "index/channel0_0.idx")] == (
        offsets)
    assert stream.prev_data_seq == stream.prev_index_seq == len(contents) - 1


# --------------------------------------------------------------------------- refused packets


def test_a_packet_for_an_unknown_stream_aborts_only_that_connection(
        relay: Relay, channel: RelayStream) -> None:
    good, bad = DataConnection(relay), DataConnection(relay)
    good.send(packet(channel, 0, b"first"))

    bad.send(DataHeader(999, 0, 5, 0).encode() + b"other")
    bad.disconnect()
    good.send(packet(channel, 1, b"second"))

    assert bad.aborted
    assert not good.aborted
    assert bad.transport.written == b""
    assert relay.find_stream(channel.handle) is channel
    assert not channel.close_requested
    assert (stream_directory(channel) / "channel0_0").read_bytes() == b"firstsecond"


def test_a_packet_for_a_metadata_stream_aborts(relay: Relay, session: RelaySession) -> None:
    metadata = relay.add_stream(session, "metadata", STREAM_PATH, 0, 0)
    data = DataConnection(relay)

    data.send(packet(metadata, 0, b"/* CTF */"))

    assert data.aborted
    assert (stream_directory(metadata) / "metadata").read_bytes() == b""


def test_a_connection_carries_the_streams_of_one_session_only(
        relay: Relay, make_session: Callable[..., RelaySession]) -> None:
    first = relay.add_stream(make_session(name="first"), "channel0_0", STREAM_PATH, 0, 0)
    second = relay.add_stream(make_session(name="second"), "channel0_0", STREAM_PATH, 0, 0)
    data = DataConnection(relay)
    data.send(packet(first, 0, b"mine"))

    data.send(packet(second, 0, b"theirs"))

    assert data.aborted
    assert (stream_directory(second) / "channel0_0").read_bytes() == b""


def test_a_packet_for_a_closed_stream_aborts(relay: Relay, channel: RelayStream) -> None:
    channel.request_close(UINT64_MAX)
    data = DataConnection(relay)

    data.send(packet(channel, 0, b"late"))

    assert data.aborted


# --------------------------------------------------------------------------- connection loss


def test_eof_in_the_middle_of_a_packet_keeps_the_bytes_received(
        relay: Relay, channel: RelayStream) -> None:
    data = DataConnection(relay)
    channel.add_index(control_half(channel, 0, 100))
    data.send(packet(channel, 0, b"z" * 100)[: 32 + 40])

    data.disconnect()

    directory = stream_directory(channel)
    assert (directory / "channel0_0").read_bytes() == b"z" * 40
    assert channel.prev_data_seq == UINT64_MAX  # the packet is not accounted
    assert not (directory / "index/channel0_0.idx").exists()


def test_eof_in_the_middle_of_a_header_writes_nothing(relay: Relay,
                                                      channel: RelayStream) -> None:
    data = DataConnection(relay)

    data.send(packet(channel, 0, b"z" * 10)[:20])
    data.disconnect()

    assert (stream_directory(channel) / "channel0_0").read_bytes() == b""


def test_losing_a_data_connection_that_carried_packets_closes_its_session_streams(
        relay: Relay, session: RelaySession, channel: RelayStream) -> None:
    data = DataConnection(relay)
    data.send(packet(channel, 0, b"x"))
    channel.add_index(control_half(channel, 0, 1))

    data.disconnect()

    assert channel.closed
    assert relay.find_stream(channel.handle) is None


def test_losing_an_idle_data_connection_changes_nothing(relay: Relay,
                                                        channel: RelayStream) -> None:
    DataConnection(relay).disconnect()

    assert not channel.close_requested


# --------------------------------------------------------------------------- sans-IO


def test_the_handler_takes_framed_packets_without_a_socket(relay: Relay,
                                                           channel: RelayStream) -> None:
    framer, handler = DataFramer(), DataHandler(relay)
    raw = packet(channel, 0, b"a" * 10, padding=2) + packet(channel, 1, b"b" * 5)

    for piece in framer.feed(raw[:40]):
        handler.handle(piece)
    assert handler.header == DataHeader(channel.handle, 0, 10, 2)
    for piece in framer.feed(raw[40:]):
        handler.handle(piece)

    assert handler.header is None
    assert channel.prev_data_seq == 1
    assert (stream_directory(channel) / "channel0_0").read_bytes() == (
        b"a" * 10 + bytes(2) + b"b" * 5)
    assert handler.session is channel.session


def test_the_handler_refuses_a_packet_for_an_unknown_stream(relay: Relay,
                                                            channel: RelayStream) -> None:
    [piece] = DataFramer().feed(DataHeader(999, 0, 0, 0).encode())

    with pytest.raises(StreamError, match="unknown stream 999"):
        DataHandler(relay).handle(piece)


# --------------------------------------------------------------------------- control framing limit


def control_connection(relay: Relay) -> tuple[ControlProtocol, FakeTransport]:
    transport = FakeTransport()
    protocol = ControlProtocol(relay, set())
    protocol.connection_made(transport)
    return protocol, transport


@pytest.mark.parametrize("command", [Command.VERSION, Command.SEND_METADATA, 10000])
def test_a_control_payload_over_128_mib_aborts_without_allocating_it(relay: Relay,
                                                                     command: int) -> None:
    protocol, transport = control_connection(relay)
    tracemalloc.start()
    try:
        protocol.data_received(ControlHeader(command, MAX_CONTROL_PAYLOAD + 1).encode())
        protocol.data_received(bytes(64 * 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert transport.aborted
    assert transport.written == b""
    assert peak < 4 << 20


def test_a_control_payload_of_exactly_128_mib_is_read_and_its_excess_dropped(
        relay: Relay) -> None:
    protocol, transport = control_connection(relay)
    protocol.data_received(ControlHeader(Command.VERSION, MAX_CONTROL_PAYLOAD).encode())

    protocol.data_received(Version(2, 13).encode() + bytes(1 << 20))
    for _ in range(3):
        protocol.data_received(bytes(1 << 20))

    assert not transport.closed
    assert transport.written == version_reply()
    assert protocol.framer.buffered == 0
    assert protocol.framer.discarding == MAX_CONTROL_PAYLOAD - 8 - (4 << 20)


# --------------------------------------------------------------------------- tracefile splitting


@pytest.fixture
def split_channel(relay: Relay, session: RelaySession) -> RelayStream:
    """A stream limited to 100-byte tracefiles, 2 of them (`lttng enable-channel -C 100 -W 2`)."""
    return relay.add_stream(session, "channel0_0", STREAM_PATH, 100, 2)


def send_indexed(data: DataConnection, stream: RelayStream, net_seq_num: int,
                 payload: bytes, padding: int = 0) -> None:
    data.send(packet(stream, net_seq_num, payload, padding))
    stream.add_index(control_half(stream, net_seq_num, len(payload) + padding))


def test_split_tracefiles_are_suffixed_from_the_start(split_channel: RelayStream) -> None:
    directory = stream_directory(split_channel)

    assert sorted(path.name for path in directory.iterdir()) == ["channel0_0_0"]


def test_a_packet_that_does_not_fit_opens_the_next_tracefile(
        relay: Relay, split_channel: RelayStream) -> None:
    data = DataConnection(relay)

    send_indexed(data, split_channel, 0, b"a" * 60)
    send_indexed(data, split_channel, 1, b"b" * 40)  # 60 + 40 fits in 100
    send_indexed(data, split_channel, 2, b"c" * 60)

    directory = stream_directory(split_channel)
    assert (directory / "channel0_0_0").read_bytes() == b"a" * 60 + b"b" * 40
    assert (directory / "channel0_0_1").read_bytes() == b"c" * 60
    assert [r.offset for r in index_records(directory / "index/channel0_0_0.idx")] == [0, 60]
    assert [r.offset for r in index_records(directory / "index/channel0_0_1.idx")] == [0]


def test_the_size_check_ignores_padding_but_the_file_size_counts_it(
        relay: Relay, split_channel: RelayStream) -> None:
    data = DataConnection(relay)

    send_indexed(data, split_channel, 0, b"a" * 50, padding=30)
    send_indexed(data, split_channel, 1, b"b" * 20, padding=30)  # 80 + 20 <= 100
    send_indexed(data, split_channel, 2, b"c" * 1)  # 130 + 1 > 100

    directory = stream_directory(split_channel)
    assert (directory / "channel0_0_0").stat().st_size == 130
    assert (directory / "channel0_0_1").read_bytes() == b"c"


def test_wrapping_around_unlinks_then_recreates_the_oldest_tracefile(
        relay: Relay, split_channel: RelayStream) -> None:
    data = DataConnection(relay)
    directory = stream_directory(split_channel)
    send_indexed(data, split_channel, 0, b"a" * 60)
    send_indexed(data, split_channel, 1, b"b" * 60)
    # A live reader holding the oldest files keeps their content.
    with open(directory / "channel0_0_0", "rb") as old_data, \
            open(directory / "index/channel0_0_0.idx", "rb") as old_index:

        send_indexed(data, split_channel, 2, b"c" * 60)

        assert old_data.read() == b"a" * 60
        assert os.fstat(old_data.fileno()).st_ino != (directory / "channel0_0_0").stat().st_ino
        assert len(old_index.read()) == 16 + 72
        assert os.fstat(old_index.fileno()).st_ino != (
            directory / "index/channel0_0_0.idx").stat().st_ino
    assert (directory / "channel0_0_0").read_bytes() == b"c" * 60
    assert (directory / "channel0_0_1").read_bytes() == b"b" * 60
    assert index_records(directory / "index/channel0_0_0.idx") == [
        PacketIndex(0, 480, 480, 20, 29, 0, 1, 2, 2)]
    assert sorted(path.name for path in directory.iterdir()) == [
        "channel0_0_0", "channel0_0_1", "index"]


def test_tracefile_count_0_never_wraps(relay: Relay, session: RelaySession) -> None:
    stream = relay.add_stream(session, "channel0_0", STREAM_PATH, 100, 0)
    data = DataConnection(relay)

    for seq in range(4):
        send_indexed(data, stream, seq, bytes([seq]) * 60)

    directory = stream_directory(stream)
    assert sorted(path.name for path in directory.iterdir()) == [
        "channel0_0_0", "channel0_0_1", "channel0_0_2", "channel0_0_3", "index"]
    assert (directory / "channel0_0_3").read_bytes() == b"\3" * 60


def test_without_tracefile_size_one_file_grows(relay: Relay, channel: RelayStream) -> None:
    data = DataConnection(relay)

    for seq in range(3):
        send_indexed(data, channel, seq, b"x" * 4096)

    directory = stream_directory(channel)
    assert sorted(path.name for path in directory.iterdir()) == ["channel0_0", "index"]
    assert (directory / "channel0_0").stat().st_size == 3 * 4096


@pytest.fixture(autouse=True)
def _no_stray_tracemalloc() -> Iterator[None]:
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()
