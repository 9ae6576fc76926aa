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
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrelayd.capture.framing import ControlRequestFramer, PacketFramer
from pyrelayd.capture.recording import RecordingError, parse_recording
from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.model.session import SessionInfo
from pyrelayd.model.stream import StreamError
from pyrelayd.protocol import relayd, viewer
from pyrelayd.protocol.data import DataHandler
from pyrelayd.protocol.index import IndexFormatError, read_index_file
from pyrelayd.protocol.live import LiveFramer, LiveHandler, PacketRange, ViewerRefused
from pyrelayd.protocol.liveroute import LiveRouter
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


#: At most this many pieces per input, the last holding the rest: where the first cuts fall is
#: the input's to say, but a long input is not fed tens of bytes at a time from end to end
#: (each feed costs the instrumented framer more than the bytes it carries).
MAX_PIECES = 32


def _chunks(data: bytes) -> list[bytes]:
    """`data` cut where its own bytes say (so the fuzzer explores every split): a size byte
    (1 + byte % 64), then that many bytes; at most MAX_PIECES pieces."""
    pieces: list[bytes] = []
    position = 0
    while position < len(data):
        if len(pieces) == MAX_PIECES - 1:
            pieces.append(data[position:])
            break
        size = 1 + data[position] % 64
        pieces.append(data[position + 1 : position + 1 + size])
        position += 1 + size
    return pieces


def _cut(stream: bytes, sizes: bytes) -> list[bytes]:
    """`stream` (made from the input) cut into pieces of 1 + byte % 64 bytes for each byte of
    `sizes` (the input's) in turn, at most MAX_PIECES pieces: every byte of `stream` is fed,
    in order."""
    pieces: list[bytes] = []
    position = 0
    for size in sizes[: MAX_PIECES - 1]:
        if position >= len(stream):
            break
        pieces.append(stream[position : position + 1 + size % 64])
        position += 1 + size % 64
    if position < len(stream):
        pieces.append(stream[position:])
    return pieces


class _Scratch:
    """Scratch directories for relays, in memory when the machine has /dev/shm (the handlers
    create directories and files for most inputs): pyrelayd-fuzz/PID. libFuzzer ends a run
    without Python's atexit, so each run removes what runs that have ended left there."""

    base: Path | None = None
    moved = 0
    used = 0  # bytes in use on the scratch file system after the last deletion

    @classmethod
    def directory(cls) -> Path:
        if cls.base is None:
            parent = Path("/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir())
            parent /= "pyrelayd-fuzz"
            parent.mkdir(exist_ok=True)
            for old in parent.iterdir():
                if not old.name.isdigit() or not _running(int(old.name)):
                    shutil.rmtree(old, ignore_errors=True)
            cls.base = parent / str(os.getpid())
            shutil.rmtree(cls.base, ignore_errors=True)
            (cls.base / "trash").mkdir(parents=True)
        return cls.base

    @classmethod
    def fresh(cls) -> Path:
        """An empty output directory, the same path for every input: what an input's relay
        wrote is moved away before the next input runs (and deleted a few thousand inputs at
        a time), so each input starts from the same state: a crash reproduces from its input
        alone."""
        base = cls.directory()
        output, trash = base / "output", base / "trash"
        try:
            os.rename(output, trash / str(cls.moved))
        except FileNotFoundError:
            return output  # the last input wrote nothing
        cls.moved += 1
        if cls.moved % 2000 == 0 or _used(base) > cls.used + (256 << 20):
            subprocess.run(["rm", "-rf", "--", str(trash)], check=True)
            trash.mkdir()
            cls.used = _used(base)
        return output


def _used(path: Path) -> int:
    """Bytes in use on the file system of `path` (in /dev/shm, memory)."""
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fresh_relay() -> Relay:
    """A relay with no sessions, writing into an empty scratch directory."""
    return Relay(RelaySettings(output_root=_Scratch.fresh()))


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
    framer = PacketFramer()
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


def control_handler(data: bytes) -> None:
    """A control connection: VERSION, then requests whose command and payload the input
    gives, handled by the real handler on a real relay (writing under a scratch directory).

    The handler must answer or close for every input: no exception may escape it.
    """
    relay = _fresh_relay()
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


def live_framing(data: bytes) -> None:
    """Viewer bytes cut anywhere, into the framer's bounded receive buffer (first byte odd) or
    fed: every request comes out once, in order, read from where it was; the buffer never
    fills up (a request is at most 36 bytes); an unknown command is the error with UNK."""
    if not data:
        return
    receive = data[0] % 2 == 1
    framer = LiveFramer(capacity=64) if receive else LiveFramer()
    fed = bytearray()
    position = 0
    try:
        for piece in _chunks(data[1:]):
            if receive:
                while piece:
                    buffer = framer.receive_buffer()
                    assert len(buffer) > 0
                    count = min(len(buffer), len(piece))
                    buffer[:count] = piece[:count]
                    framer.received(count)
                    fed += piece[:count]
                    piece = piece[count:]
                    position = _frame_live(framer, fed, position)
            else:
                framer.feed(piece)
                fed += piece
                position = _frame_live(framer, fed, position)
    except viewer.ProtocolError as error:
        assert error.reply == viewer.UNKNOWN_COMMAND_REPLY
        return
    assert framer.pending == bytes(fed[position:])


def _frame_live(framer: LiveFramer, fed: bytearray, position: int) -> int:
    header = viewer.CommandHeader.FORMAT
    while (request := framer.next_request()) is not None:
        _size, command, _version = header.unpack_from(fed, position)
        payload = request.encode()
        start = position + header.size
        assert command == request.COMMAND, (command, request)
        assert fed[start : start + len(payload)] == payload, request
        position = start + len(payload)
    return position


class _LiveSession:
    """One relay with one live session (a metadata and a data stream with bytes in their
    files, published), shared by the inputs of `live_handler`."""

    relay: Relay | None = None

    @classmethod
    def get(cls) -> Relay:
        if cls.relay is None:
            relay = Relay(RelaySettings(output_root=_Scratch.directory() / "live"))
            session = relay.create_session(SessionInfo(
                session_name="fuzz", hostname="fuzz", base_path="", live_timer=1_000_000,
                snapshot=False, sessiond_uuid=bytes(16), sessiond_session_id=1,
                creation_time=1704164645, name_contains_creation_time=False, major=2,
                minor=15), None)
            relay.create_trace_chunk(session, 0, 1704164645, None)
            metadata = relay.add_stream(session, "metadata", "ust/uid/0/64-bit", 0, 0)
            channel = relay.add_stream(session, "channel0_0", "ust/uid/0/64-bit", 0, 0)
            metadata.write(b"/* CTF 1.8 */")
            metadata.end_metadata(13, 0)
            channel.write(bytes(4096))
            session.publish_streams()
            cls.relay = relay
        return cls.relay


def _live_request(data: bytes, position: int) -> tuple[bytes, int]:
    """A request made from the input: a command (or an unknown one), small ids (so that
    they name the session and its streams), offsets and lengths around the file's size."""
    command = data[position] % 11
    values = data[position + 1 : position + 5].ljust(4, b"\0")
    small, offset, length = values[0] % 6, values[1] * 64, values[2] * 64 + values[3] % 64
    requests: dict[int, viewer.Request] = {
        1: viewer.Connect(minor=small * 3, connection_type=1 + values[1] % 3),
        2: viewer.ListSessions(),
        3: viewer.AttachSession(small, 1 + values[1] % 3),
        4: viewer.GetNextIndex(small),
        5: viewer.GetPacket(small, offset, length),
        6: viewer.GetMetadata(small),
        7: viewer.GetNewStreams(small),
        8: viewer.CreateSession(),
        9: viewer.DetachSession(small),
    }
    request = requests.get(command)
    raw = (viewer.encode_request(request) if request is not None
           else viewer.CommandHeader(command * 7).encode())
    return raw, position + 5


def live_handler(data: bytes) -> None:
    """A viewer connection: CONNECT, then requests the input makes, framed from a byte stream
    cut where the input says and answered by the real handler on a real relay. Every request
    is answered (replies that decode, file ranges within the file) or the connection is
    refused; the handler lets go of its viewer session at the end."""
    relay = _LiveSession.get()
    handler = LiveHandler(relay, "fuzz")
    framer = LiveFramer()
    minor = _pick(data, 0, VIEWER_MINORS)
    stream = bytearray(viewer.encode_request(viewer.Connect(minor=minor)))
    position = 1
    while position < len(data):
        raw, position = _live_request(data, position)
        stream += raw
    try:
        for piece in _cut(bytes(stream), data):
            framer.feed(piece)
            while (request := framer.next_request()) is not None:
                for output in handler.handle(request):
                    if isinstance(output, PacketRange):
                        assert 0 < output.length <= viewer.MAX_PACKET_REQUEST
                        assert output.offset + output.length <= 4096, output
    except (ViewerRefused, viewer.ProtocolError):
        pass
    finally:
        handler.close()
    assert not any(session.viewers for session in relay.sessions.values())


def relayd_control_framer(data: bytes) -> None:
    """Control bytes cut anywhere, through the relay's framer: each request keeps at most its
    command's limit, metadata comes out in pieces adding up to its size, nothing beyond a
    limit is ever buffered, and a refused length raises ProtocolError only."""
    framer = relayd.ControlFramer()
    largest = max(relayd.MAX_REQUEST_PAYLOAD.values())
    metadata_left: int | None = None
    try:
        for piece in _chunks(data):
            for event in framer.feed(piece):
                if isinstance(event, relayd.MetadataBytes):
                    assert metadata_left is not None
                    metadata_left -= len(event.data)
                    assert metadata_left >= 0
                    assert event.last == (metadata_left == 0)
                    if event.last:
                        metadata_left = None
                    continue
                assert metadata_left is None
                header = event.header
                if header.command == relayd.Command.SEND_METADATA:
                    assert len(event.payload) == 12
                    metadata_left = header.data_size - 12
                else:
                    limit = relayd.request_payload_limit(header.command)
                    assert len(event.payload) == min(header.data_size, limit)
            assert framer.buffered <= max(largest, relayd.CONTROL_HEADER_SIZE)
    except relayd.ProtocolError:
        return


def relayd_data_framer(data: bytes) -> None:
    """Data-port bytes cut anywhere, through the relay's framer: headers and payload slices
    add up to what was fed; each packet is complete once, after exactly its size."""
    framer = relayd.DataFramer()
    fed = bytearray()
    out = bytearray()
    left = 0
    for piece in _chunks(data):
        fed += piece
        for header, payload, complete in framer.feed(piece):
            if header is not None:
                assert left == 0
                out += header.encode()
                left = header.data_size
            out += payload
            left -= len(payload)
            assert left >= 0 and complete == (left == 0)
    assert bytes(out) + framer.partial_header == bytes(fed)
    assert left == framer.payload_left


def control_connection(data: bytes) -> None:
    """A control connection's raw bytes (VERSION included, cut where the input says), framed
    and handled as the relay does, on a real relay: no exception may escape, and the
    connection stops at the first outcome that closes it."""
    relay = _fresh_relay()
    framer = relayd.ControlFramer()
    handler = ControlHandler(relay, "fuzz")
    try:
        for piece in _chunks(data):
            for event in framer.feed(piece):
                if handler.receive(event).close:
                    return
    except relayd.ProtocolError:
        return  # a refused length: the server drops the connection
    finally:
        handler.connection_lost()


def _open_session(relay: Relay, minor: int) -> tuple[ControlHandler, list[int]]:
    """A control connection with a session, chunk 0 and three streams (the last metadata)."""
    control = ControlHandler(relay, "fuzz control")
    command = relayd.Command
    control.handle(command.VERSION, relayd.Version(2, minor).encode())
    control.handle(command.CREATE_SESSION, relayd.CreateSession(
        "s", "h", sessiond_uuid=bytes(range(16)), sessiond_session_id=1,
        creation_time=1_700_000_000).encode(minor))
    if minor >= 11:
        control.handle(command.CREATE_TRACE_CHUNK,
                       relayd.CreateTraceChunk(0, 1_700_000_000).encode())
    handles = []
    for name, size, count in (("channel0_0", 0, 0), ("channel0_1", 300, 2), ("metadata", 0, 0)):
        outcome = control.handle(command.ADD_STREAM,
                                 relayd.AddStream(name, "ust/uid/0/64-bit", size, count)
                                 .encode(minor))
        assert outcome.reply is not None
        handles.append(relayd.decode_status_reply(outcome.reply)[0])
    control.handle(command.STREAMS_SENT, b"")
    return control, handles


def _data_stream(data: bytes, handles: list[int]) -> bytes:
    """Data-port bytes made from the input: per packet 5 bytes (stream: one of the session's
    or another; sequence number step; size; padding) then the payload the size says."""
    out = bytearray()
    seq = dict.fromkeys(handles, 0)
    position = 1
    while position + 5 <= len(data):
        pick, step, size, padding = struct.unpack_from(">BBHB", data, position)
        position += 5
        size %= 700
        stream = handles[pick % 4] if pick % 4 < 3 else 1000 + pick
        number = seq.get(stream, 0) + step % 3 - 1  # mostly the next; sometimes a repeat
        seq[stream] = number + 1
        payload = data[position : position + size]
        position += size
        out += relayd.DataHeader(stream, number & relayd.UINT64_MAX, size, padding).encode()
        out += payload.ljust(size, b"\0")
    return bytes(out)


def data_connection(data: bytes) -> None:
    """A data connection's packets, framed and handled as the relay does, into a real
    session (its control half: SEND_INDEX for some packets, CLOSE_STREAM at the end): only
    StreamError may stop it, and losing both connections releases the session."""
    if not data:
        return
    relay = _fresh_relay()
    control, handles = _open_session(relay, _pick(data, 0, (4, 11, 13, 15)))
    framer = relayd.DataFramer()
    handler = DataHandler(relay, "fuzz data")
    failed = False
    try:
        stream = _data_stream(data, handles)
        # The size of every read but the last: from the input, but at most MAX_PIECES reads.
        read_size = max(1 + data[0] * 29 % 1024, -(-len(stream) // MAX_PIECES))
        with relay.fd_pool.batch():
            for start in range(0, len(stream), read_size):
                for packet in framer.feed(stream[start : start + read_size]):
                    handler.handle(packet)
    except StreamError:
        failed = True
    finally:
        for handle in handles:
            control.handle(relayd.Command.CLOSE_STREAM,
                           relayd.CloseStream(handle, relayd.UINT64_MAX).encode())
        handler.connection_lost(failed)
        control.connection_lost()
    assert not relay.sessions, "the session outlived both its connections"


def live_router(data: bytes) -> None:
    """`LiveRouter` (the `--workers` router's viewer side): requests framed from the input go
    to 1-4 workers, whose replies are cut from the rest of the input. Routing never fails;
    framing a reply and combining them only refuse with `ProtocolError`; a reply from one
    worker is passed on unchanged; a merged session list counts every worker's sessions."""
    if not data:
        return
    router = LiveRouter(1 + data[0] % 4)
    framer = LiveFramer()
    framer.feed(data[1:2048])
    replies = memoryview(data)[2048:]
    while True:
        try:
            request = framer.next_request()
        except viewer.ProtocolError:
            return
        if request is None:
            return
        route = router.route(request)
        assert route.workers and all(0 <= w < router.worker_count for w in route.workers)
        assert viewer.decode_request(request.COMMAND, route.data[16:]) == request
        answers: list[bytes] = []
        for _worker in route.workers:
            reply = b""
            try:
                while (missing := router.reply_missing(route, reply)) > 0:
                    if missing > len(replies):
                        return  # the workers' replies end here
                    reply += bytes(replies[:missing])
                    replies = replies[missing:]
            except viewer.ProtocolError:
                return
            answers.append(reply)
        try:
            combined = router.combine(route, answers)
        except viewer.ProtocolError:
            continue
        if len(route.workers) == 1:
            assert combined == answers[0]
        elif isinstance(request, viewer.ListSessions):
            counts = [struct.unpack_from(">I", a)[0] for a in answers]
            assert struct.unpack_from(">I", combined)[0] == sum(counts)
            assert len(combined) == 4 + sum(len(a) - 4 for a in answers)


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
    "live_framing": live_framing,
    "live_handler": live_handler,
    "relayd_control_framer": relayd_control_framer,
    "relayd_data_framer": relayd_data_framer,
    "control_connection": control_connection,
    "data_connection": data_connection,
    "live_router": live_router,
}

# The handler logs every refusal; a fuzzer feeds millions.
logging.disable(logging.CRITICAL)
