"""Fuzz targets: every parser that reads bytes or text from outside the relay.

Each target takes one input (bytes) and returns normally when the code under test behaved:
it decoded the input, or refused it with the error type its callers handle. Any other
exception is a finding. Targets also check what must hold for what they accept (a decoded
request encodes back to a request that decodes the same; framers give back every byte they
were fed, in order).

Run with atheris (coverage-guided) through `fuzz/run.py TARGET`; `scripts/fuzz` runs them all.
"""

from __future__ import annotations

import logging
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrelayd.capture.framing import ControlRequestFramer, DataFramer
from pyrelayd.capture.recording import RecordingError, parse_recording
from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.protocol import relayd, viewer
from pyrelayd.protocol.index import IndexFormatError, read_index_file
from pyrelayd.protocol.uri import UriError, parse_uri
from pyrelayd.server.control import ControlHandler

#: The protocol minors peers really use (each has its own layouts).
RELAYD_MINORS = (1, 2, 4, 8, 11, 13, 15)
VIEWER_MINORS = (4, 13, 15)

Target = Callable[[bytes], None]


def _pick(data: bytes, index: int, choices: tuple[int, ...]) -> int:
    return choices[data[index] % len(choices)] if len(data) > index else choices[0]


def relayd_request(data: bytes) -> None:
    """One control request payload, decoded as the command and minor the first bytes pick."""
    if len(data) < 2:
        return
    command = relayd.Command(1 + data[0] % len(relayd.Command))
    minor = _pick(data, 1, RELAYD_MINORS)
    kind: Any = relayd.REQUEST_TYPES.get(command)
    if kind is None:
        return
    payload = data[2:]
    try:
        request = kind.decode(payload, minor)
    except relayd.ProtocolError:
        return
    try:
        again = kind.decode(request.encode(minor), minor)
    except ValueError:
        # Decoding keeps what lttng does (bytes after a NUL ignored, fixed fields...), so some
        # accepted values cannot be sent back in the same layout: encode refuses them.
        return
    assert again == request, (command, minor, request, again)


def viewer_request(data: bytes) -> None:
    """One viewer request (command number, then its fixed payload)."""
    if not data:
        return
    command = data[0] % 16
    try:
        request = viewer.decode_request(command, data[1:])
    except viewer.ProtocolError:
        return
    encoded = viewer.encode_request(request)
    again = viewer.decode_request(command, encoded[viewer.CommandHeader.FORMAT.size :])
    assert again == request, (command, request, again)


_VIEWER_REPLIES: tuple[Any, ...] = (
    viewer.Connect, viewer.SessionList, viewer.AttachSessionReply, viewer.NewStreamsReply,
    viewer.IndexReply, viewer.PacketReply, viewer.MetadataReply, viewer.CreateSessionReply,
    viewer.DetachSessionReply,
)  # fmt: skip


def viewer_reply(data: bytes) -> None:
    """A relay's reply as a viewer reads it: ask how much is missing, read, decode."""
    if len(data) < 2:
        return
    kind = _VIEWER_REPLIES[data[0] % len(_VIEWER_REPLIES)]
    minor = _pick(data, 1, VIEWER_MINORS)
    stream = data[2:]
    buffer = b""
    try:
        while need := kind.missing(buffer, minor):
            assert need > 0, need
            if len(buffer) + need > len(stream):
                return  # the relay would have to send more than this input holds
            buffer = stream[: len(buffer) + need]
        reply = kind.decode(buffer, minor)
    except viewer.ProtocolError:
        return
    try:
        encoded = reply.encode(minor)
    except ValueError:
        return
    assert kind.decode(encoded, minor) == reply, (kind, minor, reply)


def index_file(data: bytes) -> None:
    """A CTF index file (header, then fixed-size records), as live viewers' files are read."""
    try:
        header, records = read_index_file(data)
    except IndexFormatError:
        return
    for record in records:
        assert record.encode(header.minor)[:8] == struct.pack(">Q", record.offset)


def uri(data: bytes) -> None:
    """A URL as given on the command line or in lttng.conf (-C/-D/-L, --metrics-port...)."""
    try:
        parse_uri(data.decode("utf-8", "surrogateescape"))
    except UriError:
        return


def _chunks(data: bytes) -> list[bytes]:
    """`data` cut where its own bytes say (so the fuzzer explores every split)."""
    pieces, position = [], 0
    while position < len(data):
        size = 1 + data[position] % 64
        pieces.append(data[position + 1 : position + 1 + size])
        position += 1 + size
    return pieces


def control_framing(data: bytes) -> None:
    """Control bytes cut anywhere: every whole request comes out once, in order."""
    framer = ControlRequestFramer()
    fed = bytearray()
    framed = bytearray()
    for piece in _chunks(data):
        fed += piece
        for request in framer.feed(piece):
            framed += request.encode()
    assert bytes(framed) + framer.pending == bytes(fed)


def data_framing(data: bytes) -> None:
    """Data-port bytes cut anywhere: headers and payload pieces add up to what was fed."""
    framer = DataFramer()
    fed = bytearray()
    out = bytearray()
    for piece in _chunks(data):
        fed += piece
        for part in framer.feed(piece):
            out += part if isinstance(part, bytes) else part.encode()
    assert bytes(out) + framer.pending == bytes(fed)


def recording(data: bytes) -> None:
    """A `pyrelayd-capture` recording file, as `pyrelayd-capture replay` reads it."""
    try:
        parse_recording(data)
    except RecordingError:
        return


class _ControlSession:
    """One relay (in a scratch directory) shared by the inputs of `control_handler`."""

    relay: Relay | None = None
    root: Path | None = None

    @classmethod
    def get(cls) -> Relay:
        if cls.relay is None:
            cls.root = Path(tempfile.mkdtemp(prefix="pyrelayd-fuzz-"))
            cls.relay = Relay(RelaySettings(output_root=cls.root))
        return cls.relay


def control_handler(data: bytes) -> None:
    """A control connection: VERSION, then requests whose command and payload the input
    gives, handled by the real handler on a real relay (writing under a scratch directory).

    The handler must answer or close for every input: no exception may escape it.
    """
    relay = _ControlSession.get()
    handler = ControlHandler(relay, "fuzz")
    minor = _pick(data, 0, RELAYD_MINORS)
    handler.handle(relayd.Command.VERSION, relayd.Version(2, minor).encode())
    position = 1
    try:
        while position + 3 <= len(data):
            command = data[position] % 24
            size = int.from_bytes(data[position + 1 : position + 3], "big") % 512
            payload = data[position + 3 : position + 3 + size]
            position += 3 + size
            outcome = handler.handle(command, payload)
            if outcome.close:
                break
    finally:
        handler.connection_lost()


TARGETS: dict[str, Target] = {
    "relayd_request": relayd_request,
    "viewer_request": viewer_request,
    "viewer_reply": viewer_reply,
    "index_file": index_file,
    "uri": uri,
    "control_framing": control_framing,
    "data_framing": data_framing,
    "control_handler": control_handler,
    "recording": recording,
}

# The handler logs every refusal; a fuzzer feeds millions.
logging.disable(logging.CRITICAL)
