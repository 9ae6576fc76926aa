"""The decisions of a replay against a live relay, without the sockets.

The asyncio shell (`replay.py`) asks a `Replayer` which bytes to send for a step, how many
reply bytes to read, and hands it each live reply: the replayer learns the live relay's
ids and negotiated minor from it, and raises ReplayError when the live relay refuses what
the recorded relay accepted. A VERSION request is replayed announcing the minor negotiated
when recording (see `rewrite.rewrite_version`), so a newer relay speaks the recorded layouts.
"""

from __future__ import annotations

import dataclasses
import struct

from pyrelayd.capture.framing import ControlRequest, reply_size
from pyrelayd.capture.plan import SendData, SendRequest
from pyrelayd.capture.rewrite import (
    IdMap,
    rewrite_data_header,
    rewrite_request,
    rewrite_version,
)
from pyrelayd.protocol.relayd import Command, DataHeader, ProtocolError, ReturnCode, Version

_CODE = struct.Struct(">I")
# Replies whose return code follows an 8-byte id; DATA_PENDING and END_DATA_PENDING carry a
# raw 0/1 answer, not a code, and VERSION / SEND_METADATA carry none.
_CODE_AFTER_ID = frozenset({Command.CREATE_SESSION, Command.ADD_STREAM})
_NO_CODE = frozenset({
    Command.VERSION, Command.SEND_METADATA, Command.DATA_PENDING, Command.END_DATA_PENDING
})


class ReplayError(Exception):
    """The live relay did not behave as the recorded one: refusal, early close, no reply."""


def reply_code(command: int, reply: bytes) -> int | None:
    """The lttng return code of a reply, None for replies that have none."""
    if command in _NO_CODE:
        return None
    offset = 8 if command in _CODE_AFTER_ID else 0
    if len(reply) < offset + _CODE.size:
        return None
    return int(_CODE.unpack_from(reply, offset)[0])


@dataclasses.dataclass(frozen=True, slots=True)
class ReplaySummary:
    sessions: int  # relay sessions the live relay created
    streams: int  # streams the live relay added
    control_connections: int
    data_connections: int
    requests: int  # control requests sent
    data_packets: int  # data headers sent
    bytes_sent: int  # every byte written to the relay

    def __str__(self) -> str:
        return (
            f"replayed {self.sessions} session(s), {self.streams} stream(s), "
            f"{self.bytes_sent} bytes ({self.requests} control requests, "
            f"{self.data_packets} data packets, {self.control_connections} control + "
            f"{self.data_connections} data connections)"
        )


class Replayer:
    def __init__(self) -> None:
        self.ids = IdMap()
        self._minor: dict[int, int] = {}  # live negotiated minor per control connection
        self._sessions = 0
        self._streams = 0
        self._control_connections = 0
        self._data_connections = 0
        self._requests = 0
        self._data_packets = 0
        self._bytes_sent = 0

    def connected(self, *, data: bool) -> None:
        if data:
            self._data_connections += 1
        else:
            self._control_connections += 1

    def request_bytes(self, step: SendRequest) -> bytes:
        raw = self._live_request(step).encode()
        self._requests += 1
        self._bytes_sent += len(raw)
        return raw

    def data_bytes(self, step: SendData) -> bytes:
        pieces: list[bytes] = []
        for part in step.parts:
            if isinstance(part, DataHeader):
                self._data_packets += 1
                pieces.append(rewrite_data_header(part, self.ids).encode())
            else:
                pieces.append(part)
        raw = b"".join(pieces)
        self._bytes_sent += len(raw)
        return raw

    def raw_bytes(self, raw: bytes) -> bytes:
        """Bytes sent as recorded (the unfinished tail of a closed connection)."""
        self._bytes_sent += len(raw)
        return raw

    def reply_size(self, step: SendRequest, head: bytes | bytearray) -> int:
        return reply_size(step.request.command, self._minor.get(step.connection, 0), head)

    def on_reply(self, step: SendRequest, live_reply: bytes) -> None:
        command = step.request.command
        recorded = step.recorded_reply
        if command == Command.VERSION:
            self._on_version(step, live_reply)
            return
        live_code = reply_code(command, live_reply)
        if recorded is not None:
            recorded_code = reply_code(command, recorded)
            if recorded_code == ReturnCode.OK and live_code != ReturnCode.OK:
                raise ReplayError(
                    f"relay refused {step.request.name} on control connection "
                    f"{step.connection} with code {live_code} (recorded: {recorded_code})"
                )
            self.ids.learn(command, recorded, live_reply)
        if live_code == ReturnCode.OK:
            if command == Command.CREATE_SESSION:
                self._sessions += 1
            elif command == Command.ADD_STREAM:
                self._streams += 1

    @staticmethod
    def _version_sent(step: SendRequest) -> ControlRequest:
        """The VERSION request as replayed: announcing the minor negotiated when recording."""
        return rewrite_version(step.request, step.recorded_reply)

    def _live_request(self, step: SendRequest) -> ControlRequest:
        if step.request.command == Command.VERSION:
            return self._version_sent(step)
        return rewrite_request(step.request, self.ids)

    def on_relay_closed(self, step: SendRequest) -> None:
        """The live relay closed the connection instead of replying to `step`."""
        if step.recorded_reply is not None:
            raise ReplayError(
                f"relay closed control connection {step.connection} instead of answering "
                f"{step.request.name}"
            )

    def _on_version(self, step: SendRequest, live_reply: bytes) -> None:
        try:
            sent = Version.decode(self._version_sent(step).payload)
            relay = Version.decode(live_reply)
        except ProtocolError as error:
            raise ReplayError(f"bad VERSION exchange on control connection "
                              f"{step.connection}: {error}") from None
        live_minor = min(sent.minor, relay.minor)
        self._minor[step.connection] = live_minor
        if step.recorded_reply is None:
            return
        recorded = Version.decode(step.recorded_reply)
        recorded_minor = min(Version.decode(step.request.payload).minor, recorded.minor)
        if relay.major != recorded.major:
            raise ReplayError(
                f"relay speaks protocol {relay.major}.{relay.minor}, "
                f"the recording {recorded.major}.{recorded.minor}"
            )
        if live_minor != recorded_minor:
            # The recorded requests are encoded for the recorded minor; re-encoding is
            # not attempted.
            raise ReplayError(
                f"relay negotiates protocol 2.{live_minor} on control connection "
                f"{step.connection}, the recording used 2.{recorded_minor}"
            )

    def summary(self) -> ReplaySummary:
        return ReplaySummary(
            self._sessions, self._streams, self._control_connections, self._data_connections,
            self._requests, self._data_packets, self._bytes_sent,
        )
