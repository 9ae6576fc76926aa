"""CTF traces: the streams of one session that share a path (and so one metadata stream)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyrelayd.model.session import RelaySession
    from pyrelayd.model.stream import RelayStream


class CtfTrace:
    def __init__(self, trace_id: int, session: RelaySession, path: str) -> None:
        self.id = trace_id
        self.session = session
        self.path = path
        # Published streams: visible to live viewers (after STREAMS_SENT).
        self.streams: list[RelayStream] = []

    def __repr__(self) -> str:
        return f"CtfTrace({self.id}, {self.path!r})"

    def publish(self, stream: RelayStream) -> None:
        if not stream.published:
            stream.published = True
            self.streams.append(stream)

    def metadata_stream_published(self) -> RelayStream | None:
        return next((stream for stream in self.streams if stream.is_metadata), None)

    def stream_closed(self, stream: RelayStream) -> None:
        if stream.published:
            self.streams.remove(stream)
            stream.published = False
        self.session.stream_closed(stream)
