"""Packet indexes in flight, index files, and the tracefile array.

A packet's index is built from two halves that arrive on different sockets: the data
connection gives the packet's offset in its file, the control connection (SEND_INDEX) the
rest. `PendingIndex` holds whichever half came first; the record is written once both exist.
"""

from __future__ import annotations

import dataclasses

from pyrelayd.protocol.index import encode_header, encode_record
from pyrelayd.protocol.relayd import SendIndex
from pyrelayd.storage.fdpool import PooledFile

UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class IndexFile:
    """An open `.idx` file; closed when its stream and every pending index let go of it."""

    def __init__(self, file: PooledFile, index_minor: int) -> None:
        self.file = file
        self.index_minor = index_minor
        self.references = 1
        file.write(encode_header(index_minor))

    def get(self) -> IndexFile:
        self.references += 1
        return self

    def put(self) -> None:
        self.references -= 1
        if self.references == 0:
            self.file.close()

    def append(self, index: PendingIndex) -> None:
        """The record of a complete index."""
        self.file.append(index.encode(self.index_minor))


@dataclasses.dataclass(slots=True)
class PendingIndex:
    net_seq_num: int
    control: SendIndex | None = None
    index_file: IndexFile | None = None
    offset: int = 0
    total_size: int = 0  # data + padding bytes of the packet, once its data is in

    @property
    def complete(self) -> bool:
        return self.control is not None and self.index_file is not None

    def encode(self, index_minor: int) -> bytes:
        """The index record, once complete."""
        assert self.control is not None
        c = self.control
        return encode_record(
            index_minor, self.offset, c.packet_size, c.content_size, c.timestamp_begin,
            c.timestamp_end, c.events_discarded, c.stream_id, c.stream_instance_id,
            c.packet_seq_num,
        )

    def release(self) -> None:
        if self.index_file is not None:
            self.index_file.put()
            self.index_file = None


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

