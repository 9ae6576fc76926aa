"""Cut raw relayd byte streams into messages, whatever the TCP segmentation.

Control requests are a 24-byte header plus `data_size` payload bytes; the data port carries
32-byte headers each followed by `data_size` packet bytes; replies have no header and their
size follows from the command they answer and from the protocol minor negotiated by the
connection's VERSION exchange (`reply_size`, `negotiated_minor`). Requests need no minor:
their header gives their size, whatever their layout (a 2.15 CREATE_SESSION included).
"""

from __future__ import annotations

import dataclasses
import struct

from pyrelayd.protocol.relayd import (
    CONTROL_HEADER_SIZE,
    DATA_HEADER_SIZE,
    Command,
    ControlHeader,
    DataHeader,
    ProtocolError,
    ReturnCode,
    Version,
    expected_reply_size,
)


@dataclasses.dataclass(frozen=True, slots=True)
class ControlRequest:
    """One whole control request, header fields kept as sent (circuit id, command version)."""

    header: ControlHeader
    payload: bytes

    @property
    def command(self) -> int:
        return self.header.command

    @property
    def name(self) -> str:
        return command_name(self.header.command)

    def encode(self) -> bytes:
        return self.header.encode() + self.payload


def command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command}"


class ControlRequestFramer:
    """Accumulates a control connection's peer-to-relay bytes and yields whole requests."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ControlRequest]:
        self._buffer += data
        requests: list[ControlRequest] = []
        while len(self._buffer) >= CONTROL_HEADER_SIZE:
            header = ControlHeader.decode(bytes(self._buffer[:CONTROL_HEADER_SIZE]))
            end = CONTROL_HEADER_SIZE + header.data_size
            if len(self._buffer) < end:
                break
            requests.append(ControlRequest(header, bytes(self._buffer[CONTROL_HEADER_SIZE:end])))
            del self._buffer[:end]
        return requests

    @property
    def pending(self) -> bytes:
        """Bytes of a request not yet complete."""
        return bytes(self._buffer)


DataPart = DataHeader | bytes


class DataFramer:
    """Splits a data connection's stream into packet headers and payload pieces.

    Payload bytes are passed through as soon as they arrive (packets can be large); only
    a header cut by a segment boundary is held back until its 32 bytes are in.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._payload_left = 0

    def feed(self, data: bytes) -> list[DataPart]:
        parts: list[DataPart] = []
        view = memoryview(data)
        while view:
            if self._payload_left:
                piece = view[: self._payload_left]
                parts.append(bytes(piece))
                self._payload_left -= len(piece)
                view = view[len(piece) :]
                continue
            missing = DATA_HEADER_SIZE - len(self._header)
            self._header += view[:missing]
            view = view[missing:]
            if len(self._header) == DATA_HEADER_SIZE:
                header = DataHeader.decode(bytes(self._header))
                self._header.clear()
                self._payload_left = header.data_size
                parts.append(header)
        return parts

    @property
    def pending(self) -> bytes:
        """Bytes of a data header not yet complete."""
        return bytes(self._header)


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
