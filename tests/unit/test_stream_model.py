"""Relay streams: sequence numbers, index halves, beacons, closing, and rotation pivots.

The data side of a packet is what a data connection does with it (`begin_packet`, `write`,
`end_packet`, then `try_close` if a close was requested); the control side is a SEND_INDEX.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrelayd.model.chunk import CloseCommand
from pyrelayd.model.counters import ErrorKind
from pyrelayd.model.index import TracefileArray
from pyrelayd.model.relay import Relay
from pyrelayd.model.session import RelaySession
from pyrelayd.model.stream import RelayStream, StreamError, seq_before
from pyrelayd.protocol.index import PacketIndex, read_index_file
from pyrelayd.protocol.relayd import UINT64_MAX, SendIndex
from pyrelayd.storage import paths

STREAM_PATH = "ust/uid/1000/64-bit"
T1 = 1704165000


def receive_data(stream: RelayStream, net_seq_num: int, payload: bytes,
                 padding: int = 0) -> None:
    """One complete packet from the data connection."""
    stream.begin_packet(len(payload))
    stream.write(payload)
    stream.end_packet(net_seq_num, len(payload), padding)
    if stream.close_requested:
        stream.try_close()


def receive_index(stream: RelayStream, net_seq_num: int, packet_bytes: int,
                  packet_seq_num: int | None = None) -> None:
    """SEND_INDEX for a packet (timestamps derived from its sequence number)."""
    seq = net_seq_num if packet_seq_num is None else packet_seq_num
    stream.add_index(SendIndex(stream.handle, net_seq_num, packet_bytes * 8, packet_bytes * 8,
                               100 * net_seq_num, 100 * net_seq_num + 99, 0, 3, 4, seq))


def beacon(stream: RelayStream, net_seq_num: int, timestamp_end: int) -> SendIndex:
    return SendIndex(stream.handle, net_seq_num, 0, 0, 0, timestamp_end, 0, 3, 4, UINT64_MAX)


def index_path(stream: RelayStream) -> Path:
    assert stream.chunk is not None
    return stream.chunk.directory / stream.path_name / "index" / f"{stream.channel_name}.idx"


def records(stream: RelayStream) -> list[PacketIndex]:
    return read_index_file(index_path(stream).read_bytes())[1]


def expected_record(net_seq_num: int, offset: int, packet_bytes: int) -> PacketIndex:
    return PacketIndex(offset, packet_bytes * 8, packet_bytes * 8, 100 * net_seq_num,
                       100 * net_seq_num + 99, 0, 3, 4, net_seq_num)


@pytest.fixture
def stream(relay: Relay, session: RelaySession) -> RelayStream:
    return relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)


# --------------------------------------------------------------------------- sequence numbers


u64 = st.integers(0, UINT64_MAX)


@given(a=u64, distance=st.integers(1, (1 << 63) - 1))
def test_seq_before_is_wrap_safe(a: int, distance: int) -> None:
    b = (a + distance) & UINT64_MAX

    assert seq_before(a, b)
    assert not seq_before(b, a)


@given(a=u64)
def test_a_sequence_number_is_not_before_itself(a: int) -> None:
    assert not seq_before(a, a)


@pytest.mark.parametrize(
    ("a", "b", "before"),
    [
        (0, 1, True),
        (1, 0, False),
        (UINT64_MAX, 0, True),  # "nothing yet" is before the first packet
        (0, UINT64_MAX, False),
        (UINT64_MAX - 1, 2, True),
        (0, 1 << 63, True),  # int64 difference of INT64_MIN is negative
        ((1 << 63) - 1, 0, False),
    ],
)
def test_seq_before_examples(a: int, b: int, before: bool) -> None:
    assert seq_before(a, b) is before


def test_counters_start_at_uint64_max(stream: RelayStream) -> None:
    assert (stream.prev_data_seq, stream.prev_index_seq) == (UINT64_MAX, UINT64_MAX)
    assert stream.last_net_seq_num == UINT64_MAX


# --------------------------------------------------------------------------- index halves


def test_index_control_half_first(stream: RelayStream) -> None:
    receive_index(stream, 0, 16)
    assert stream.prev_index_seq == UINT64_MAX

    receive_data(stream, 0, b"x" * 16)

    assert records(stream) == [expected_record(0, 0, 16)]
    assert stream.prev_index_seq == 0
    assert stream.pending_indexes == {}


def test_index_data_half_first(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    assert records(stream) == []

    receive_index(stream, 0, 16)

    assert records(stream) == [expected_record(0, 0, 16)]
    assert stream.prev_index_seq == 0
    assert stream.pending_indexes == {}


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 64), min_size=1, max_size=8), data=st.data())
def test_halves_in_any_interleaving_give_records_in_packet_order(
        relay: Relay, make_session: Callable[..., RelaySession], sizes: list[int],
        data: st.DataObject) -> None:
    # Each side is in order; which side of which packet comes next is arbitrary.
    stream = relay.add_stream(make_session(), "channel0_0", STREAM_PATH, 0, 0)
    next_data = next_index = 0
    while next_data < len(sizes) or next_index < len(sizes):
        data_next = next_index == len(sizes) or (
            next_data < len(sizes) and data.draw(st.booleans()))
        if data_next:
            receive_data(stream, next_data, bytes([next_data]) * sizes[next_data])
            next_data += 1
        else:
            receive_index(stream, next_index, sizes[next_index])
            next_index += 1

    offsets = [sum(sizes[:seq]) for seq in range(len(sizes))]
    assert records(stream) == [expected_record(seq, offsets[seq], size)
                               for seq, size in enumerate(sizes)]
    assert stream.prev_index_seq == stream.prev_data_seq == len(sizes) - 1
    assert stream.pending_indexes == {}


def test_a_control_half_received_twice_is_an_error(stream: RelayStream) -> None:
    receive_index(stream, 0, 16)

    with pytest.raises(StreamError):
        receive_index(stream, 0, 16)


def test_a_data_half_received_twice_is_an_error(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)

    with pytest.raises(StreamError):
        receive_data(stream, 0, b"x" * 16)


def test_index_1_0_for_peers_before_2_8(relay: Relay,
                                        make_session: Callable[..., RelaySession]) -> None:
    session = make_session(minor=7)
    stream = relay.add_stream(session, "channel0_0", "/myhost/mysess/kernel", 0, 0)
    receive_data(stream, 0, b"x" * 16)

    stream.add_index(SendIndex(stream.handle, 0, 128, 120, 1, 2, 0, 3))

    raw = index_path(stream).read_bytes()
    assert raw[:16] == bytes.fromhex("C1F1DCC1 00000001 00000000 00000038")
    assert read_index_file(raw)[1] == [PacketIndex(0, 128, 120, 1, 2, 0, 3)]


@pytest.mark.parametrize(
    ("minor", "snapshot", "indexed"),
    [(2, False, False), (3, False, False), (4, False, True), (13, False, True),
     (13, True, False)],
)
def test_which_sessions_have_indexes(relay: Relay, make_session: Callable[..., RelaySession],
                                     minor: int, snapshot: bool, indexed: bool) -> None:
    session = make_session(minor=minor, snapshot=snapshot)
    stream = relay.add_stream(session, "channel0_0", "kernel", 0, 0)

    receive_data(stream, 0, b"x" * 16)

    assert session.has_indexes is indexed
    assert index_path(stream).exists() is indexed
    assert stream.data_pending(0) is False  # data alone is enough without indexes or at first


# --------------------------------------------------------------------------- beacons


def test_a_beacon_is_never_written(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    receive_index(stream, 0, 16)

    stream.add_index(beacon(stream, 0, 5000))

    assert records(stream) == [expected_record(0, 0, 16)]
    assert stream.beacon_ts_end == 5000
    assert stream.pending_indexes == {}


def test_a_beacon_before_any_index_marks_the_stream_idle(stream: RelayStream) -> None:
    # lttng-relayd 2.15+: a stream that never had a packet is INACTIVE (not RETRY forever),
    # with the CTF stream id the beacon carries.
    stream.add_index(beacon(stream, UINT64_MAX, 5000))

    assert stream.beacon_ts_end == 5000
    assert stream.ctf_stream_id == 3
    assert not index_path(stream).exists()
    assert stream.pending_indexes == {}


def test_a_beacon_while_a_half_is_pending_is_ignored(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    receive_index(stream, 0, 16)
    receive_data(stream, 1, b"y" * 16)  # its index is on its way

    stream.add_index(beacon(stream, 1, 5000))

    assert stream.beacon_ts_end == UINT64_MAX
    assert list(stream.pending_indexes) == [1]
    assert records(stream) == [expected_record(0, 0, 16)]


def test_a_real_index_ends_the_idle_period(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    receive_index(stream, 0, 16)
    stream.add_index(beacon(stream, 0, 5000))

    receive_index(stream, 1, 16)

    assert stream.beacon_ts_end == UINT64_MAX


# --------------------------------------------------------------------------- data pending


def test_data_pending_needs_data_and_index_up_to_the_last_packet(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    receive_index(stream, 0, 16)
    receive_data(stream, 1, b"y" * 16)

    assert stream.data_pending(1) is True
    receive_index(stream, 1, 16)
    assert stream.data_pending(1) is False
    assert stream.data_pending_checked


# --------------------------------------------------------------------------- closing


def test_close_with_everything_in_closes_at_once(relay: Relay, session: RelaySession,
                                                 stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    receive_index(stream, 0, 16)
    chunk = stream.chunk
    assert chunk is not None
    references = chunk.references

    stream.request_close(0)

    assert stream.closed
    assert stream.data_file is None and stream.index_file is None
    assert relay.find_stream(stream.handle) is None
    assert stream.handle not in session.streams
    assert chunk.references == references - 1


def test_close_with_data_pending_waits_for_it(stream: RelayStream) -> None:
    receive_data(stream, 0, b"x" * 16)
    receive_index(stream, 0, 16)

    stream.request_close(2)
    receive_index(stream, 1, 16)
    receive_data(stream, 1, b"y" * 16)
    assert not stream.closed

    receive_data(stream, 2, b"z" * 16)

    assert stream.closed


def test_close_of_a_stream_that_never_sent_anything(stream: RelayStream) -> None:
    stream.request_close(UINT64_MAX)

    assert stream.closed


def test_close_announcing_packet_0_before_any_data_waits(stream: RelayStream) -> None:
    stream.request_close(0)
    assert not stream.closed

    receive_data(stream, 0, b"x")

    assert stream.closed


def test_connection_loss_without_close_stream_ends_at_the_highest_pending_index(
        stream: RelayStream) -> None:
    receive_data(stream, 0, b"a" * 8)
    receive_index(stream, 0, 8)
    receive_data(stream, 1, b"b" * 8)  # its control half will never come
    receive_index(stream, 2, 8)  # its data is still on its way

    stream.request_close(None)

    assert not stream.closed
    assert stream.last_net_seq_num == 2
    assert list(stream.pending_indexes) == [2]
    receive_data(stream, 2, b"c" * 8)
    assert stream.closed


def test_connection_loss_records_the_completed_indexes(relay: Relay, stream: RelayStream) -> None:
    directory = index_path(stream).parent
    receive_data(stream, 0, b"a" * 8)
    receive_index(stream, 0, 8)
    receive_data(stream, 1, b"b" * 8)
    receive_index(stream, 2, 8)
    stream.request_close(None)

    receive_data(stream, 2, b"c" * 8)

    raw = (directory / "channel0_0.idx").read_bytes()
    assert read_index_file(raw)[1] == [expected_record(0, 0, 8), expected_record(2, 16, 8)]


def test_connection_loss_with_nothing_pending_closes_at_once(stream: RelayStream) -> None:
    receive_data(stream, 0, b"a" * 8)  # data half only: dropped

    stream.request_close(None)

    assert stream.closed


def test_an_aborted_session_closes_streams_even_with_data_pending(
        session: RelaySession, stream: RelayStream) -> None:
    receive_index(stream, 0, 8)
    session.abort()

    stream.request_close(None)

    assert stream.closed


def test_closing_a_session_requests_the_close_of_each_stream(
        relay: Relay, session: RelaySession, stream: RelayStream) -> None:
    waiting = relay.add_stream(session, "channel0_1", STREAM_PATH, 0, 0)
    receive_index(waiting, 0, 8)

    session.close()

    assert stream.closed
    assert waiting.close_requested and not waiting.closed


def test_the_session_goes_when_its_last_stream_and_holder_do(
        relay: Relay, session: RelaySession, stream: RelayStream) -> None:
    session.close()
    session.put()  # the control connection's reference

    assert session.released
    assert relay.sessions == {}


def test_metadata_is_appended_with_padding_and_counted(relay: Relay,
                                                       session: RelaySession) -> None:
    metadata = relay.add_stream(session, paths.METADATA_CHANNEL, STREAM_PATH, 0, 0)

    metadata.write(b"trace {};")
    metadata.end_metadata(9, padding_size=7)

    assert metadata.metadata_received == 16
    assert metadata.is_metadata and not metadata.has_indexes
    assert metadata.chunk is not None
    path = metadata.chunk.directory / STREAM_PATH / "metadata"
    assert path.read_bytes() == b"trace {};" + bytes(7)


# --------------------------------------------------------------------------- rotation pivot


def test_data_of_the_next_chunk_written_before_rotation_is_moved_to_it(
        relay: Relay, session: RelaySession, stream: RelayStream) -> None:
    receive_data(stream, 0, b"a" * 8)
    receive_index(stream, 0, 8, packet_seq_num=0)
    receive_data(stream, 1, b"b" * 8)  # packet_seq_num 1: the first of chunk 1
    relay.create_trace_chunk(session, 1, T1, None)
    next_chunk = session.current_chunk
    assert next_chunk is not None

    stream.set_pending_rotation(next_chunk, 1)
    receive_index(stream, 1, 8, packet_seq_num=1)

    old = session.directory / paths.TMP_OLD_CHUNK / STREAM_PATH
    new = session.directory / paths.TMP_NEW_CHUNK / STREAM_PATH
    assert (old / "channel0_0").read_bytes() == b"a" * 8
    assert (new / "channel0_0").read_bytes() == b"b" * 8
    assert read_index_file((old / "index/channel0_0.idx").read_bytes())[1] == [
        expected_record(0, 0, 8)]
    assert read_index_file((new / "index/channel0_0.idx").read_bytes())[1] == [
        expected_record(1, 0, 8)]
    assert stream.rotation is None
    assert stream.chunk is next_chunk


def test_rotation_waits_for_the_index_of_the_last_packet_of_the_old_chunk(
        relay: Relay, session: RelaySession, stream: RelayStream) -> None:
    receive_data(stream, 0, b"a" * 8)
    receive_index(stream, 0, 8, packet_seq_num=0)
    relay.create_trace_chunk(session, 1, T1, None)
    assert session.current_chunk is not None
    stream.set_pending_rotation(session.current_chunk, 2)
    assert stream.rotation is not None

    receive_data(stream, 1, b"b" * 8)
    receive_index(stream, 1, 8, packet_seq_num=1)

    assert stream.rotation is None
    old = session.directory / paths.TMP_OLD_CHUNK / STREAM_PATH
    assert (old / "channel0_0").read_bytes() == b"a" * 8 + b"b" * 8


def test_a_second_rotation_while_one_is_pending_is_an_error(
        relay: Relay, session: RelaySession, stream: RelayStream) -> None:
    relay.create_trace_chunk(session, 1, T1, None)
    stream.set_pending_rotation(session.current_chunk, 5)

    with pytest.raises(StreamError):
        stream.set_pending_rotation(session.current_chunk, 5)


@pytest.mark.parametrize("count", [2**31, 2**63, UINT64_MAX])
def test_a_huge_tracefile_count_costs_only_the_files_written(count: int) -> None:
    """The count is the peer's (any u64): found by fuzzing the control handler, a list of
    `count` entries raised OverflowError (or took gigabytes) on ADD_STREAM."""
    array = TracefileArray(count)
    for seq in range(5):
        array.commit(seq)
        array.rotate_write()
    assert len(array.heads) <= 5 and len(array.tails) <= 5
    assert array.seq_in_file(0, 0) and not array.seq_in_file(0, 1)
    assert array.seq_in_file(4, 4) and not array.seq_in_file(count - 1, 4)


# --------------------------------------------------------------------------- domain values


def test_a_control_half_kept_for_its_data_is_a_packet_index(stream: RelayStream) -> None:
    receive_index(stream, 0, 16)

    kept = stream.pending_indexes[0].packet
    assert kept == PacketIndex(0, 128, 128, 0, 99, 0, 3, 4, 0)  # its offset: the data half's
    receive_data(stream, 0, b"x" * 16)
    assert stream.pending_indexes == {}


def test_the_last_announced_packet_closes_the_stream_at_the_end_of_the_packet(
        stream: RelayStream) -> None:
    stream.request_close(0)

    stream.begin_packet(4)
    stream.write(b"abcd")
    stream.end_packet(0, 4, 0)  # no try_close needed from the data connection

    assert stream.closed


def test_data_pending_rounds_of_a_session(relay: Relay, session: RelaySession,
                                          stream: RelayStream) -> None:
    quiet = relay.add_stream(session, "channel0_1", STREAM_PATH, 0, 0)
    relay.begin_data_pending(session.id)
    assert relay.end_data_pending(session.id) is True  # nobody asked yet

    stream.data_pending(UINT64_MAX)
    quiet.mark_quiescent()

    assert relay.end_data_pending(session.id) is False
    assert relay.end_data_pending(session.id + 100) is False  # no such session: nothing pending


def test_close_trace_chunk_takes_the_models_close_command_or_its_value(
        relay: Relay, session: RelaySession) -> None:
    relay.create_trace_chunk(session, 1, T1, None)
    chunk = relay.find_chunk(session, 0)
    assert chunk is not None

    relay.close_trace_chunk(session, 0, T1 + 60, 0)  # a wire value: MOVE_TO_COMPLETED

    assert chunk.close_command is CloseCommand.MOVE_TO_COMPLETED
    assert relay.find_chunk(session, 0) is None  # archived: nobody else held it


def test_a_stream_that_cannot_write_closes_alone(relay: Relay, session: RelaySession,
                                                 stream: RelayStream) -> None:
    other = relay.add_stream(session, "channel0_1", STREAM_PATH, 0, 0)

    stream.fail(OSError(errno.ENOSPC, "No space left on device"))

    assert stream.closed and relay.find_stream(stream.handle) is None
    assert relay.counters.errors[ErrorKind.DISK] == 1
    assert not session.aborted and not session.released
    receive_data(other, 0, b"still")
    receive_index(other, 0, 5)
    assert other.prev_index_seq == 0
