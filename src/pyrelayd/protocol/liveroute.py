"""Viewer requests over several worker processes: where each goes, and what the viewer gets.

With `--workers N`, sessions live in N worker processes (each a whole relay for its share of
the traced hosts) and a viewer connects to the router, which opens one viewer connection to
each worker and passes every request on. Ids say which worker owns what: worker `k` gives ids
k+1, k+1+N, ... (`model.relay.owner_of`), so a request naming a session or a stream goes to
that one worker and its reply goes back unchanged; the requests that concern the whole relay
(CONNECT, CREATE_NEW_SESSION, LIST_SESSIONS) go to every worker, and the viewer gets one reply
made of theirs (the sessions of all workers, one after the other).

`LiveRouter` decides, sans I/O: `route(request)` gives the workers to ask, `reply_missing`
frames each worker's reply (every reply is framed by its request's reply layout, lengths
checked by the codec), and `combine` makes the viewer's reply. The router sends one request at
a time and waits for its replies, as viewers do: a reply can never interleave with another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol

from pyrelayd.protocol import viewer as wire

__all__ = ["LiveRouter", "Route"]


class _ReplyLayout(Protocol):
    @classmethod
    def missing(cls, buffer: bytes, minor: int = ...) -> int: ...


#: The layout of the reply to each request (framing only: replies are passed on as they are).
REPLY_LAYOUTS: Mapping[wire.Command, type[_ReplyLayout]] = {
    wire.Command.CONNECT: wire.Connect,
    wire.Command.LIST_SESSIONS: wire.SessionList,
    wire.Command.CREATE_SESSION: wire.CreateSessionReply,
    wire.Command.ATTACH_SESSION: wire.AttachSessionReply,
    wire.Command.GET_NEXT_INDEX: wire.IndexReply,
    wire.Command.GET_PACKET: wire.PacketReply,
    wire.Command.GET_METADATA: wire.MetadataReply,
    wire.Command.GET_NEW_STREAMS: wire.NewStreamsReply,
    wire.Command.DETACH_SESSION: wire.DetachSessionReply,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """One request on its way: its bytes, the workers that answer it, how to frame them."""

    request: wire.Request
    data: bytes  # header and payload, as each worker receives them
    workers: tuple[int, ...]


class LiveRouter:
    """The routing state of one viewer connection: the worker count and the negotiated minor."""

    __slots__ = ("minor", "worker_count")

    def __init__(self, worker_count: int) -> None:
        if worker_count < 1:
            raise ValueError("at least one worker")
        self.worker_count = worker_count
        self.minor = 0  # negotiated at CONNECT, as each worker does (selects reply layouts)

    def _owner(self, identifier: int) -> int:
        return (identifier - 1) % self.worker_count

    def route(self, request: wire.Request) -> Route:
        everyone = tuple(range(self.worker_count))
        match request:
            case wire.Connect() | wire.CreateSession() | wire.ListSessions():
                workers = everyone
            case wire.AttachSession() | wire.GetNewStreams() | wire.DetachSession():
                workers = (self._owner(request.session_id),)
            case wire.GetNextIndex() | wire.GetPacket() | wire.GetMetadata():
                workers = (self._owner(request.stream_id),)
        return Route(request, wire.encode_request(request), workers)

    def reply_missing(self, route: Route, buffer: bytes) -> int:
        """Bytes still missing from one worker's reply to `route` (0: it is complete).

        Raises `ProtocolError` on a reply no relay sends (counts beyond the codec's limits)."""
        layout = REPLY_LAYOUTS[wire.Command(route.request.COMMAND)]
        return layout.missing(buffer, self.minor)

    def combine(self, route: Route, replies: Sequence[bytes]) -> bytes:
        """The viewer's reply, from the workers' complete replies (in `route.workers` order)."""
        request = route.request
        if len(replies) != len(route.workers):
            raise ValueError(f"{len(replies)} replies for {len(route.workers)} workers")
        if isinstance(request, wire.Connect):
            relay = wire.Connect.decode(replies[0])
            self.minor = wire.negotiated_minor(request.minor, relay.minor)
            return replies[0]
        if isinstance(request, wire.ListSessions):
            return self._session_list(replies)
        if isinstance(request, wire.CreateSession):
            # Every worker made a viewer session: OK only if all did.
            for reply in replies:
                if wire.CreateSessionReply.decode(reply).status != wire.CreateSessionStatus.OK:
                    return reply
            return replies[0]
        return replies[0]

    def _session_list(self, replies: Sequence[bytes]) -> bytes:
        header = wire.SessionList.HEADER
        count = 0
        entries: list[bytes] = []
        for reply in replies:
            (worker_count,) = header.unpack_from(reply)
            count += worker_count
            entries.append(reply[header.size :])
        if count > wire.MAX_RECORDS_PER_REPLY:
            raise wire.ProtocolError(f"LIST_SESSIONS: {count} sessions in all")
        return header.pack(count) + b"".join(entries)
