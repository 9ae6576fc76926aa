"""Cut recorded relayd byte streams into messages, whatever the TCP segmentation.

The framing is the relay's own (`ControlFramer`, `DataFramer` in protocol/relayd.py), set to
keep every byte as sent. Control requests are a 24-byte header plus `data_size` payload
bytes; the data port carries 32-byte headers each followed by `data_size` packet bytes;
replies have no header and their size follows from the command they answer and from the
protocol minor negotiated by the connection's VERSION exchange (`reply_size`,
`negotiated_minor`). Requests need no minor: their header gives their size, whatever their
layout (a 2.15 CREATE_SESSION included).
"""

from __future__ import annotations

import struct
import typing

from pyrelayd.protocol.relayd import (
    Command,
    ControlFramer,
    ControlRequest,
    DataFramer,
    DataHeader,
    ProtocolError,
    ReturnCode,
    Version,
    command_name,
    expected_reply_size,
)

__all__ = ["ControlRequest", "ControlRequestFramer", "DataPart", "PacketFramer",
           "command_name", "negotiated_minor", "reply_size"]


class ControlRequestFramer:
    """A control connection's peer-to-relay bytes as whole requests, exactly as sent (the
    relay's `ControlFramer` keeping every byte: no limit, no metadata streaming)."""

    def __init__(self) -> None:
        self._framer = ControlFramer(payload_limit=None, max_payload=None,
                                     stream_metadata=False)

    def feed(self, data: bytes) -> list[ControlRequest]:
        # With nothing streamed, the framer gives whole requests only.
        return typing.cast(list[ControlRequest], list(self._framer.feed(data)))

    @property
    def pending(self) -> bytes:
        """Bytes of a request not yet complete."""
        return self._framer.pending


DataPart = DataHeader | bytes


class PacketFramer:
    """A data connection's bytes as packet headers and payload pieces (copied: they outlive
    the input), through the relay's `DataFramer`."""

    def __init__(self) -> None:
        self._framer = DataFramer()

    def feed(self, data: bytes) -> list[DataPart]:
        parts: list[DataPart] = []
        for header, payload, _complete in self._framer.feed(data):
            if header is not None:
                parts.append(header)
            if payload:
                parts.append(bytes(payload))
        return parts

    @property
    def pending(self) -> bytes:
        """Bytes of a data header not yet complete."""
        return self._framer.partial_header


def negotiated_minor(request: ControlRequest, reply: bytes) -> int | None:
    """min(peer minor, relay minor) of a VERSION exchange, None if either side is unusable."""
    try:
        peer = Version.decode(request.payload)
        relay = Version.decode(reply)
    except ProtocolError:
        return None
    return min(peer.minor, relay.minor)


# Where the length of the trailing path sits in the two variable-size replies.
_CREATE_SESSION_2_11_FIXED = struct.Struct(">QII")  # session_id, ret_code, path length
_CLOSE_TRACE_CHUNK_FIXED = struct.Struct(">II")  # ret_code, path length


def reply_size(command: int, minor: int, head: bytes | bytearray) -> int:
    """Size of the relay's reply to `command` (0: none), knowing its first bytes `head`.

    For the two variable replies, while `head` is shorter than their fixed part this is the
    fixed part's size; read that much and ask again to get the whole size.
    """
    if command == Command.SEND_METADATA:
        return 0
    if command == Command.CREATE_SESSION and minor >= 11:
        fixed = _CREATE_SESSION_2_11_FIXED
        if len(head) < fixed.size:
            return fixed.size
        return fixed.size + int(fixed.unpack_from(head)[2])
    if command == Command.CLOSE_TRACE_CHUNK:
        fixed = _CLOSE_TRACE_CHUNK_FIXED
        if len(head) < fixed.size:
            return fixed.size
        code, length = fixed.unpack_from(head)
        # The path follows only on success, whatever the length field says.
        return fixed.size + (int(length) if code == ReturnCode.OK else 0)
    size = expected_reply_size(command, minor)
    assert size is not None  # only the three commands above have no fixed size
    return size
