"""The relay: global tables (sessions, streams), id counters, the chunk registry, settings."""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from pyrelayd.config import GroupOutputBy
from pyrelayd.model.chunk import ChunkError, ChunkRegistry, CloseCommand, TraceChunk
from pyrelayd.model.cleanup import attempt
from pyrelayd.model.counters import RelayCounters, SessionLedger
from pyrelayd.model.session import RelaySession, SessionInfo
from pyrelayd.model.stream import RelayStream
from pyrelayd.storage import files, paths
from pyrelayd.storage.fdpool import FdPool

log = logging.getLogger(__name__)


class Refusal(enum.Enum):
    """Why the relay refuses a request, in its own terms (the handler picks the reply)."""

    NO_CURRENT_CHUNK = "the session has no current trace chunk"
    ABSOLUTE_STREAM_PATH = "the stream path is absolute"
    STREAM_FILES = "the stream's files cannot be created"
    INVALID_CLOSE_TIME = "the close time cannot name a trace chunk"
    UNKNOWN_CHUNK = "no such trace chunk"
    CLEAR_DISALLOWED = "clearing is disallowed on this relay"
    NOT_THE_CHUNK_BEING_CLOSED = "another trace chunk is being closed"
    UNKNOWN_SESSIOND = "no trace chunk of this session daemon"


class RelayError(Exception):
    """A request the relay refuses: `refusal` says why.

    `code` is what lttng-relayd sends back for it: a stream handle for ADD_STREAM refusals
    (the handle is taken, as lttng-relayd does), an lttng return code otherwise.
    """

    def __init__(self, message: str, code: int, refusal: Refusal | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.refusal = refusal


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    output_root: Path
    group_output_by: GroupOutputBy = GroupOutputBy.HOST
    allow_clear: bool = True
    fd_pool_size: int | None = None  # at most this many descriptors (None: no limit)
    # This relay's share of the id space when several worker processes make one relay
    # (`--workers`): worker `index` of `count` gives ids index+1, index+1+count, ... so that
    # session, stream, trace and viewer ids are unique across the workers, and the worker
    # owning an id is `(id - 1) % count` (`owner_of`). A single relay is (0, 1): 1, 2, 3...
    id_shard: tuple[int, int] = (0, 1)


def owner_of(identifier: int, worker_count: int) -> int:
    """The worker that gave `identifier` (see `RelaySettings.id_shard`)."""
    return (identifier - 1) % worker_count


class Relay:
    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.sessions: dict[int, RelaySession] = {}
        self.streams: dict[int, RelayStream] = {}
        self.failed_streams: dict[int, RelayStream] = {}  # closed by a write failure
        self.chunks = ChunkRegistry()
        self.fd_pool = FdPool(settings.fd_pool_size)
        self.counters = RelayCounters()
        self.ledger = SessionLedger()  # what each session received, for metrics
        index, count = settings.id_shard
        if not 0 <= index < count:
            raise ValueError(f"worker {index} of {count}")
        self._id_step = count
        first = index + 1 - count  # the last id given before the first one
        self._last_session_id = first
        self._last_stream_handle = first
        self._last_trace_id = first
        self._last_viewer_id = first

    def next_viewer_id(self) -> int:
        """The id a CONNECT reply gives a live command connection."""
        self._last_viewer_id += self._id_step
        return self._last_viewer_id

    # ----------------------------------------------------------------- ids

    def next_trace_id(self) -> int:
        self._last_trace_id += self._id_step
        return self._last_trace_id

    def next_stream_handle(self) -> int:
        self._last_stream_handle += self._id_step
        return self._last_stream_handle

    def next_session_id(self) -> int:
        self._last_session_id += self._id_step
        return self._last_session_id

    # ----------------------------------------------------------------- sessions

    def create_session(self, info: SessionInfo, current_chunk_id: int | None) -> RelaySession:
        """A new relay session; its directory exists when this returns (2.11+ peers)."""
        root = self.settings.output_root
        if info.minor >= 11:
            output_path = paths.session_output_path(
                session_name=info.session_name,
                hostname=info.hostname,
                base_path=info.base_path,
                creation_time=info.creation_time,
                name_contains_creation_time=info.name_contains_creation_time,
                group_by=self.settings.group_output_by,
            )
        else:
            if info.minor >= 4:
                paths.check_component(info.session_name, "session name")
                paths.check_component(info.hostname, "hostname")
            output_path = ""
        directory = root / output_path if output_path else root
        chunk: TraceChunk | None = None
        if info.minor >= 11 and current_chunk_id is not None:
            key = (info.sessiond_uuid, info.sessiond_session_id or 0)
            found = self.chunks.find(key, current_chunk_id)
            if found is None:
                raise ChunkError(f"no published trace chunk {current_chunk_id} to adopt")
            chunk = found.get()
            directory = chunk.session_directory
        else:
            paths.inside(root, directory)
            files.make_directories(directory)
            if info.minor < 11:
                # Old peers send full paths: one anonymous chunk at the output root.
                chunk = TraceChunk(None, info.creation_time, "", root, pool=self.fd_pool,
                                   counters=self.counters)
        session = RelaySession(self, self.next_session_id(), info, output_path, directory)
        session.current_chunk = chunk
        self.sessions[session.id] = session
        self.chunks.session_created(info.sessiond_uuid)
        self.ledger.session_created(session)
        log.debug("%s created in %s", session, directory)
        return session

    def session_released(self, session: RelaySession) -> None:
        self.sessions.pop(session.id, None)
        for handle in [h for h, s in self.failed_streams.items() if s.session is session]:
            del self.failed_streams[handle]
        self.chunks.session_destroyed(session.info.sessiond_uuid)
        self.ledger.session_released(session)

    def live_sessions(self) -> Iterator[RelaySession]:
        yield from (s for s in self.sessions.values() if not s.connection_closed)

    def rotation_ongoing(self, session: RelaySession) -> bool:
        """A rotation of this session or of its twins (same sessiond session) is under way."""
        if session.ongoing_rotation:
            return True
        key = session.registry_key
        return any(other.ongoing_rotation and other.registry_key == key
                   for other in self.sessions.values())

    # ----------------------------------------------------------------- streams

    def add_stream(self, session: RelaySession, channel_name: str, path_name: str,
                   tracefile_size: int, tracefile_count: int) -> RelayStream:
        """A new stream; its (empty) data file exists when this returns."""
        channel_name = paths.check_component(channel_name, "channel name")
        raw_path, path_name = path_name, paths.check_relative_path(path_name, "stream path")
        if self.settings.group_output_by is GroupOutputBy.SESSION and 4 <= session.minor < 11:
            path_name = paths.check_relative_path(
                paths.regroup_by_session(path_name, session.name, session.info.creation_time),
                "stream path",
            )
        if session.current_chunk is None:
            handle = self.next_stream_handle()
            raise RelayError(f"{session} has no current trace chunk", handle,
                             Refusal.NO_CURRENT_CHUNK)
        if raw_path.startswith("//"):
            # lttng-relayd drops one leading '/' (pre-2.11 peers) and its trace chunk then
            # refuses the still absolute path, after the handle was taken.
            handle = self.next_stream_handle()
            raise RelayError(f"stream path {raw_path!r} is absolute", handle,
                             Refusal.ABSOLUTE_STREAM_PATH)
        trace = session.trace_for(path_name)
        handle = self.next_stream_handle()
        try:
            stream = RelayStream(handle, trace, channel_name, path_name, tracefile_size,
                                 tracefile_count, session.current_chunk)
        except (OSError, paths.UnsafeNameError) as error:
            if not any(s.trace is trace for s in session.streams.values()):
                session.traces.pop(path_name, None)
            if isinstance(error, paths.UnsafeNameError):
                raise  # a bad path: answered with no handle, as lttng-relayd does
            raise RelayError(f"cannot create stream files: {error}", handle,
                             Refusal.STREAM_FILES) from error
        self.streams[handle] = stream
        session.stream_added(stream)
        return stream

    def stream_closed(self, stream: RelayStream) -> None:
        self.streams.pop(stream.handle, None)

    def stream_failed(self, stream: RelayStream) -> None:
        """`stream` is closed because its files cannot be written: its session goes on, and
        what its peers still send for it is accepted and dropped (`failed_stream`)."""
        self.failed_streams[stream.handle] = stream

    def failed_stream(self, session: RelaySession, handle: int) -> RelayStream | None:
        """The stream of `session` with that handle closed by a write failure, if any."""
        stream = self.failed_streams.get(handle)
        return stream if stream is not None and stream.session is session else None

    def find_stream(self, handle: int) -> RelayStream | None:
        return self.streams.get(handle)

    # ----------------------------------------------------------------- trace chunks

    def create_trace_chunk(self, session: RelaySession, chunk_id: int, creation_time: int,
                           override_name: str | None) -> None:
        if override_name is not None:
            paths.check_chunk_name(override_name)
        # It names the chunk, now or when it closes (chunk 0): refuse it before anything moves.
        paths.iso8601_str(creation_time)
        session.ongoing_rotation = True
        current = session.current_chunk
        if current is not None and not current.name_overridden:
            current.rename_path(paths.TMP_OLD_CHUNK)
        if current is None:
            new_path: str | None = None if session.has_rotated else ""
        else:
            new_path = paths.TMP_NEW_CHUNK
        chunk = TraceChunk(chunk_id, creation_time, new_path, session.directory, override_name,
                           pool=self.fd_pool, counters=self.counters)
        if chunk.path:
            # Made now, as lttng-relayd does, not with the first stream file: a chunk in which
            # nothing was recorded (e.g. per-pid buffers and no application yet) must still be
            # archived as a directory of its own when it closes.
            files.make_directories(chunk.directory)
        published = self.chunks.publish(session.registry_key, chunk)
        chunk.put()
        if session.pending_closure_chunk is not None:
            published.put()
            raise ChunkError("a second trace chunk was created before the previous one closed")
        session.pending_closure_chunk = session.current_chunk
        session.current_chunk = published
        if session.pending_closure_chunk is None:
            session.ongoing_rotation = False

    def close_trace_chunk(self, session: RelaySession, chunk_id: int, close_time: int,
                          command: CloseCommand | int | None) -> str:
        """Close a chunk; returns the path (relative to the output root) the peer reports.

        `command` is a `CloseCommand` or its value (ValueError if it has none).
        """
        if command is not None:
            command = CloseCommand(command)
        try:
            paths.iso8601_str(close_time)  # it names the chunk: refuse it before anything moves
        except paths.UnsafeNameError as error:
            raise RelayError(str(error), 97,  # LTTNG_ERR_INVALID
                             Refusal.INVALID_CLOSE_TIME) from None
        chunk = self.find_chunk(session, chunk_id)
        if chunk is None:
            raise RelayError(f"unknown trace chunk {chunk_id}", 26,  # NOMEM, as lttng does
                             Refusal.UNKNOWN_CHUNK)
        if command is CloseCommand.DELETE and not self.settings.allow_clear:
            raise RelayError("clear is disallowed on this relay", 152,
                             Refusal.CLEAR_DISALLOWED)
        if session.pending_closure_chunk is not None and session.pending_closure_chunk is not chunk:
            raise RelayError(f"trace chunk {chunk_id} is not the one being closed", 152,
                             Refusal.NOT_THE_CHUNK_BEING_CLOSED)
        current = session.current_chunk
        if current is not None and current is not chunk and not current.name_overridden:
            if command is CloseCommand.DELETE and not session.has_rotated:
                current.rename_path("")  # a clear keeps the new chunk in the session root
            else:
                current.rename_path(None)
            session.ongoing_rotation = False
        if command in (None, CloseCommand.NO_OPERATION) and not chunk.name_overridden:
            chunk.rename_path(None if session.has_rotated else "")
        chunk.set_close_time(close_time)
        if command is not None:
            chunk.close_command = command
        name = chunk.name or ""
        if not session.has_rotated and not session.snapshot:
            path = session.output_path
        elif session.snapshot:
            path = f"{session.output_path}/{name}"
        else:
            path = f"{session.output_path}/{paths.ARCHIVES_DIRECTORY}/{name}"
        if command is CloseCommand.MOVE_TO_COMPLETED:
            session.has_rotated = True
        if session.current_chunk is chunk:
            chunk.put()
            session.current_chunk = None
        if session.pending_closure_chunk is not None:
            pending, session.pending_closure_chunk = session.pending_closure_chunk, None
            pending.put()
        return path

    def find_chunk(self, session: RelaySession, chunk_id: int) -> TraceChunk | None:
        """The published trace chunk `chunk_id` of the session's sessiond session (no new
        reference: take one with `get()` to keep it)."""
        return self.chunks.find(session.registry_key, chunk_id)

    def trace_chunk_exists(self, session: RelaySession, chunk_id: int) -> bool:
        if not self.chunks.knows_sessiond(session.info.sessiond_uuid):
            raise RelayError("no trace chunk registry for this session daemon", 152,
                             Refusal.UNKNOWN_SESSIOND)
        return self.find_chunk(session, chunk_id) is not None

    # ----------------------------------------------------------------- data pending

    def begin_data_pending(self, session_id: int) -> None:
        """BEGIN_DATA_PENDING for a session (by id; any session of the relay, as lttng)."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.begin_data_pending()

    def end_data_pending(self, session_id: int) -> bool:
        """END_DATA_PENDING: True while a stream of the session was not asked about."""
        session = self.sessions.get(session_id)
        return session is not None and session.end_data_pending()

    # ----------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Relay stopping: every session is aborted, every stream closed, chunks released
        (each session whatever happens to the others)."""
        for session in list(self.sessions.values()):
            session.abort()
            attempt(session, "closing", session.close, self.counters)

    @staticmethod
    def now() -> int:
        return int(time.time())
