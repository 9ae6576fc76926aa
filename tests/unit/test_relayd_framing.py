"""The relayd framers (sans-IO): control and data bytes in, whole messages out.

No socket and no relay: bytes are fed cut anywhere (hypothesis), and what comes out must not
depend on where the cuts are; lengths are checked before anything is kept.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.protocol.relayd import (
    MAX_CONTROL_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    Command,
    ControlEvent,
    ControlFramer,
    ControlHeader,
    ControlRequest,
    DataFramer,
    DataHeader,
    MetadataBytes,
    PacketPiece,
    ProtocolError,
    SendMetadataHeader,
    request_payload_limit,
)


def split(raw: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({cut % (len(raw) + 1) for cut in cuts})
    bounds = [0, *points, len(raw)]
    return [raw[start:end] for start, end in itertools.pairwise(bounds)]


def control_events(framer: ControlFramer, pieces: Iterable[bytes]) -> Iterator[ControlEvent]:
    for piece in pieces:
        for event in framer.feed(piece):
            # Metadata pieces point into the input: copy them before the next feed.
            yield event if isinstance(event, ControlRequest) else MetadataBytes(
                bytes(event.data), event.last)


def merged(events: Iterable[ControlEvent]) -> list[ControlEvent]:
    """Events with the metadata pieces of each SEND_METADATA joined (cut-independent)."""
    out: list[ControlEvent] = []
    for event in events:
        if isinstance(event, MetadataBytes) and out and isinstance(out[-1], MetadataBytes) \
                and not out[-1].last:
            out[-1] = MetadataBytes(bytes(out[-1].data) + bytes(event.data), event.last)
        else:
            out.append(event)
    return out


# --------------------------------------------------------------------------- control

# Known commands with payloads under, at and over their limit; unknown ones keep nothing.
COMMANDS = [Command.VERSION, Command.CLOSE_STREAM, Command.SEND_INDEX, Command.STREAMS_SENT,
            Command.CREATE_TRACE_CHUNK, Command.ROTATE_STREAMS, 0, 23, 4242]
requests = st.tuples(st.sampled_from(COMMANDS), st.binary(max_size=400),
                     st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
metadata = st.tuples(st.just(Command.SEND_METADATA), st.binary(max_size=300),
                     st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))


def expected_events(messages: list[tuple[int, bytes, int, int]]) -> list[ControlEvent]:
    events: list[ControlEvent] = []
    for command, payload, circuit, version in messages:
        size = len(payload)
        header = ControlHeader(command, size, circuit, version)
        if command == Command.SEND_METADATA:
            events.append(ControlRequest(header, payload[:12]))
            events.append(MetadataBytes(payload[12:], True))
        else:
            events.append(ControlRequest(header, payload[: request_payload_limit(command)]))
    return events


def encode(messages: list[tuple[int, bytes, int, int]]) -> bytes:
    return b"".join(ControlHeader(command, len(payload), circuit, version).encode() + payload
                    for command, payload, circuit, version in messages)


def with_fixed_part(message: tuple[int, bytes, int, int]) -> tuple[int, bytes, int, int]:
    command, payload, circuit, version = message
    if command == Command.SEND_METADATA:
        payload = SendMetadataHeader(7, 3).encode() + payload
    return command, payload, circuit, version


@given(st.lists(st.one_of(requests, metadata).map(with_fixed_part), max_size=8),
       st.lists(st.integers(0, 10_000), max_size=40))
def test_control_requests_split_anywhere_come_out_the_same(
        messages: list[tuple[int, bytes, int, int]], cuts: list[int]) -> None:
    framer = ControlFramer()

    events = merged(control_events(framer, split(encode(messages), cuts)))

    assert events == expected_events(messages)
    assert not framer.in_message
    assert framer.buffered == framer.discarding == 0


@given(st.lists(requests, max_size=8), st.lists(st.integers(0, 10_000), max_size=40))
def test_nothing_beyond_a_commands_limit_is_ever_kept(
        messages: list[tuple[int, bytes, int, int]], cuts: list[int]) -> None:
    framer = ControlFramer()
    largest = max((request_payload_limit(command) for command, *_ in messages), default=0)
    for piece in split(encode(messages), cuts):
        for _ in framer.feed(piece):
            pass
        assert framer.buffered <= max(largest, 23)  # a payload, or a header's start


def test_a_request_cut_in_its_header_waits_for_the_rest() -> None:
    framer = ControlFramer()
    raw = ControlHeader(Command.CLOSE_STREAM, 16).encode() + bytes(range(16))

    assert list(framer.feed(raw[:10])) == []
    assert framer.in_message
    assert framer.pending == raw[:10]
    assert list(framer.feed(raw[10:30])) == []
    assert framer.pending == raw[:30]
    assert list(framer.feed(raw[30:])) == [
        ControlRequest(ControlHeader(Command.CLOSE_STREAM, 16), bytes(range(16)))]
    assert not framer.in_message
    assert list(framer.feed(b"")) == []


def test_the_excess_of_a_payload_is_drained_not_kept() -> None:
    framer = ControlFramer()
    header = ControlHeader(Command.VERSION, 8 + (1 << 20))

    events = list(framer.feed(header.encode() + bytes(range(8)) + bytes(1000)))

    assert events == [ControlRequest(header, bytes(range(8)))]
    assert framer.in_message
    assert framer.buffered == 0
    assert framer.discarding == (1 << 20) - 1000
    assert list(framer.feed(bytes((1 << 20) - 1000))) == []
    assert not framer.in_message


@pytest.mark.parametrize("command", [Command.VERSION, Command.SEND_METADATA, 10000])
def test_a_payload_over_128_mib_is_refused_at_its_header(command: int) -> None:
    framer = ControlFramer()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="refused"):
            list(framer.feed(ControlHeader(command, MAX_CONTROL_PAYLOAD + 1).encode()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_payload_of_exactly_128_mib_is_accepted() -> None:
    framer = ControlFramer()
    header = ControlHeader(Command.ROTATE_STREAMS, MAX_CONTROL_PAYLOAD)

    assert list(framer.feed(header.encode() + bytes(64))) == []
    assert framer.buffered == 64  # ROTATE_STREAMS is read whole, up to its limit


def test_a_send_metadata_shorter_than_its_fixed_part_is_refused() -> None:
    with pytest.raises(ProtocolError, match="too short"):
        list(ControlFramer().feed(ControlHeader(Command.SEND_METADATA, 11).encode()))


def test_metadata_is_streamed_in_pieces_of_the_input() -> None:
    framer = ControlFramer()
    fixed = SendMetadataHeader(2, 0).encode()
    header = ControlHeader(Command.SEND_METADATA, 12 + 20)
    raw = header.encode() + fixed + b"a" * 20

    first = list(framer.feed(raw[:-5]))
    assert first[0] == ControlRequest(header, fixed)
    assert isinstance(first[1], MetadataBytes)
    assert bytes(first[1].data) == b"a" * 15 and not first[1].last
    assert framer.in_message
    assert framer.buffered == 0  # metadata is never buffered
    [last] = framer.feed(raw[-5:])
    assert isinstance(last, MetadataBytes)
    assert bytes(last.data) == b"a" * 5 and last.last
    assert not framer.in_message


def test_an_empty_send_metadata_still_ends() -> None:
    fixed = SendMetadataHeader(2, 4).encode()
    header = ControlHeader(Command.SEND_METADATA, 12)

    assert list(ControlFramer().feed(header.encode() + fixed)) == [
        ControlRequest(header, fixed), MetadataBytes(b"", True)]


@given(st.lists(st.tuples(st.integers(0, 30), st.binary(max_size=300),
                          st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)), max_size=8),
       st.lists(st.integers(0, 10_000), max_size=30))
def test_the_capture_framer_keeps_every_byte(
        messages: list[tuple[int, bytes, int, int]], cuts: list[int]) -> None:
    framer = ControlFramer(payload_limit=None, max_payload=None, stream_metadata=False)
    raw = encode(messages)
    out = bytearray()
    for piece in split(raw, cuts):
        for event in framer.feed(piece):
            assert isinstance(event, ControlRequest)
            out += event.encode()
    assert bytes(out) + framer.pending == raw
    assert framer.pending == b""


def test_request_limits_are_those_of_the_codec() -> None:
    assert request_payload_limit(Command.SEND_INDEX) == MAX_REQUEST_PAYLOAD[Command.SEND_INDEX]
    assert request_payload_limit(4242) == 0


# --------------------------------------------------------------------------- data

packets = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.binary(max_size=300),
                             st.integers(0, 4096)), max_size=6)


def data_pieces(framer: DataFramer, inputs: Iterable[bytes]) -> list[PacketPiece]:
    return [(header, memoryview(bytes(payload)), complete)
            for piece in inputs for header, payload, complete in framer.feed(piece)]


@given(packets, st.lists(st.integers(0, 10_000), max_size=40))
def test_data_packets_split_anywhere_come_out_the_same(
        contents: list[tuple[int, bytes, int]], cuts: list[int]) -> None:
    headers = [DataHeader(stream, seq, len(body), padding)
               for seq, (stream, body, padding) in enumerate(contents)]
    raw = b"".join(header.encode() + body
                   for header, (_, body, _) in zip(headers, contents, strict=True))
    framer = DataFramer()

    pieces = data_pieces(framer, split(raw, cuts))

    assert [header for header, _, _ in pieces if header is not None] == headers
    bodies: list[bytearray] = []
    for header, payload, complete in pieces:
        if header is not None:
            bodies.append(bytearray())
        bodies[-1] += payload
        if complete:
            assert bytes(bodies[-1]) == contents[len(bodies) - 1][1]
    assert [bytes(body) for body in bodies] == [body for _, body, _ in contents]
    assert sum(complete for _, _, complete in pieces) == len(contents)
    assert not framer.in_packet
    assert framer.partial_header == b""


def test_a_header_cut_by_the_end_of_a_read_is_kept() -> None:
    framer = DataFramer()
    raw = DataHeader(5, 9, 4, 0).encode() + b"abcd"

    assert list(framer.feed(raw[:20])) == []
    assert framer.in_packet
    assert framer.partial_header == raw[:20]
    [(header, payload, complete)] = framer.feed(raw[20:34])
    assert header == DataHeader(5, 9, 4, 0)
    assert (bytes(payload), complete) == (b"ab", False)
    assert framer.payload_left == 2
    [(header, payload, complete)] = framer.feed(raw[34:])
    assert (header, bytes(payload), complete) == (None, b"cd", True)
    assert not framer.in_packet


def test_an_empty_packet_is_complete_at_its_header() -> None:
    [(header, payload, complete)] = DataFramer().feed(DataHeader(1, 0, 0, 8).encode())

    assert header == DataHeader(1, 0, 0, 8)
    assert (bytes(payload), complete) == (b"", True)


def test_payload_pieces_are_slices_of_the_input_not_copies() -> None:
    buffer = bytearray(DataHeader(1, 0, 100, 0).encode() + bytes(100))

    [(_, payload, complete)] = DataFramer().feed(memoryview(buffer))

    assert payload.obj is buffer
    assert complete
