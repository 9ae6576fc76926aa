"""Translate the relay-assigned ids of a recording into those of the relay replayed into.

A relayd hands out relay session ids (CREATE_SESSION reply) and stream handles (ADD_STREAM
reply) from global counters, so a replay into a relay that already served other peers gets
different ids. `IdMap` learns each pair from the recorded and the live reply; requests and
data headers are then patched in place (every other byte is kept as recorded). Ids never
learned are left as recorded.

The recorded requests are encoded for the protocol minor negotiated when recording, so
`rewrite_version` makes the peer announce that minor: a relay newer than the recorded one
(e.g. a 2.15 relay replaying a 2.15 peer recorded against a 2.13 relay) then negotiates it
too instead of a minor whose layouts differ (CREATE_SESSION from 2.15 on).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

from pyrelayd.capture.framing import ControlRequest, negotiated_minor
from pyrelayd.protocol.relayd import (
    Command,
    DataHeader,
    ProtocolError,
    ReturnCode,
    RotateStreams,
    Version,
    decode_status_reply,
)

_U64 = struct.Struct(">Q")

# Requests whose payload starts with a stream handle / a relay session id.
STREAM_ID_FIRST: frozenset[int] = frozenset({
    Command.SEND_METADATA,
    Command.CLOSE_STREAM,
    Command.DATA_PENDING,
    Command.QUIESCENT_CONTROL,
    Command.SEND_INDEX,
    Command.RESET_METADATA,
})
SESSION_ID_FIRST: frozenset[int] = frozenset({
    Command.BEGIN_DATA_PENDING,
    Command.END_DATA_PENDING,
})


@dataclasses.dataclass
class IdMap:
    """Recorded id -> live id, for relay sessions and for streams."""

    sessions: dict[int, int] = dataclasses.field(default_factory=dict)
    streams: dict[int, int] = dataclasses.field(default_factory=dict)

    def session(self, recorded: int) -> int:
        return self.sessions.get(recorded, recorded)

    def stream(self, recorded: int) -> int:
        return self.streams.get(recorded, recorded)

    def learn(self, command: int, recorded_reply: bytes, live_reply: bytes) -> None:
        """Pair the ids of two successful CREATE_SESSION / ADD_STREAM replies."""
        if command == Command.CREATE_SESSION:
            table = self.sessions
        elif command == Command.ADD_STREAM:
            table = self.streams
        else:
            return
        if len(recorded_reply) < 12 or len(live_reply) < 12:
            return
        # Both reply shapes (status_session/stream, create_session_reply_2_11) start
        # with the id then the return code.
        recorded_id, recorded_code = decode_status_reply(recorded_reply)
        live_id, live_code = decode_status_reply(live_reply)
        if recorded_code == ReturnCode.OK and live_code == ReturnCode.OK:
            table[recorded_id] = live_id


def _patch_u64(payload: bytes, offset: int, translate: Callable[[int], int]) -> bytes:
    if len(payload) < offset + _U64.size:
        return payload  # too short: the relay will refuse it, as it refused the original
    (value,) = _U64.unpack_from(payload, offset)
    new_value = translate(value)
    if new_value == value:
        return payload
    patched = bytearray(payload)
    _U64.pack_into(patched, offset, new_value)
    return bytes(patched)


def _rewrite_rotate_streams(payload: bytes, ids: IdMap) -> bytes:
    try:
        rotation = RotateStreams.decode(payload)
    except ProtocolError:
        return payload  # a size the relay refuses anyway
    # Entries sit at the end; the sender's padding before them is kept byte for byte.
    first = len(payload) - len(rotation.streams) * RotateStreams.ENTRY.size
    for index in range(len(rotation.streams)):
        payload = _patch_u64(payload, first + index * RotateStreams.ENTRY.size, ids.stream)
    return payload


def rewrite_request(request: ControlRequest, ids: IdMap) -> ControlRequest:
    """The request with its recorded relay ids replaced by the live ones."""
    command = request.command
    if command in STREAM_ID_FIRST:
        payload = _patch_u64(request.payload, 0, ids.stream)
    elif command in SESSION_ID_FIRST:
        payload = _patch_u64(request.payload, 0, ids.session)
    elif command == Command.ROTATE_STREAMS:
        payload = _rewrite_rotate_streams(request.payload, ids)
    else:
        return request
    if payload is request.payload:
        return request
    return ControlRequest(request.header, payload)


def rewrite_version(request: ControlRequest, recorded_reply: bytes | None) -> ControlRequest:
    """A VERSION request announcing the minor negotiated when recording (other bytes kept)."""
    if request.command != Command.VERSION or recorded_reply is None:
        return request
    minor = negotiated_minor(request, recorded_reply)
    if minor is None or minor == Version.decode(request.payload).minor:
        return request
    payload = bytearray(request.payload)
    struct.pack_into(">I", payload, 4, minor)
    return ControlRequest(request.header, bytes(payload))


def rewrite_data_header(header: DataHeader, ids: IdMap) -> DataHeader:
    stream_id = ids.stream(header.stream_id)
    if stream_id == header.stream_id:
        return header
    return header._replace(stream_id=stream_id)
