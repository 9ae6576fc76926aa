"""Live viewers: viewer sessions (one per live connection) and viewer streams.

A viewer stream reads one relay stream's files through descriptors of its own, so the relay
stream can rotate, wrap or close underneath it. It holds the relay stream object (and so its
trace and session) for as long as it still has something to read; it never holds a trace
chunk's reference, so a slow viewer can never delay a rotation, a clear or an archive.

The decisions follow lttng-relayd 2.14-2.16 (short-lived applications are not lost, a viewer
drains the last chunk before HUP, new streams are flagged on every reply, a viewer only reads
the sessions it attached, CTF 2 sessions are kept from viewers older than protocol 2.15), with
the protocol quirks of upstream left out (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pyrelayd.constants import UINT64_MAX as UINT64_MAX
from pyrelayd.model.chunk import TraceChunk
from pyrelayd.protocol.index import HEADER, IndexFormatError, IndexHeader, PacketIndex
from pyrelayd.protocol.relayd import TraceFormat
from pyrelayd.protocol.viewer import (
    TRACE_FORMAT_MINOR,
    AttachStatus,
    DetachStatus,
    IndexStatus,
    MetadataStatus,
    NewStreamsStatus,
    Seek,
    ViewerFlag,
)
from pyrelayd.storage import files, paths

if TYPE_CHECKING:
    from pyrelayd.model.relay import Relay
    from pyrelayd.model.session import RelaySession
    from pyrelayd.model.stream import RelayStream
    from pyrelayd.model.trace import CtfTrace

log = logging.getLogger(__name__)

NO_FLAGS = ViewerFlag(0)


def viewer_may_read(session: RelaySession, viewer_minor: int) -> bool:
    """Whether a viewer that negotiated this protocol minor may list and attach the session.

    Before 2.15 a viewer is never told a session's trace format and would decode CTF 2 as
    CTF 1.8, so CTF 2 sessions are hidden from it (and refused at attach).
    """
    return viewer_minor >= TRACE_FORMAT_MINOR or session.trace_format == TraceFormat.CTF_1_8


def listed_sessions(relay: Relay, viewer_minor: int) -> list[RelaySession]:
    """What LIST_SESSIONS shows a viewer: sessions still receiving data that it may read."""
    return [session for session in relay.live_sessions() if viewer_may_read(session, viewer_minor)]


def chunk_ids_equal(a: TraceChunk | None, b: TraceChunk | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.anonymous or b.anonymous:
        return a.anonymous and b.anonymous
    return a.id == b.id


@dataclasses.dataclass(frozen=True, slots=True)
class NextIndex:
    status: IndexStatus
    flags: ViewerFlag = NO_FLAGS
    index: PacketIndex | None = None  # OK: the packet; INACTIVE: timestamp_end and stream_id


@dataclasses.dataclass(frozen=True, slots=True)
class PacketRange:
    """What GET_PACKET sends: `length` bytes of `fd` from `offset` (sendfile-able)."""

    fd: int
    offset: int
    length: int


class ViewerStream:
    def __init__(self, stream: RelayStream, chunk: TraceChunk | None, seek: Seek) -> None:
        self.stream = stream
        self.handle = stream.handle
        self.chunk = chunk  # a view of the chunk: no reference is held
        array = stream.tracefile_array
        if seek is Seek.BEGINNING:
            self.tracefile_id = array.file_tail
            self.index_sent_seqcount = 0 if array.seq_tail == UINT64_MAX else array.seq_tail
        else:
            self.tracefile_id = array.file_head_read
            self.index_sent_seqcount = (array.seq_head + 1) & UINT64_MAX
        # End (trace time) of the last packet handed to the viewer, for its lag; None: it
        # stands before the stream's first packet.
        self.timestamp_end: int | None = (
            stream.timestamp_end if seek is Seek.LAST and stream.index_received_seqcount else None)
        self.index_fd: int | None = None
        self.index_position = 0
        self.index_record_size = 0
        self.index_minor = 0
        self.data_fd: int | None = None
        self.metadata_sent = 0
        self.metadata_position = 0
        self.sent = False  # announced to the viewer
        self.released = False
        self.last_seen_rotation_count = stream.completed_rotation_count
        self.pool = stream.session.relay.fd_pool
        if stream.index_file is not None and chunk is not None:
            try:
                self.open_index()
            except FileNotFoundError:
                pass
            else:
                if seek is Seek.LAST and self.index_fd is not None:
                    self.index_position = os.fstat(self.index_fd).st_size
        if stream.data_file is not None and chunk is not None:
            self.open_data_file()

    def __repr__(self) -> str:
        return f"ViewerStream({self.handle})"

    @property
    def trace(self) -> CtfTrace:
        return self.stream.trace

    def _file_name(self) -> str:
        return paths.stream_file_name(self.stream.channel_name, self.stream.tracefile_size,
                                      self.tracefile_id)

    def _path(self, relative: str) -> str:
        assert self.chunk is not None
        return str(self.chunk.directory / self.stream.path_name / relative)

    def open_read_only(self, path: str) -> int:
        """A descriptor of our own, counted by the relay's fd pool."""
        self.pool.hold()
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.pool.unhold()
            raise

    def open_data_file(self) -> int:
        """Open the current tracefile (data, or metadata) of the stream in its chunk."""
        self.data_fd = self.open_read_only(self._path(self._file_name()))
        return self.data_fd

    def open_index(self) -> None:
        """Open the index file of the current tracefile and read its header."""
        name = f"{paths.INDEX_DIRECTORY}/{self._file_name()}{paths.INDEX_SUFFIX}"
        fd = self.open_read_only(self._path(name))
        try:
            header = IndexHeader.decode(os.pread(fd, HEADER.size, 0))
        except IndexFormatError:
            os.close(fd)
            self.pool.unhold()
            raise
        self.index_fd = fd
        self.index_position = HEADER.size
        self.index_record_size = header.record_size
        self.index_minor = header.minor

    def close_files(self) -> None:
        for fd in (self.index_fd, self.data_fd):
            if fd is not None:
                files.close_quietly(fd)
                self.pool.unhold()
        self.index_fd = self.data_fd = None

    def sync_to_tail(self) -> None:
        array = self.stream.tracefile_array
        self.tracefile_id = array.file_tail
        tail = 0 if array.seq_tail == UINT64_MAX else array.seq_tail
        self.index_sent_seqcount = max(tail, self.index_sent_seqcount)

    def rotate_tracefile(self) -> bool:
        """Move to the next tracefile; False when the stream is over (HUP)."""
        stream = self.stream
        if (stream.index_received_seqcount == self.index_sent_seqcount
                and stream.session.connection_closed):
            return False
        count = stream.tracefile_count
        if count == 0:
            return True
        array = stream.tracefile_array
        next_id = (self.tracefile_id + 1) % count
        if array.seq_in_file(next_id, self.index_sent_seqcount):
            self.tracefile_id = next_id
        else:
            # Overwritten while we were behind: resume at the oldest file still there.
            self.tracefile_id = array.file_tail
            self.index_sent_seqcount = array.seq_tail
        self.close_files()
        return True

    def move_to_chunk(self, chunk: TraceChunk | None) -> None:
        self.chunk = chunk
        self.sync_to_tail()
        self.close_files()

    def release(self) -> None:
        self.released = True
        self.close_files()


class ViewerSession:
    """The sessions one live connection attached, and the viewer streams it owns."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.sessions: list[RelaySession] = []
        self.chunk: TraceChunk | None = None
        self.streams: dict[int, ViewerStream] = {}  # every viewer stream this viewer owns
        self.unannounced: list[ViewerStream] = []
        # Per trace: its metadata viewer stream, and whether it was ever announced (a trace
        # is only shown to a viewer once its metadata is).
        self.metadata_streams: dict[CtfTrace, ViewerStream] = {}
        self.traces_announced: set[CtfTrace] = set()
        # Streams this viewer was told are over (HUP): never announced again.
        self.finished: set[int] = set()

    # ----------------------------------------------------------------- attach / detach

    def attach(self, session_id: int, seek: int,
               viewer_minor: int) -> tuple[AttachStatus, list[ViewerStream]]:
        """Attach a relay session for a viewer that negotiated `viewer_minor`."""
        session = self.relay.sessions.get(session_id)
        if session is None or session.released:
            return AttachStatus.UNK, []
        if not session.live_timer:
            return AttachStatus.NOT_LIVE, []
        if not viewer_may_read(session, viewer_minor):
            return AttachStatus.UNK, []  # as lttng-relayd: the viewer cannot know it exists
        if seek not in (Seek.BEGINNING, Seek.LAST):
            return AttachStatus.SEEK_ERR, []
        if self in session.viewers:
            return AttachStatus.ALREADY, []
        if session.connection_closed:
            return AttachStatus.UNK, []
        session.viewers.add(self)
        self.sessions.append(session)
        self.chunk = session.current_chunk
        if self.relay.rotation_ongoing(session):
            return AttachStatus.OK, []  # streams come through GET_NEW_STREAMS
        self.make_viewer_streams(session, Seek(seek))
        announced = [vs for vs in self.streams.values() if vs.stream.session is session]
        announced += [vs for vs in self.unannounced
                      if vs.stream.session is session and vs not in announced]
        for viewer_stream in announced:
            viewer_stream.sent = True
        self.unannounced = [vs for vs in self.unannounced if not vs.sent]
        return AttachStatus.OK, announced

    def detach(self, session_id: int) -> DetachStatus:
        session = self.relay.sessions.get(session_id)
        if session is None:
            session = next((s for s in self.sessions if s.id == session_id), None)
            if session is None:
                return DetachStatus.UNK
        if session not in self.sessions:
            return DetachStatus.ERR
        self._detach(session)
        return DetachStatus.OK

    def _detach(self, session: RelaySession) -> None:
        for handle, viewer_stream in list(self.streams.items()):
            if viewer_stream.stream.session is session:
                self._release_stream(viewer_stream)
                del self.streams[handle]
        self.unannounced = [vs for vs in self.unannounced if vs.stream.session is not session]
        self.sessions.remove(session)
        session.viewers.discard(self)
        if not self.sessions:
            self.chunk = None

    def close(self) -> None:
        for session in list(self.sessions):
            self._detach(session)

    # ----------------------------------------------------------------- viewer streams

    def make_viewer_streams(self, session: RelaySession, seek: Seek) -> tuple[int, int]:
        """Create viewer streams for published streams; returns (created, total) counts."""
        created = total = 0
        total += sum(1 for vs in self.unannounced
                     if vs.stream.session is session and not vs.stream.published)
        for trace in list(session.traces.values()):
            if trace.metadata_stream_published() is None and trace not in self.traces_announced:
                continue  # a viewer never learns of a trace before its metadata
            for stream in list(trace.streams):
                if stream.handle in self.finished:
                    continue
                viewer_stream = self.streams.get(stream.handle)
                if viewer_stream is None:
                    viewer_stream = self._create(stream, session, seek)
                    if viewer_stream is None:
                        continue
                    created += 1
                if stream.is_metadata:
                    if not stream.closed or stream.metadata_received > viewer_stream.metadata_sent:
                        total += 1
                elif not stream.closed or not stream.all_data_received():
                    total += 1
        return created, total

    def _create(self, stream: RelayStream, session: RelaySession,
                seek: Seek) -> ViewerStream | None:
        if stream.is_metadata:
            if stream.trace in self.metadata_streams:
                return None
            self.traces_announced.add(stream.trace)
        if (stream.rotation is not None or self.relay.rotation_ongoing(session)) and stream.chunk:
            chunk: TraceChunk | None = stream.chunk
        else:
            if not chunk_ids_equal(self.chunk, stream.chunk):
                self.chunk = stream.chunk
            chunk = self.chunk if stream.chunk is not None else None
        try:
            viewer_stream = ViewerStream(stream, chunk, seek)
        except OSError as error:
            log.warning("cannot open the files of %s for a viewer: %s", stream, error)
            return None
        if stream.is_metadata:
            self.metadata_streams[stream.trace] = viewer_stream
        self.streams[stream.handle] = viewer_stream
        self.unannounced.append(viewer_stream)
        return viewer_stream

    def streams_published(self, session: RelaySession) -> None:
        """The ingest side published streams: keep them even if they end before we ask."""
        self.make_viewer_streams(session, Seek.BEGINNING)

    def get_new_streams(self, session_id: int) -> tuple[NewStreamsStatus, list[ViewerStream]]:
        session = next((s for s in self.sessions if s.id == session_id), None)
        if session is None:
            return NewStreamsStatus.ERR, []
        if self.relay.rotation_ongoing(session):
            return NewStreamsStatus.NO_NEW, []
        _, total = self.make_viewer_streams(session, Seek.BEGINNING)
        session.new_streams = False
        if session.connection_closed and total == 0:
            return NewStreamsStatus.HUP, []
        announced = [vs for vs in self.streams.values()
                     if vs.stream.session is session and not vs.sent]
        for viewer_stream in announced:
            viewer_stream.sent = True
        self.unannounced = [vs for vs in self.unannounced if not vs.sent]
        return NewStreamsStatus.OK, announced

    def _lookup(self, handle: int) -> ViewerStream | None:
        """A viewer stream this viewer may read: only streams of the sessions it attached."""
        viewer_stream = self.streams.get(handle)
        if viewer_stream is None or viewer_stream.released:
            return None
        return viewer_stream

    def _release_stream(self, viewer_stream: ViewerStream) -> None:
        viewer_stream.release()
        if self.metadata_streams.get(viewer_stream.trace) is viewer_stream:
            del self.metadata_streams[viewer_stream.trace]

    def _drop(self, viewer_stream: ViewerStream) -> None:
        self.finished.add(viewer_stream.handle)
        self._release_stream(viewer_stream)
        self.streams.pop(viewer_stream.handle, None)
        if viewer_stream in self.unannounced:
            self.unannounced.remove(viewer_stream)

    def attached_sessions(self) -> Iterator[RelaySession]:
        yield from self.sessions

    # ----------------------------------------------------------------- GET_NEXT_INDEX

    def _flags(self, viewer_stream: ViewerStream, new_streams: bool) -> ViewerFlag:
        flags = ViewerFlag.NEW_STREAM if new_streams else NO_FLAGS
        metadata = self.metadata_streams.get(viewer_stream.trace)
        if metadata is not None:
            received = metadata.stream.metadata_received
            if received == 0 or received > metadata.metadata_sent:
                flags |= ViewerFlag.NEW_METADATA
        return flags

    def get_next_index(self, handle: int) -> NextIndex:
        viewer_stream = self._lookup(handle)
        if viewer_stream is None:
            return NextIndex(IndexStatus.ERR)
        stream = viewer_stream.stream
        session = stream.session
        if stream.is_metadata:
            return NextIndex(IndexStatus.HUP, self._flags(viewer_stream, False))
        new_streams = any(s.new_streams for s in self.sessions)

        def reply(status: IndexStatus, index: PacketIndex | None = None) -> NextIndex:
            return NextIndex(status, self._flags(viewer_stream, new_streams), index)

        if stream.rotation is not None or self.relay.rotation_ongoing(session):
            return reply(IndexStatus.RETRY)
        if not chunk_ids_equal(self.chunk, stream.chunk):
            self.chunk = stream.chunk
        same_chunk = chunk_ids_equal(self.chunk, viewer_stream.chunk)
        one_behind = stream.completed_rotation_count == viewer_stream.last_seen_rotation_count + 1
        if same_chunk:
            pass
        elif one_behind and stream.chunk is None and stream.last_rotation_was_to_null_chunk:
            pass  # the session is being destroyed: drain the last chunk first
        elif (viewer_stream.chunk is not None and stream.chunk is None
              and stream.completed_rotation_count == viewer_stream.last_seen_rotation_count):
            pass  # the stream just closed (e.g. its application exited): keep reading
        else:
            viewer_stream.move_to_chunk(self.chunk)
            viewer_stream.last_seen_rotation_count = stream.completed_rotation_count

        received = stream.index_received_seqcount
        sent = viewer_stream.index_sent_seqcount
        caught_up = received == 0 or (sent != 0 and received <= sent)
        if (session.connection_closed or stream.closed) and received == sent:
            self._drop(viewer_stream)
            return reply(IndexStatus.HUP)
        if stream.beacon_ts_end != UINT64_MAX and caught_up:
            beacon = PacketIndex(0, 0, 0, 0, stream.beacon_ts_end, 0, stream.ctf_stream_id)
            return reply(IndexStatus.INACTIVE, beacon)
        if caught_up:
            return reply(IndexStatus.RETRY)
        array = stream.tracefile_array
        if not array.seq_in_file(viewer_stream.tracefile_id, sent):
            if not viewer_stream.rotate_tracefile():
                self._drop(viewer_stream)
                return reply(IndexStatus.HUP)
            if not array.seq_in_file(viewer_stream.tracefile_id,
                                     viewer_stream.index_sent_seqcount):
                return reply(IndexStatus.RETRY)

        if viewer_stream.index_fd is None:
            if viewer_stream.chunk is None:
                return reply(IndexStatus.HUP if stream.closed else IndexStatus.RETRY)
            try:
                viewer_stream.open_index()
            except FileNotFoundError:
                if stream.closed:
                    self._drop(viewer_stream)
                    return reply(IndexStatus.HUP)
                return reply(IndexStatus.RETRY)
            except (OSError, IndexFormatError) as error:
                log.warning("%s: index file unreadable: %s", viewer_stream, error)
                return reply(IndexStatus.ERR)
        if viewer_stream.data_fd is None:
            try:
                viewer_stream.open_data_file()
            except OSError as error:
                if error.errno == errno.ENOENT and stream.closed:
                    self._drop(viewer_stream)
                    return reply(IndexStatus.HUP)
                log.warning("%s: data file unreadable: %s", viewer_stream, error)
                return reply(IndexStatus.ERR)
        assert viewer_stream.index_fd is not None
        try:
            raw = os.pread(viewer_stream.index_fd, viewer_stream.index_record_size,
                           viewer_stream.index_position)
        except OSError as error:
            log.warning("%s: index file unreadable: %s", viewer_stream, error)
            return reply(IndexStatus.ERR)
        if len(raw) < viewer_stream.index_record_size:
            return reply(IndexStatus.ERR)
        viewer_stream.index_position += len(raw)
        viewer_stream.index_sent_seqcount += 1
        index = PacketIndex.decode(raw, viewer_stream.index_minor)
        viewer_stream.timestamp_end = index.timestamp_end
        return reply(IndexStatus.OK, index)

    # ----------------------------------------------------------------- GET_PACKET

    def get_packet(self, handle: int, offset: int, length: int) -> PacketRange | None:
        """The bytes to send, or None for an ERR reply (nothing past the end of the file)."""
        viewer_stream = self._lookup(handle)
        if viewer_stream is None or viewer_stream.stream.is_metadata:
            return None
        if viewer_stream.data_fd is None:
            return None
        try:
            size = os.fstat(viewer_stream.data_fd).st_size
        except OSError:
            return None
        if length == 0 or offset + length > size:
            return None
        return PacketRange(viewer_stream.data_fd, offset, length)

    # ----------------------------------------------------------------- GET_METADATA

    def get_metadata(self, handle: int) -> tuple[MetadataStatus, bytes]:
        viewer_stream = self._lookup(handle)
        if viewer_stream is None or not viewer_stream.stream.is_metadata:
            return MetadataStatus.ERR, b""
        stream = viewer_stream.stream
        if viewer_stream.metadata_sent >= stream.metadata_received:
            if viewer_stream.metadata_sent > 0 and stream.closed:
                self._drop(viewer_stream)
            return MetadataStatus.NO_NEW_METADATA, b""
        if stream.chunk is not None and not chunk_ids_equal(self.chunk, stream.chunk):
            self.chunk = stream.chunk
        if self.chunk is not None and not chunk_ids_equal(self.chunk, viewer_stream.chunk):
            viewer_stream.chunk = self.chunk
            viewer_stream.close_files()
        length = stream.metadata_received - viewer_stream.metadata_sent
        if viewer_stream.chunk is None:
            if stream.session.connection_closed:
                self._drop(viewer_stream)
            return MetadataStatus.NO_NEW_METADATA, b""
        fd = viewer_stream.data_fd
        if fd is None:
            try:
                fd = viewer_stream.open_data_file()
            except FileNotFoundError:
                if stream.closed:
                    self._drop(viewer_stream)
                return MetadataStatus.NO_NEW_METADATA, b""
            except OSError:
                return MetadataStatus.ERR, b""
            # A new chunk's metadata file repeats what was sent: resume after it.
            viewer_stream.metadata_position = viewer_stream.metadata_sent
        try:
            data = os.pread(fd, length, viewer_stream.metadata_position)
        except OSError as error:
            log.warning("%s: metadata file unreadable: %s", viewer_stream, error)
            return MetadataStatus.ERR, b""
        if len(data) < length:
            # A clear raced with us: the file restarted. Say "nothing new" (never OK with 0
            # bytes, which babeltrace 2.0 treats as fatal) and read it again next time.
            viewer_stream.close_files()
            return MetadataStatus.NO_NEW_METADATA, b""
        viewer_stream.metadata_position += length
        viewer_stream.metadata_sent += length
        return MetadataStatus.OK, data
