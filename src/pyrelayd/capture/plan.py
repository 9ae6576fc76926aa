"""Turn a recording into the ordered steps of a replay (pure: no sockets, no live ids).

Each recorded connection's bytes are framed into whole messages: a control request becomes
one step at the record that completes it, together with the reply the recorded relay gave
to it (used later to learn ids and to tell a refusal); data-port bytes become steps of
packet headers and payload pieces. Steps keep the recorded global order across connections.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable

from pyrelayd.capture.framing import (
    ControlRequest,
    ControlRequestFramer,
    DataPart,
    PacketFramer,
    negotiated_minor,
    reply_size,
)
from pyrelayd.capture.recording import Direction, Event, Kind, Record, RecordingError
from pyrelayd.protocol.relayd import Command


@dataclasses.dataclass(frozen=True, slots=True)
class Connect:
    connection: int
    kind: Kind
    partner: int | None  # a data connection's control connection


@dataclasses.dataclass(slots=True)
class SendRequest:
    connection: int
    request: ControlRequest
    # The recorded relay's whole reply; None when none is due (SEND_METADATA) or none was
    # recorded (the relay closed the connection or the recording stopped first).
    recorded_reply: bytes | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SendData:
    connection: int
    parts: tuple[DataPart, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    connection: int
    leftover: bytes  # bytes of an unfinished message the peer sent before closing


Step = Connect | SendRequest | SendData | Close


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayPlan:
    steps: tuple[Step, ...]
    kinds: dict[int, Kind]
    # Connections the recorded relay closed before the peer did (after a refused request):
    # a replay may find them closed too.
    closed_by_relay_first: frozenset[int]


@dataclasses.dataclass
class _RecordedConnection:
    kind: Kind
    requests: ControlRequestFramer = dataclasses.field(default_factory=ControlRequestFramer)
    packets: PacketFramer = dataclasses.field(default_factory=PacketFramer)
    awaiting_reply: collections.deque[SendRequest] = dataclasses.field(
        default_factory=collections.deque
    )
    replies: bytearray = dataclasses.field(default_factory=bytearray)
    minor: int = 0  # negotiated by the recorded VERSION exchange
    peer_closed: bool = False
    relay_closed: bool = False

    @property
    def pending(self) -> bytes:
        framer = self.requests if self.kind == Kind.CONTROL else self.packets
        return framer.pending


class _Planner:
    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.connections: dict[int, _RecordedConnection] = {}
        self.closed_by_relay_first: set[int] = set()

    def add(self, record: Record) -> None:
        if record.event == Event.OPEN:
            self._open(record)
            return
        state = self.connections.get(record.connection)
        if state is None:
            raise RecordingError(f"record for connection {record.connection} before its open")
        if state.kind != record.kind:
            raise RecordingError(f"connection {record.connection} changes kind")
        if record.event == Event.BYTES and record.direction == Direction.TO_RELAY:
            if state.peer_closed:
                raise RecordingError(f"bytes after close on connection {record.connection}")
            self._peer_bytes(record.connection, state, record.data)
        elif record.event == Event.BYTES:
            # The relayd never writes on a data connection; nothing to replay there anyway.
            if state.kind == Kind.CONTROL:
                state.replies += record.data
                self._match_replies(record.connection, state)
        elif record.direction == Direction.TO_RELAY:
            if state.peer_closed:
                raise RecordingError(f"connection {record.connection} closed twice")
            state.peer_closed = True
            self.steps.append(Close(record.connection, state.pending))
        else:
            if not state.peer_closed:
                self.closed_by_relay_first.add(record.connection)
            state.relay_closed = True

    def finish(self) -> ReplayPlan:
        # A recording cut short leaves connections open: close them at the end.
        for connection, state in self.connections.items():
            if not state.peer_closed:
                state.peer_closed = True
                self.steps.append(Close(connection, state.pending))
        return ReplayPlan(
            tuple(self.steps),
            {connection: state.kind for connection, state in self.connections.items()},
            frozenset(self.closed_by_relay_first),
        )

    def _open(self, record: Record) -> None:
        if record.connection in self.connections:
            raise RecordingError(f"connection {record.connection} opened twice")
        if record.direction != Direction.TO_RELAY:
            raise RecordingError(f"open of connection {record.connection} from the relay side")
        partner = record.partner
        if partner is not None:
            partner_state = self.connections.get(partner)
            if partner_state is None or partner_state.kind != Kind.CONTROL:
                raise RecordingError(
                    f"data connection {record.connection} paired with unknown control "
                    f"connection {partner}"
                )
        self.connections[record.connection] = _RecordedConnection(record.kind)
        self.steps.append(Connect(record.connection, record.kind, partner))

    def _peer_bytes(self, connection: int, state: _RecordedConnection, data: bytes) -> None:
        if state.kind == Kind.DATA:
            parts = state.packets.feed(data)
            if parts:
                self.steps.append(SendData(connection, tuple(parts)))
            return
        for request in state.requests.feed(data):
            step = SendRequest(connection, request)
            self.steps.append(step)
            if reply_size(request.command, state.minor, b"") > 0:
                state.awaiting_reply.append(step)

    def _match_replies(self, connection: int, state: _RecordedConnection) -> None:
        while state.awaiting_reply:
            step = state.awaiting_reply[0]
            size = reply_size(step.request.command, state.minor, state.replies)
            if len(state.replies) < size:
                return
            step.recorded_reply = bytes(state.replies[:size])
            del state.replies[:size]
            state.awaiting_reply.popleft()
            if step.request.command == Command.VERSION:
                minor = negotiated_minor(step.request, step.recorded_reply)
                if minor is not None:
                    state.minor = minor
        if state.replies:
            raise RecordingError(
                f"{len(state.replies)} bytes from the relay on control connection {connection} "
                "answer no request"
            )


def build_plan(records: Iterable[Record]) -> ReplayPlan:
    """The replay steps of a recording; RecordingError if its records do not hang together."""
    planner = _Planner()
    for record in records:
        planner.add(record)
    return planner.finish()
