"""Relay streams: one per consumer stream (`channel0_3`, `metadata`), owning its files.

The data connection writes packets with `begin_packet` / `write` / `end_packet`; the control
connection supplies index halves (`add_index`), metadata (`write_metadata`), close requests and
rotations. net_seq_num values are per stream and compared wrap-safely, as lttng does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyrelayd.constants import UINT64_MAX as UINT64_MAX
from pyrelayd.model.chunk import TraceChunk
from pyrelayd.model.cleanup import attempt
from pyrelayd.model.counters import ErrorKind
from pyrelayd.model.index import (
    ControlHalf,
    IndexFile,
    PacketDescription,
    PendingIndex,
    TracefileArray,
    packet_index,
)
from pyrelayd.protocol.index import index_minor_for
from pyrelayd.storage import paths
from pyrelayd.storage.fdpool import PooledFile

if TYPE_CHECKING:
    from pyrelayd.model.session import RelaySession
    from pyrelayd.model.trace import CtfTrace

log = logging.getLogger(__name__)


def seq_before(a: int, b: int) -> bool:
    """`a` < `b` for 64-bit sequence numbers that may wrap (lttng's signed difference)."""
    difference = (a - b) & UINT64_MAX
    return difference >= 1 << 63


class StreamError(Exception):
    """The stream cannot do what its peer asked; the peer's connection is at fault."""


@dataclasses.dataclass(slots=True)
class PendingRotation:
    next_chunk: TraceChunk | None
    packet_seq_num: int  # first CTF packet sequence number of the next chunk
    prev_data_net_seq: int = UINT64_MAX  # last net_seq_num of the old chunk, once known
    data_rotated: bool = False
    index_rotated: bool = False


class RelayStream:
    def __init__(
        self,
        handle: int,
        trace: CtfTrace,
        channel_name: str,
        path_name: str,
        tracefile_size: int,
        tracefile_count: int,
        chunk: TraceChunk,
    ) -> None:
        self.handle = handle
        self.trace = trace
        self.channel_name = paths.check_component(channel_name, "channel name")
        self.path_name = paths.check_relative_path(path_name, "stream path")
        self.is_metadata = channel_name == paths.METADATA_CHANNEL
        self.tracefile_size = tracefile_size
        # A size limit without a count means "never wrap" (lttng would divide by zero).
        self.tracefile_count = tracefile_count if tracefile_size else 0
        self.tracefile_index = 0
        self.tracefile_wrapped = False
        self.file_bytes = 0  # bytes in the current tracefile
        self.pos_after_last_complete_data_index = 0
        self.data_file: PooledFile | None = None
        self.index_file: IndexFile | None = None
        self.chunk: TraceChunk | None = None
        self.prev_data_seq = UINT64_MAX
        self.prev_index_seq = UINT64_MAX
        self.last_net_seq_num = UINT64_MAX
        self.received_packet_seq_num: int | None = None
        self.pending_indexes: dict[int, PendingIndex] = {}
        self.index_received_seqcount = 0
        self.beacon_ts_end = UINT64_MAX
        self.ctf_stream_id = UINT64_MAX
        self.metadata_received = 0
        # For metrics: what the peer sent (packets on the data connection, or metadata),
        # and the trace time span of the indexed packets (viewer lag).
        self.received_packets = 0
        self.received_bytes = 0
        self.first_timestamp_begin = 0
        self.timestamp_end = 0  # of the newest indexed packet
        self.rotation: PendingRotation | None = None
        self.completed_rotation_count = 0
        self.last_rotation_was_to_null_chunk = False
        self.tracefile_array = TracefileArray(self.tracefile_count)
        self.close_requested = False
        self.closed = False
        self.close_error: BaseException | None = None  # the first failure while closing
        self.published = False
        self.data_pending_checked = False
        self._rotate_index_file = False
        self._set_chunk(chunk.get())

    def __repr__(self) -> str:
        return f"RelayStream({self.handle}, {self.path_name}/{self.channel_name})"

    def describe(self) -> str:
        """The stream and its session, for messages."""
        return f"{self.session!r} {self!r}"

    @property
    def session(self) -> RelaySession:
        return self.trace.session

    @property
    def has_indexes(self) -> bool:
        return self.session.has_indexes and not self.is_metadata

    # ----------------------------------------------------------------- files

    def _file_name(self) -> str:
        return paths.stream_file_name(self.channel_name, self.tracefile_size, self.tracefile_index)

    def _data_file_path(self) -> str:
        return f"{self.path_name}/{self._file_name()}"

    def _set_chunk(self, chunk: TraceChunk) -> None:
        """Adopt `chunk` (a reference owned by the caller) and open a fresh data file in it.

        On failure the reference is given back, so a refused stream never pins a chunk.
        """
        try:
            chunk.create_subdirectory(self.path_name)
            file = chunk.create_file(self._data_file_path())
        except (OSError, paths.UnsafeNameError):
            chunk.put()
            raise
        if self.chunk is not None:
            self.chunk.put()
        self.chunk = chunk
        self._close_data_file()
        file.owner = self.fail
        self.data_file = file

    def _open_data_file(self, chunk: TraceChunk) -> None:
        self._close_data_file()
        path = self._data_file_path()
        self.data_file = chunk.create_file(path, unlink_first=self.tracefile_wrapped)
        self.data_file.owner = self.fail

    def _close_data_file(self) -> None:
        file, self.data_file = self.data_file, None  # let go of it even if closing fails
        if file is not None:
            file.close()

    def _drop_index_file(self) -> None:
        index_file, self.index_file = self.index_file, None
        if index_file is not None:
            index_file.put()

    def _create_index_file(self, chunk: TraceChunk) -> None:
        self._drop_index_file()
        chunk.create_subdirectory(f"{self.path_name}/{paths.INDEX_DIRECTORY}")
        name = f"{self._file_name()}{paths.INDEX_SUFFIX}"
        relative = f"{self.path_name}/{paths.INDEX_DIRECTORY}/{name}"
        # Always unlink first: a live reader keeps the old file's content.
        file = chunk.create_file(relative, unlink_first=True)
        file.owner = self.fail
        self.index_file = IndexFile(file, index_minor_for(self.session.minor))

    # ----------------------------------------------------------------- data packets

    def begin_packet(self, data_size: int) -> None:
        """Called when a data header for this stream is complete, before its payload."""
        if self.data_file is None or self.chunk is None:
            raise StreamError(f"{self} has no open file (no current trace chunk)")
        if not self.tracefile_size or self.file_bytes + data_size <= self.tracefile_size:
            self._rotate_index_file = False
            return
        # Switch to the next tracefile; wrapping around overwrites the oldest one.
        next_index = self.tracefile_index + 1
        if self.tracefile_count:
            next_index %= self.tracefile_count
        if next_index < self.tracefile_index:
            self.tracefile_wrapped = True
        self.tracefile_array.rotate_write()
        self.tracefile_index = next_index
        self._open_data_file(self.chunk)
        self.file_bytes = 0
        self._rotate_index_file = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.data_file is not None
        self.data_file.write(data)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Packet bytes: deferred within an fd pool batch (see `PooledFile.append`)."""
        assert self.data_file is not None
        self.data_file.append(data)

    def end_packet(self, net_seq_num: int, data_size: int, padding_size: int) -> None:
        """The packet's payload is on disk: pad it, index it, and advance the stream; a
        stream whose close was requested closes once its last packet is in."""
        assert self.data_file is not None
        self.data_file.write_zeros(padding_size)
        total = data_size + padding_size
        self.received_packets += 1
        self.received_bytes += data_size
        index_flushed = False
        if self.session.has_indexes:
            index_flushed = self._add_data_half(net_seq_num, total)
        self.file_bytes += total
        if self.prev_data_seq == UINT64_MAX:
            self.session.new_streams = True  # live viewers look for new streams
        if index_flushed:
            self.pos_after_last_complete_data_index = self.file_bytes
            self.prev_index_seq = net_seq_num
            self._try_rotate_index()
        self.prev_data_seq = net_seq_num
        self._try_rotate_data()
        if self.close_requested:
            self.try_close()

    def _add_data_half(self, net_seq_num: int, total_size: int) -> bool:
        assert self.chunk is not None
        index = self.pending_indexes.get(net_seq_num)
        if index is None:
            index = self.pending_indexes[net_seq_num] = PendingIndex(net_seq_num)
        if index.index_file is not None:
            raise StreamError(f"{self}: packet {net_seq_num} received twice")
        if self._rotate_index_file or self.index_file is None:
            self._create_index_file(self.chunk)
        assert self.index_file is not None
        index.index_file = self.index_file.get()
        index.offset = self.file_bytes
        index.total_size = total_size
        return self._try_flush(index)

    def _try_flush(self, index: PendingIndex) -> bool:
        """The data half is in: write the record if the control half is too."""
        if index.packet is None:
            return False
        self._write_record(index, index.packet)
        return True

    def _write_record(self, index: PendingIndex, packet: PacketDescription) -> None:
        """Both halves are in (the data half in `index`): write the record, forget `index`."""
        index_file = index.index_file
        assert index_file is not None
        index_file.append_record(index.offset, packet)
        index.release()
        del self.pending_indexes[index.net_seq_num]
        self.tracefile_array.rotate_read()
        self.tracefile_array.commit(self.index_received_seqcount)
        if not self.index_received_seqcount:
            self.first_timestamp_begin = packet.timestamp_begin
        self.index_received_seqcount += 1
        self.received_packet_seq_num = packet.packet_seq_num
        self.timestamp_end = packet.timestamp_end

    # ----------------------------------------------------------------- control side

    def add_index(self, info: ControlHalf) -> None:
        """The control half of a packet's index (SEND_INDEX), or a live beacon."""
        if info.packet_size == 0:
            # A live beacon: the stream is idle up to timestamp_end. Never written to disk.
            # Taken even before the first index (lttng-relayd 2.15+): a stream that never had
            # a packet is then INACTIVE, with the beacon's stream id, rather than RETRY forever.
            if not self.pending_indexes:
                self.beacon_ts_end = info.timestamp_end
            if self.ctf_stream_id == UINT64_MAX:
                self.ctf_stream_id = info.stream_id
            return
        self.beacon_ts_end = UINT64_MAX
        if self.ctf_stream_id == UINT64_MAX:
            self.ctf_stream_id = info.stream_id
        net_seq_num = info.net_seq_num
        index = self.pending_indexes.get(net_seq_num)
        if index is None:  # before its data: kept as a domain value until the data comes
            self.pending_indexes[net_seq_num] = PendingIndex(net_seq_num, packet_index(info))
            return
        if index.packet is not None:
            raise StreamError(f"{self}: index {net_seq_num} received twice")
        if index.index_file is None:
            index.packet = packet_index(info)
            return
        self._write_record(index, info)
        self.pos_after_last_complete_data_index += index.total_size
        self.prev_index_seq = net_seq_num
        self._try_rotate_index()
        self._try_rotate_data()

    def end_metadata(self, length: int, padding_size: int) -> None:
        """A SEND_METADATA of `length` bytes was written with `write`: pad and count it."""
        if self.data_file is None:
            raise StreamError(f"{self} has no open metadata file")
        self.data_file.write_zeros(padding_size)
        self.metadata_received += length + padding_size
        self.received_bytes += length

    def reset_metadata(self) -> None:
        """`lttng regenerate metadata`: start the metadata file over in the current chunk."""
        if self.chunk is None:
            raise StreamError(f"{self} has no trace chunk")
        self._close_data_file()
        self.chunk.unlink_file(self._data_file_path())
        self.data_file = self.chunk.create_file(self._data_file_path())
        self.file_bytes = 0
        self.metadata_received = 0
        self.prev_data_seq = 0
        self.prev_index_seq = 0

    def begin_data_pending(self) -> None:
        """BEGIN_DATA_PENDING: the session daemon is about to ask about each stream."""
        self.data_pending_checked = False

    def mark_quiescent(self) -> None:
        """QUIESCENT_CONTROL: the stream is idle; it counts as asked about."""
        self.data_pending_checked = True

    def data_pending(self, last_net_seq_num: int) -> bool:
        """DATA_PENDING: whether packets up to `last_net_seq_num` are still on their way."""
        self.data_pending_checked = True
        seq = self.prev_data_seq
        if self.session.has_indexes and not self.is_metadata:
            seq = min(self.prev_data_seq, self.prev_index_seq)
        return seq_before(seq, last_net_seq_num)

    def all_data_received(self) -> bool:
        """True once every packet up to the announced last one is on disk."""
        if self.last_net_seq_num == UINT64_MAX:
            return True
        return not seq_before(self.prev_data_seq, self.last_net_seq_num)

    # ----------------------------------------------------------------- rotation

    def set_pending_rotation(self, next_chunk: TraceChunk | None, packet_seq_num: int) -> None:
        if self.rotation is not None:
            raise StreamError(f"{self} is already rotating")
        self.rotation = PendingRotation(next_chunk.get() if next_chunk else None, packet_seq_num)
        if self.is_metadata:
            self.rotation.index_rotated = True
            if next_chunk is not None:
                # The session daemon sends the whole metadata again into the new chunk.
                self.metadata_received = 0
            self._rotate_data_file()
        else:
            self._try_rotate_index()
            self._try_rotate_data()

    def _try_rotate_index(self) -> None:
        rotation = self.rotation
        if rotation is None or rotation.index_rotated:
            return
        received = self.received_packet_seq_num
        if received is None or received + 1 < rotation.packet_seq_num:
            return
        self._drop_index_file()
        rotation.index_rotated = True
        rotation.prev_data_net_seq = self.prev_index_seq
        if rotation.data_rotated:
            self._complete_rotation()

    def _try_rotate_data(self) -> None:
        rotation = self.rotation
        if rotation is None or rotation.data_rotated:
            return
        if (
            self.prev_data_seq == UINT64_MAX
            or rotation.prev_data_net_seq == UINT64_MAX
            or self.prev_data_seq < rotation.prev_data_net_seq
        ):
            return
        if self.prev_data_seq > rotation.prev_data_net_seq:
            self._rotate_and_truncate()
        else:
            self._rotate_data_file()

    def _rotate_data_file(self) -> None:
        rotation = self.rotation
        assert rotation is not None
        self._close_data_file()
        self.tracefile_wrapped = False
        self.tracefile_index = 0
        if rotation.next_chunk is not None:
            rotation.next_chunk.create_subdirectory(self.path_name)
            self.data_file = rotation.next_chunk.create_file(self._data_file_path())
        self.file_bytes = 0
        self.pos_after_last_complete_data_index = 0
        rotation.data_rotated = True
        if rotation.index_rotated:
            self._complete_rotation()

    def _rotate_and_truncate(self) -> None:
        """Packets of the next chunk arrived before the rotation point: move them over."""
        rotation = self.rotation
        assert rotation is not None and self.data_file is not None
        if rotation.next_chunk is None:
            raise StreamError(f"{self}: data past the rotation point but no next chunk")
        old_file = self.data_file
        self.data_file = None
        start = self.pos_after_last_complete_data_index
        misplaced = self.file_bytes - start
        try:
            self._rotate_data_file()
            assert self.data_file is not None
            moved = 0
            while moved < misplaced:
                block = old_file.read(min(misplaced - moved, 1 << 20), start + moved)
                if not block:
                    raise StreamError(f"{self}: short read while moving misplaced data")
                self.data_file.write(block)
                moved += len(block)
            old_file.truncate(start)
        finally:
            old_file.close()
        # Indexes whose data moved now point into the new files.
        chunk = rotation.next_chunk if self.rotation is rotation else self.chunk
        assert chunk is not None
        self._create_index_file(chunk)
        assert self.index_file is not None
        for index in self.pending_indexes.values():
            if index.index_file is not None:
                index.index_file.put()
                index.index_file = self.index_file.get()
                index.offset -= start
        self.file_bytes = misplaced
        self.pos_after_last_complete_data_index = 0

    def _complete_rotation(self) -> None:
        rotation = self.rotation
        assert rotation is not None
        if rotation.next_chunk is not None:
            self.tracefile_array.reset()
            self.tracefile_array.commit(self.index_received_seqcount)
        if self.chunk is not None:
            self.chunk.put()
        self.chunk = rotation.next_chunk
        self.rotation = None
        self.completed_rotation_count += 1
        self.last_rotation_was_to_null_chunk = rotation.next_chunk is None

    # ----------------------------------------------------------------- closing

    def request_close(self, last_net_seq_num: int | None) -> None:
        """Close once every packet up to `last_net_seq_num` is in (None: connection lost)."""
        if self.closed:
            return
        self.close_requested = True
        if last_net_seq_num is not None:
            self.last_net_seq_num = last_net_seq_num
        self.try_close()

    def try_close(self) -> None:
        if self.closed or not self.close_requested:
            return
        if self.last_net_seq_num == UINT64_MAX:
            # The connection went away without CLOSE_STREAM: no more index halves will come,
            # so halves holding only data are dropped; the newest pending packet is the end.
            for seq, index in list(self.pending_indexes.items()):
                if index.index_file is not None:
                    del self.pending_indexes[seq]
                    self._attempt("releasing an index file", index.release)
            if self.pending_indexes:
                self.last_net_seq_num = max(self.pending_indexes)
        if (
            self.last_net_seq_num != UINT64_MAX
            and seq_before(self.prev_data_seq, self.last_net_seq_num)
            and not self.session.aborted
        ):
            return  # data still on its way
        self.close()

    def close(self) -> None:
        """Close the files, drop the trace chunks and unregister the stream.

        Runs to the end whatever fails on the way: a failure (the last writes of a file on a
        full disk, a chunk that cannot be archived) is logged with the session and stream,
        counted, and kept in `close_error`; the stream is closed and unregistered anyway.
        """
        if self.closed:
            return
        self.closed = True
        pending, self.pending_indexes = list(self.pending_indexes.values()), {}
        for index in pending:
            self._attempt("releasing an index file", index.release)
        self._attempt("closing the data file", self._close_data_file)
        self._attempt("closing the index file", self._drop_index_file)
        rotation, self.rotation = self.rotation, None
        if rotation is not None and rotation.next_chunk is not None:
            self._attempt("releasing the next trace chunk", rotation.next_chunk.put)
        chunk, self.chunk = self.chunk, None
        if chunk is not None:
            self._attempt("releasing its trace chunk", chunk.put)
        if self.close_error is None:
            log.debug("%s closed", self.describe())
        else:
            log.warning("%s closed after a failure: %s", self.describe(), self.close_error)
        self.trace.stream_closed(self)

    def fail(self, error: OSError) -> None:
        """A file of this stream cannot be written: report it (logged, counted as a disk
        error: callers do not count it again) and close the stream; the rest of its
        session goes on."""
        if self.closed:
            return  # its other file failed in the same batch: already reported
        log.error("%s: cannot write: %s; closing the stream", self.describe(), error)
        self.session.relay.counters.count(ErrorKind.DISK)
        self.session.relay.stream_failed(self)
        if self.close_error is None:
            self.close_error = error
        self.close()

    def _attempt(self, step: str, action: Callable[[], object]) -> None:
        error = attempt(self.describe(), step, action, self.session.relay.counters)
        if self.close_error is None:
            self.close_error = error
