"""Relay sessions: one per consumer daemon connection pair of a recording session."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pyrelayd.model.chunk import RegistryKey, TraceChunk
from pyrelayd.model.cleanup import attempt
from pyrelayd.model.counters import Received
from pyrelayd.model.trace import CtfTrace
from pyrelayd.protocol.relayd import TraceFormat

if TYPE_CHECKING:
    from pyrelayd.model.relay import Relay
    from pyrelayd.model.stream import RelayStream
    from pyrelayd.model.viewer import ViewerSession

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInfo:
    """What CREATE_SESSION told us, validated."""

    session_name: str
    hostname: str
    base_path: str
    live_timer: int
    snapshot: bool
    sessiond_uuid: bytes
    sessiond_session_id: int | None
    creation_time: int
    name_contains_creation_time: bool
    major: int
    minor: int
    trace_format: TraceFormat = TraceFormat.CTF_1_8


class RelaySession:
    def __init__(self, relay: Relay, session_id: int, info: SessionInfo, output_path: str,
                 directory: Path) -> None:
        self.relay = relay
        self.id = session_id
        self.info = info
        self.output_path = output_path  # relative to the output root ("" for old peers)
        self.directory = directory  # absolute session output directory
        self.traces: dict[str, CtfTrace] = {}
        self.unpublished: list[RelayStream] = []
        self.streams: dict[int, RelayStream] = {}  # every stream not yet closed
        self.current_chunk: TraceChunk | None = None
        self.pending_closure_chunk: TraceChunk | None = None
        self.has_rotated = False
        self.ongoing_rotation = False
        self.connection_closed = False
        self.aborted = False
        self.new_streams = False
        # Live viewers attached. Unlike lttng-relayd, any number of viewers may follow a
        # session at once; each has viewer streams of its own.
        self.viewers: set[ViewerSession] = set()
        self.received_by_closed_streams = Received()  # open streams count their own
        # Holders: the creating control connection, bound data connections, open streams.
        self.references = 1
        self.released = False

    def __repr__(self) -> str:
        return f"RelaySession({self.id}, {self.info.hostname}/{self.info.session_name})"

    @property
    def name(self) -> str:
        return self.info.session_name

    @property
    def hostname(self) -> str:
        return self.info.hostname

    @property
    def minor(self) -> int:
        return self.info.minor

    @property
    def trace_format(self) -> TraceFormat:
        return self.info.trace_format

    @property
    def live_timer(self) -> int:
        return self.info.live_timer

    @property
    def snapshot(self) -> bool:
        return self.info.snapshot

    @property
    def has_indexes(self) -> bool:
        """Index files are written for peers of 2.4 and later, except for snapshots."""
        return self.info.minor >= 4 and not self.info.snapshot

    @property
    def registry_key(self) -> RegistryKey:
        sessiond_id = self.info.sessiond_session_id
        return (self.info.sessiond_uuid, sessiond_id if sessiond_id is not None else self.id)

    def all_streams(self) -> Iterator[RelayStream]:
        yield from list(self.streams.values())

    def received(self) -> Received:
        """Everything this session received so far (for metrics)."""
        total = Received()
        total.add(self.received_by_closed_streams)
        for stream in self.streams.values():
            total.add_stream(stream)
        return total

    # ----------------------------------------------------------------- streams

    def trace_for(self, path: str) -> CtfTrace:
        trace = self.traces.get(path)
        if trace is None:
            trace = self.traces[path] = CtfTrace(self.relay.next_trace_id(), self, path)
        return trace

    def stream_added(self, stream: RelayStream) -> None:
        self.streams[stream.handle] = stream
        self.unpublished.append(stream)
        self.references += 1

    def publish_streams(self) -> None:
        for stream in self.unpublished:
            stream.trace.publish(stream)
        published, self.unpublished = self.unpublished, []
        if published and self.viewers:
            self.new_streams = True
            for viewer in list(self.viewers):
                viewer.streams_published(self)

    def stream_closed(self, stream: RelayStream) -> None:
        try:
            if self.streams.pop(stream.handle, None) is not None:
                self.received_by_closed_streams.add_stream(stream)
            if stream in self.unpublished:
                self.unpublished.remove(stream)
            self.relay.stream_closed(stream)
            if not any(s.trace is stream.trace for s in self.streams.values()):
                self.traces.pop(stream.trace.path, None)
        finally:
            self.put()

    # ----------------------------------------------------------------- data pending

    def begin_data_pending(self) -> None:
        """BEGIN_DATA_PENDING: forget which streams were asked about."""
        for stream in self.streams.values():
            stream.begin_data_pending()

    def end_data_pending(self) -> bool:
        """END_DATA_PENDING: True while a stream was neither asked about nor quiescent."""
        return any(not stream.data_pending_checked for stream in self.streams.values())

    # ----------------------------------------------------------------- lifetime

    def get(self) -> RelaySession:
        self.references += 1
        return self

    def put(self) -> None:
        self.references -= 1
        if self.references == 0:
            self._release()

    def close(self) -> None:
        """A connection of this session went away: close every stream once its data is in
        (each one, whatever happens to the others)."""
        self.connection_closed = True
        for stream in self.all_streams():
            attempt(self, f"closing {stream!r}", functools.partial(stream.request_close, None),
                    self.relay.counters)

    def abort(self) -> None:
        self.aborted = True

    def _release(self) -> None:
        """The last holder is gone: drop the chunks (archiving them) and leave the relay,
        even if a chunk fails to close."""
        self.released = True
        chunks = (self.current_chunk, self.pending_closure_chunk)
        self.current_chunk = self.pending_closure_chunk = None
        for chunk in chunks:
            if chunk is not None:
                attempt(self, f"releasing {chunk!r}", chunk.put, self.relay.counters)
        self.relay.session_released(self)
        log.info("session %d [%s/%s]: destroyed%s", self.id, self.hostname, self.name,
                 " (aborted: a connection failed or the relay stopped)" if self.aborted else "")
