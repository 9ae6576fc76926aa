"""CTF packet index files (`index/<stream>.idx`): a 16-byte header, then fixed-size records."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

from pyrelayd.constants import UINT64_MAX as UINT64_MAX

INDEX_MAGIC = 0xC1F1DCC1
INDEX_MAJOR = 1
HEADER = struct.Struct(">IIII")  # magic, major, minor, packet_index_len
RECORD_1_0 = struct.Struct(">7Q")
RECORD_1_1 = struct.Struct(">9Q")


class IndexFormatError(ValueError):
    pass


def index_minor_for(protocol_minor: int) -> int:
    """Index 1.1 for peers speaking relayd protocol 2.8 and later, 1.0 before."""
    return 1 if protocol_minor >= 8 else 0


def record_format(index_minor: int) -> struct.Struct:
    return RECORD_1_1 if index_minor >= 1 else RECORD_1_0


def encode_header(index_minor: int) -> bytes:
    return HEADER.pack(INDEX_MAGIC, INDEX_MAJOR, index_minor, record_format(index_minor).size)


def encode_record(index_minor: int, offset: int, packet_size: int, content_size: int,
                  timestamp_begin: int, timestamp_end: int, events_discarded: int,
                  stream_id: int, stream_instance_id: int, packet_seq_num: int) -> bytes:
    """One record (the fields of `PacketIndex`); the relay packs its records with this
    directly, without building a `PacketIndex` per packet."""
    if index_minor >= 1:
        return RECORD_1_1.pack(offset, packet_size, content_size, timestamp_begin,
                               timestamp_end, events_discarded, stream_id, stream_instance_id,
                               packet_seq_num)
    return RECORD_1_0.pack(offset, packet_size, content_size, timestamp_begin, timestamp_end,
                           events_discarded, stream_id)


@dataclasses.dataclass(frozen=True, slots=True)
class PacketIndex:
    """One packet of a data stream file, as described by its index record."""

    offset: int
    packet_size: int  # bits
    content_size: int  # bits
    timestamp_begin: int
    timestamp_end: int
    events_discarded: int
    stream_id: int
    stream_instance_id: int = UINT64_MAX
    packet_seq_num: int = UINT64_MAX

    def encode(self, index_minor: int) -> bytes:
        return encode_record(
            index_minor, self.offset, self.packet_size, self.content_size, self.timestamp_begin,
            self.timestamp_end, self.events_discarded, self.stream_id, self.stream_instance_id,
            self.packet_seq_num,
        )

    @classmethod
    def decode(cls, raw: bytes | memoryview, index_minor: int) -> PacketIndex:
        return cls(*record_format(index_minor).unpack_from(raw))


@dataclasses.dataclass(frozen=True, slots=True)
class IndexHeader:
    major: int
    minor: int
    record_size: int

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> IndexHeader:
        if len(raw) < HEADER.size:
            raise IndexFormatError("index file shorter than its header")
        magic, major, minor, record_size = HEADER.unpack_from(raw)
        if magic != INDEX_MAGIC:
            raise IndexFormatError(f"bad index magic {magic:#x}")
        if major != INDEX_MAJOR or record_size not in (RECORD_1_0.size, RECORD_1_1.size):
            raise IndexFormatError(f"unsupported index {major}.{minor} ({record_size} bytes)")
        return cls(major, minor, record_size)


def read_index_file(raw: bytes) -> tuple[IndexHeader, list[PacketIndex]]:
    """Every complete record of an index file (a trailing partial record is ignored)."""
    header = IndexHeader.decode(raw)
    minor = 1 if header.record_size == RECORD_1_1.size else 0
    return header, list(_records(raw, header.record_size, minor))


def _records(raw: bytes, size: int, minor: int) -> Iterator[PacketIndex]:
    for offset in range(HEADER.size, len(raw) - size + 1, size):
        yield PacketIndex.decode(memoryview(raw)[offset : offset + size], minor)
