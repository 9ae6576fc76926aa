"""CTF index files (`index/<stream>.idx`): 16-byte header, then fixed-size big-endian records."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.protocol.index import (
    UINT64_MAX,
    IndexFormatError,
    IndexHeader,
    PacketIndex,
    encode_header,
    index_minor_for,
    read_index_file,
)

u64 = st.integers(0, UINT64_MAX)
records_1_1 = st.builds(PacketIndex, u64, u64, u64, u64, u64, u64, u64, u64, u64)
records_1_0 = st.builds(PacketIndex, u64, u64, u64, u64, u64, u64, u64)


def test_index_1_1_header() -> None:
    assert encode_header(1) == bytes.fromhex("C1F1DCC1 00000001 00000001 00000048")


def test_index_1_0_header_announces_56_byte_records() -> None:
    assert encode_header(0) == bytes.fromhex("C1F1DCC1 00000001 00000000 00000038")


@pytest.mark.parametrize(("protocol_minor", "index_minor"),
                         [(4, 0), (7, 0), (8, 1), (11, 1), (13, 1)])
def test_index_1_1_from_protocol_2_8_on(protocol_minor: int, index_minor: int) -> None:
    assert index_minor_for(protocol_minor) == index_minor


def test_record_1_1_is_nine_u64_offset_first() -> None:
    record = PacketIndex(*range(1, 10))

    assert record.encode(1) == struct.pack(">9Q", *range(1, 10))
    assert len(record.encode(1)) == 72


def test_record_1_0_drops_instance_id_and_packet_seq_num() -> None:
    record = PacketIndex(*range(1, 10))

    assert record.encode(0) == struct.pack(">7Q", *range(1, 8))
    assert len(record.encode(0)) == 56


@given(record=records_1_1)
def test_record_1_1_round_trip(record: PacketIndex) -> None:
    assert PacketIndex.decode(record.encode(1), 1) == record


@given(record=records_1_0)
def test_record_1_0_round_trip_leaves_the_1_1_fields_unknown(record: PacketIndex) -> None:
    decoded = PacketIndex.decode(record.encode(0), 0)

    assert decoded == record
    assert (decoded.stream_instance_id, decoded.packet_seq_num) == (UINT64_MAX, UINT64_MAX)


@pytest.mark.parametrize(("index_minor", "record_size"), [(1, 72), (0, 56)])
@given(data=st.data())
def test_read_index_file_returns_every_record(index_minor: int, record_size: int,
                                              data: st.DataObject) -> None:
    records = data.draw(st.lists(records_1_1 if index_minor else records_1_0, max_size=5))
    raw = encode_header(index_minor) + b"".join(r.encode(index_minor) for r in records)

    header, decoded = read_index_file(raw)

    assert header == IndexHeader(1, index_minor, record_size)
    assert decoded == records


@pytest.mark.parametrize("partial", [1, 30, 71])
def test_read_index_file_ignores_a_trailing_partial_record(partial: int) -> None:
    # A live reader may see the file while a record is being appended.
    records = [PacketIndex(0, 8, 8, 1, 2, 0, 0, 0, 0), PacketIndex(1, 8, 8, 2, 3, 0, 0, 0, 1)]
    complete = encode_header(1) + b"".join(r.encode(1) for r in records)
    next_record = PacketIndex(2, 8, 8, 3, 4, 0, 0, 0, 2).encode(1)

    _, decoded = read_index_file(complete + next_record[:partial])

    assert decoded == records


def test_read_index_file_with_only_a_header_has_no_records() -> None:
    assert read_index_file(encode_header(1))[1] == []


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(encode_header(1)[:15], id="short header"),
        pytest.param(bytes.fromhex("C1F1DCC0 00000001 00000001 00000048"), id="bad magic"),
        pytest.param(bytes.fromhex("C1DCF1C1 00000001 00000001 00000048"), id="swapped magic"),
        pytest.param(bytes.fromhex("C1F1DCC1 00000002 00000001 00000048"), id="major 2"),
        pytest.param(bytes.fromhex("C1F1DCC1 00000001 00000001 00000040"), id="64-byte records"),
        pytest.param(bytes.fromhex("C1F1DCC1 00000001 00000001 00000000"), id="0-byte records"),
    ],
)
def test_unreadable_index_files_are_rejected(raw: bytes) -> None:
    with pytest.raises(IndexFormatError):
        read_index_file(raw)


def test_index_format_error_is_a_value_error() -> None:
    assert issubclass(IndexFormatError, ValueError)
