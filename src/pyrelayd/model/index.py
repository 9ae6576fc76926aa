"""Packet indexes in flight, index files, and the tracefile array.

A packet's index is built from two halves that arrive on different sockets: the data
connection gives the packet's offset in its file, the control connection (SEND_INDEX) the
rest. `PendingIndex` holds whichever half came first; the record is written once both exist.
The control half is kept as a `PacketIndex` (its offset is the data half's); when the data
half came first, as it nearly always does, the record is written from the control half as
it arrives, with nothing kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Protocol

from pyrelayd.constants import UINT64_MAX as UINT64_MAX
from pyrelayd.protocol.index import PacketIndex, encode_header, encode_record
from pyrelayd.storage.fdpool import PooledFile


class PacketDescription(Protocol):
    """What a packet's index says of it besides its offset (`PacketIndex` is one)."""

    @property
    def packet_size(self) -> int: ...  # bits; 0 in a live beacon
    @property
    def content_size(self) -> int: ...  # bits
    @property
    def timestamp_begin(self) -> int: ...
    @property
    def timestamp_end(self) -> int: ...
    @property
    def events_discarded(self) -> int: ...
    @property
    def stream_id(self) -> int: ...  # the CTF stream class id
    @property
    def stream_instance_id(self) -> int: ...
    @property
    def packet_seq_num(self) -> int: ...


class ControlHalf(PacketDescription, Protocol):
    """The control half of a packet's index: its description and its `net_seq_num`
    (what a SEND_INDEX request carries; the decoded request itself is one)."""

    @property
    def net_seq_num(self) -> int: ...


def is_beacon(packet: PacketDescription) -> bool:
    """A live-timer beacon of an idle stream (no packet): never written to disk."""
    return packet.packet_size == 0


def packet_index(control: PacketDescription, offset: int = 0) -> PacketIndex:
    """`control` as the domain value (at `offset`)."""
    return PacketIndex(offset, control.packet_size, control.content_size,
                       control.timestamp_begin, control.timestamp_end, control.events_discarded,
                       control.stream_id, control.stream_instance_id, control.packet_seq_num)


class IndexFile:
    """An open `.idx` file; closed when its stream and every pending index let go of it."""

    def __init__(self, file: PooledFile, index_minor: int) -> None:
        self.file = file
        self.index_minor = index_minor
        self.references = 1
        try:
            file.write(encode_header(index_minor))
        except OSError:
            with contextlib.suppress(OSError):
                file.close()  # nobody else will: the error goes to the caller
            raise

    def get(self) -> IndexFile:
        self.references += 1
        return self

    def put(self) -> None:
        """Drop a reference; the last one closes the file (its write errors are raised)."""
        self.references -= 1
        if self.references == 0:
            self.file.close()

    def append_record(self, offset: int, packet: PacketDescription) -> None:
        """The record of the packet at `offset` of its data file."""
        self.file.append(encode_record(
            self.index_minor, offset, packet.packet_size, packet.content_size,
            packet.timestamp_begin, packet.timestamp_end, packet.events_discarded,
            packet.stream_id, packet.stream_instance_id, packet.packet_seq_num))

    def append(self, index: PendingIndex) -> None:
        """The record of a complete index."""
        assert index.packet is not None
        self.append_record(index.offset, index.packet)


@dataclasses.dataclass(slots=True)
class PendingIndex:
    net_seq_num: int
    packet: PacketIndex | None = None  # the control half (its offset is `offset`)
    index_file: IndexFile | None = None
    offset: int = 0
    total_size: int = 0  # data + padding bytes of the packet, once its data is in

    @property
    def complete(self) -> bool:
        return self.packet is not None and self.index_file is not None

    def encode(self, index_minor: int) -> bytes:
        """The index record, once complete."""
        assert self.packet is not None
        return dataclasses.replace(self.packet, offset=self.offset).encode(index_minor)

    def release(self) -> None:
        if self.index_file is not None:
            index_file, self.index_file = self.index_file, None
            index_file.put()


class TracefileArray:
    """Which index sequence numbers each tracefile still holds, for live readers.

    `count` == 0 means tracefiles are not split: every sequence number is "in file".
    `count` comes from the peer (any u64): only the files really written have entries, so
    memory follows the files on disk, not what the peer announced.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.reset()

    def reset(self) -> None:
        self.heads: dict[int, int] = {}  # file index -> newest sequence number in it
        self.tails: dict[int, int] = {}  # file index -> oldest sequence number in it
        self.seq_head = UINT64_MAX
        self.seq_tail = UINT64_MAX
        self.file_head_read = 0
        self.file_head_write = 0
        self.file_tail = 0

    def rotate_write(self) -> None:
        if not self.count:
            return
        self.file_head_write = (self.file_head_write + 1) % self.count
        if self.file_head_write == self.file_tail:
            self.file_tail = (self.file_tail + 1) % self.count
        slot = self.file_head_write
        if slot in self.heads:
            # The reused file held indexes: the oldest kept one is now the tail file's first.
            self.seq_tail = self.tails.get(self.file_tail, UINT64_MAX)
        self.heads.pop(slot, None)
        self.tails.pop(slot, None)

    def rotate_read(self) -> None:
        if self.count:
            self.file_head_read = self.file_head_write

    def commit(self, seq: int) -> None:
        self.seq_head = seq
        if self.seq_tail == UINT64_MAX:
            self.seq_tail = seq
        if not self.count:
            return
        slot = self.file_head_write
        self.heads[slot] = seq
        self.tails.setdefault(slot, seq)

    def seq_in_file(self, file_index: int, seq: int) -> bool:
        if not self.count:
            return True
        if seq == UINT64_MAX or not 0 <= file_index < self.count:
            return False
        head = self.heads.get(file_index)
        return head is not None and self.tails[file_index] <= seq <= head

