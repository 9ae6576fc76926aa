"""Control connections (port 5342): framing, command dispatch and replies.

`ControlHandler` is synchronous and socket-free: it takes one decoded request at a time and
returns the reply bytes and whether the connection must close. `ControlProtocol` is the thin
asyncio adapter that frames bytes into requests and streams SEND_METADATA payloads to disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import time
import typing
from collections.abc import Callable
from typing import ClassVar

from pyrelayd.model.chunk import ChunkError
from pyrelayd.model.counters import ErrorKind, error_kind
from pyrelayd.model.relay import Relay, RelayError
from pyrelayd.model.session import RelaySession, SessionInfo
from pyrelayd.model.stream import RelayStream, StreamError
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.relayd import Command, ReturnCode
from pyrelayd.storage.paths import UnsafeNameError

log = logging.getLogger(__name__)

UINT64_MAX = wire.UINT64_MAX
_DATA_PENDING_ERROR = wire.generic_reply(wire.UINT32_MAX)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes | None = None
    close: bool = False
    # Counted in the relay's error metrics; closing without saying is a protocol error.
    error: ErrorKind | None = None


_CLOSE = Outcome(None, True)
_OK = Outcome(wire.generic_reply(ReturnCode.OK))  # shared: the answer to most SEND_INDEX
SessionCommand = Callable[["ControlHandler", RelaySession, bytes], Outcome]


class ControlHandler:
    """The state of one control connection and what each command does to the relay."""

    def __init__(self, relay: Relay, name: str = "control") -> None:
        self.relay = relay
        self.name = name
        self.version_checked = False
        self.major = 0
        self.minor = 0
        self.session: RelaySession | None = None
        self.failed = False
        self.command = 0  # the one being handled, for messages

    # ----------------------------------------------------------------- entry points

    def handle(self, command: int, payload: bytes) -> Outcome:
        self.command = command
        try:
            outcome = self._dispatch(command, payload)
        except wire.ProtocolError as error:
            log.warning("%s: %s: %s", self.name, _command_name(command), error)
            outcome = Outcome(error.reply, True)
        except OSError as error:
            log.error("%s: %s: I/O error: %s", self.name, _command_name(command), error)
            outcome = Outcome(None, True, ErrorKind.DISK)
        if outcome.close:
            self.failed = True
        if outcome.close or outcome.error is not None:
            self.relay.counters.count(outcome.error or ErrorKind.PROTOCOL)
        return outcome

    def metadata_stream(self, stream_id: int) -> RelayStream | None:
        """The metadata stream a SEND_METADATA may write to, None to close the connection."""
        if self.session is None:
            log.warning("%s: SEND_METADATA refused: no session yet", self.name)
            return None
        stream = self.relay.find_stream(stream_id)
        if stream is None or stream.session is not self.session or not stream.is_metadata:
            log.warning("%s: SEND_METADATA refused: unknown metadata stream %d", self.name,
                        stream_id)
            return None
        return stream

    def _refuse(self, reason: str, outcome: Outcome = _CLOSE) -> Outcome:
        """Log why the current command is refused; `outcome` answers it."""
        log.warning("%s: %s refused: %s", self.name, _command_name(self.command), reason)
        return outcome

    def connection_lost(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        if self.failed:
            session.abort()
        session.close()
        session.put()

    # ----------------------------------------------------------------- dispatch

    def _dispatch(self, command: int, payload: bytes) -> Outcome:
        if command == Command.VERSION:
            return self._version(payload)
        if command == Command.GET_CONFIGURATION:
            return self._get_configuration(payload)
        if command == Command.CREATE_SESSION:
            return self._create_session(payload)
        if command == Command.START_DATA:
            return Outcome(wire.generic_reply(ReturnCode.OK))
        handler = self._SESSION_COMMANDS.get(command)
        if handler is None:
            log.warning("%s: unknown command %d", self.name, command)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        session = self.session
        if session is None or not self.version_checked:
            log.warning("%s: %s before VERSION and CREATE_SESSION", self.name,
                        _command_name(command))
            return _CLOSE
        return handler(self, session, payload)

    def _version(self, payload: bytes) -> Outcome:
        if len(payload) < wire.Version.FORMAT.size:
            return self._refuse(f"payload of {len(payload)} bytes is too short")
        peer = wire.Version.decode(payload)
        reply = wire.version_reply()
        self.version_checked = True
        self.major = peer.major
        self.minor = min(peer.minor, wire.RELAYD_VERSION_MINOR)
        if peer.major != wire.RELAYD_VERSION_MAJOR:
            log.warning("%s: incompatible peer version %d.%d", self.name, peer.major, peer.minor)
            return Outcome(reply, True)
        log.info("%s: peer speaks %d.%d, using 2.%d", self.name, peer.major, peer.minor,
                 self.minor)
        return Outcome(reply)

    def _get_configuration(self, payload: bytes) -> Outcome:
        if len(payload) < wire.GetConfiguration.FORMAT.size:
            return self._refuse(f"payload of {len(payload)} bytes is too short")
        query = wire.GetConfiguration.decode(payload)
        if query.query_flags:
            return Outcome(wire.get_configuration_reply(ReturnCode.INVALID_PROTOCOL, 0))
        flags = wire.CONFIGURATION_FLAG_CLEAR_ALLOWED if self.relay.settings.allow_clear else 0
        return Outcome(wire.get_configuration_reply(ReturnCode.OK, flags))

    def _create_session_reply(self, session_id: int, code: int, path: str | None) -> bytes:
        if self.minor >= 11:
            return wire.create_session_reply_2_11(session_id, code, path)
        return wire.status_session_reply(session_id, code)

    def _create_session(self, payload: bytes) -> Outcome:
        fatal = Outcome(self._create_session_reply(0, ReturnCode.FATAL, None),
                        error=ErrorKind.PROTOCOL)
        if not self.version_checked:
            return self._refuse("no VERSION yet")
        if self.session is not None:
            log.warning("%s: CREATE_SESSION on a connection that already has one", self.name)
            return fatal
        try:
            request = wire.CreateSession.decode(payload, self.minor)
        except wire.ProtocolError as error:
            log.warning("%s: CREATE_SESSION refused: %s", self.name, error)
            return fatal
        if self.minor >= 11 and request.sessiond_uuid == bytes(16):
            log.warning("%s: CREATE_SESSION with a nil session daemon UUID", self.name)
            return fatal
        info = SessionInfo(
            session_name=request.session_name,
            hostname=request.hostname,
            base_path=request.base_path,
            live_timer=request.live_timer,
            snapshot=request.snapshot,
            sessiond_uuid=request.sessiond_uuid,
            sessiond_session_id=request.sessiond_session_id if self.minor >= 11 else None,
            creation_time=request.creation_time
            if request.creation_time is not None and self.minor >= 11 else self.relay.now(),
            name_contains_creation_time=request.session_name_contains_creation_time,
            major=self.major,
            minor=self.minor,
            # Only the 2.15 shape carries a format; sessions of older peers are CTF 1.8.
            trace_format=request.trace_format,
        )
        try:
            session = self.relay.create_session(info, request.current_chunk_id)
        except (UnsafeNameError, ChunkError, OSError) as error:
            log.warning("%s: CREATE_SESSION refused: %s", self.name, error)
            return dataclasses.replace(fatal, error=error_kind(error))
        self.session = session
        self.name = f"{self.name} [{session.hostname}/{session.name}]"
        log.info("%s: session %d created in %s (protocol 2.%d, trace format %s%s%s)",
                 self.name, session.id, session.directory, self.minor,
                 session.trace_format.label,
                 f", live timer {session.live_timer} us" if session.live_timer else "",
                 ", snapshot" if session.snapshot else "")
        return Outcome(self._create_session_reply(session.id, ReturnCode.OK, session.output_path))

    # ----------------------------------------------------------------- session commands

    def _stream_of(self, session: RelaySession, handle: int) -> RelayStream | None:
        stream = self.relay.find_stream(handle)
        if stream is None or stream.session is not session:
            return None
        return stream

    def _add_stream(self, session: RelaySession, payload: bytes) -> Outcome:
        try:
            request = wire.AddStream.decode(payload, self.minor)
        except wire.ProtocolError as error:
            log.warning("%s: ADD_STREAM: %s", self.name, error)
            return Outcome(wire.status_stream_reply(UINT64_MAX, ReturnCode.UNK), True)
        try:
            stream = self.relay.add_stream(session, request.channel_name, request.pathname,
                                           request.tracefile_size, request.tracefile_count)
        except UnsafeNameError as error:
            log.warning("%s: ADD_STREAM refused: %s", self.name, error)
            return Outcome(wire.status_stream_reply(UINT64_MAX, ReturnCode.UNK),
                           error=ErrorKind.PATH_REFUSED)
        except RelayError as error:
            log.warning("%s: ADD_STREAM refused: %s", self.name, error)
            return Outcome(wire.status_stream_reply(error.code, ReturnCode.UNK),
                           error=error_kind(error))
        log.debug("%s: stream %d %s/%s", self.name, stream.handle, stream.path_name,
                  stream.channel_name)
        return Outcome(wire.status_stream_reply(stream.handle, ReturnCode.OK))

    def _streams_sent(self, session: RelaySession, payload: bytes) -> Outcome:
        session.publish_streams()
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _close_stream(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.CloseStream.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is None:
            return self._refuse(f"unknown stream {request.stream_id}",
                                Outcome(wire.generic_reply(ReturnCode.UNK), True))
        stream.request_close(request.last_net_seq_num)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.DataPending.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is None:
            return self._refuse(f"unknown stream {request.stream_id}",
                                Outcome(_DATA_PENDING_ERROR, True))
        return Outcome(wire.generic_reply(int(stream.data_pending(request.last_net_seq_num))))

    def _quiescent_control(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.QuiescentControl.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is not None:
            stream.data_pending_checked = True
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _begin_data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.BeginDataPending.decode(payload)
        target = self.relay.sessions.get(request.session_id)
        if target is not None:
            for stream in target.all_streams():
                stream.data_pending_checked = False
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _end_data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.EndDataPending.decode(payload)
        target = self.relay.sessions.get(request.session_id)
        pending = target is not None and any(
            not stream.data_pending_checked for stream in target.all_streams()
        )
        return Outcome(wire.generic_reply(int(pending)))

    def _send_index(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.SendIndex.decode(payload, self.minor)
        stream = self._stream_of(session, request.relay_stream_id)
        if stream is None or stream.is_metadata:
            return self._refuse(f"unknown data stream {request.relay_stream_id}",
                                Outcome(wire.generic_reply(ReturnCode.UNK), True))
        try:
            stream.add_index(request)
        except StreamError as error:
            log.warning("%s: SEND_INDEX: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        return _OK

    def _reset_metadata(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.ResetMetadata.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if session.live_timer or stream is None or not stream.is_metadata:
            reason = ("not allowed in a live session" if session.live_timer
                      else f"unknown metadata stream {request.stream_id}")
            return self._refuse(reason, Outcome(wire.generic_reply(ReturnCode.UNK), True))
        try:
            stream.reset_metadata()
        except StreamError as error:
            log.warning("%s: RESET_METADATA: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _rotate_streams(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return self._refuse(f"not in protocol 2.{self.minor}")
        request = wire.RotateStreams.decode(payload)
        next_chunk = None
        if request.new_chunk_id is not None:
            next_chunk = self.relay.chunks.find(session.registry_key, request.new_chunk_id)
            if next_chunk is None:
                return self._refuse(
                    f"unknown trace chunk {request.new_chunk_id}",
                    Outcome(wire.generic_reply(ReturnCode.INVALID_PROTOCOL), True))
        for entry in request.streams:
            stream = self._stream_of(session, entry.stream_id)
            if stream is None:
                return self._refuse(f"unknown stream {entry.stream_id}",
                                    Outcome(wire.generic_reply(ReturnCode.INVALID), True))
            try:
                stream.set_pending_rotation(next_chunk, entry.rotate_at_seq_num)
            except StreamError as error:
                log.warning("%s: ROTATE_STREAMS: %s", self.name, error)
                return Outcome(wire.generic_reply(ReturnCode.FILE_CREATION_ERROR), True)
        log.info("%s: rotating %d streams to %s", self.name, len(request.streams),
                 f"trace chunk {request.new_chunk_id}" if next_chunk is not None else "no chunk")
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _create_trace_chunk(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return self._refuse(f"not in protocol 2.{self.minor}")
        try:
            request = wire.CreateTraceChunk.decode(payload)
            self.relay.create_trace_chunk(session, request.chunk_id, request.creation_timestamp,
                                          request.override_name)
        except (wire.ProtocolError, UnsafeNameError) as error:
            log.warning("%s: CREATE_TRACE_CHUNK refused: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.INVALID), True, error_kind(error))
        except ChunkError as error:
            log.warning("%s: CREATE_TRACE_CHUNK refused: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.INVALID_PROTOCOL), True)
        except OSError as error:
            log.error("%s: CREATE_TRACE_CHUNK failed: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True, ErrorKind.DISK)
        log.info("%s: trace chunk %d created%s", self.name, request.chunk_id,
                 f" as {request.override_name}" if request.override_name else "")
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _close_trace_chunk(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return self._refuse(f"not in protocol 2.{self.minor}")
        request = wire.CloseTraceChunk.decode(payload)
        try:
            command = (wire.CloseCommand(request.close_command)
                       if request.close_command is not None else None)
        except ValueError:
            return self._refuse(
                f"unknown close command {request.close_command}",
                Outcome(wire.close_trace_chunk_reply(ReturnCode.INVALID, None), True))
        try:
            path = self.relay.close_trace_chunk(session, request.chunk_id,
                                                request.close_timestamp, command)
        except RelayError as error:
            log.warning("%s: CLOSE_TRACE_CHUNK refused: %s", self.name, error)
            return Outcome(wire.close_trace_chunk_reply(error.code, None), True)
        except (ChunkError, OSError) as error:
            log.error("%s: CLOSE_TRACE_CHUNK failed: %s", self.name, error)
            return Outcome(wire.close_trace_chunk_reply(ReturnCode.UNK, None), True,
                           error_kind(error))
        log.info("%s: trace chunk %d closed (%s): %s", self.name, request.chunk_id,
                 command.name.lower() if command is not None else "no command", path)
        return Outcome(wire.close_trace_chunk_reply(ReturnCode.OK, path))

    def _trace_chunk_exists(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return self._refuse(f"not in protocol 2.{self.minor}")
        request = wire.TraceChunkExists.decode(payload)
        try:
            exists = self.relay.trace_chunk_exists(session, request.chunk_id)
        except RelayError as error:
            return self._refuse(str(error),
                                Outcome(wire.trace_chunk_exists_reply(error.code, False), True))
        return Outcome(wire.trace_chunk_exists_reply(ReturnCode.OK, exists))

    _SESSION_COMMANDS: ClassVar[dict[int, SessionCommand]] = {
        Command.ADD_STREAM: _add_stream,
        Command.STREAMS_SENT: _streams_sent,
        Command.CLOSE_STREAM: _close_stream,
        Command.DATA_PENDING: _data_pending,
        Command.QUIESCENT_CONTROL: _quiescent_control,
        Command.BEGIN_DATA_PENDING: _begin_data_pending,
        Command.END_DATA_PENDING: _end_data_pending,
        Command.SEND_INDEX: _send_index,
        Command.RESET_METADATA: _reset_metadata,
        Command.ROTATE_STREAMS: _rotate_streams,
        Command.CREATE_TRACE_CHUNK: _create_trace_chunk,
        Command.CLOSE_TRACE_CHUNK: _close_trace_chunk,
        Command.TRACE_CHUNK_EXISTS: _trace_chunk_exists,
    }


def _command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command}"


class ControlProtocol(asyncio.Protocol):
    """Frames a control connection: 24-byte header, then the payload.

    SEND_METADATA payloads are written to the metadata file as they arrive instead of being
    buffered; payloads larger than a command can use are drained without being kept.
    """

    def __init__(self, relay: Relay, connections: set[asyncio.BaseProtocol]) -> None:
        self.relay = relay
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.handler = ControlHandler(relay)
        self.buffer = bytearray()
        self.header: wire.ControlHeader | None = None
        self.metadata: RelayStream | None = None
        self.metadata_padding = 0
        self.metadata_left = 0  # metadata bytes still to write for the current request
        self.discard_left = 0  # payload bytes to drop after the part we keep
        self.replies: list[bytes] = []
        # For the stall sweep (server/timeouts.py): when bytes last came in, whether any
        # ever did, and since when the peer has not been reading our replies.
        self.last_progress = time.monotonic()
        self.received_any = False
        self.replies_stuck_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.handler.name = f"control {peer[0]}:{peer[1]}" if peer else "control"
        self.connections.add(self)
        self.relay.fd_pool.hold()
        log.info("%s: connected", self.handler.name)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.relay.fd_pool.unhold()
        if self.header is not None and exc is None:
            log.warning("%s: connection closed in the middle of a request", self.handler.name)
        self.handler.connection_lost()
        log.info("%s: disconnected", self.handler.name)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.handler.failed = True
        if self.transport is not None:
            self.transport.abort()

    def stalled_since(self) -> float | None:
        if self.replies_stuck_since is not None:
            return self.replies_stuck_since
        if (not self.received_any or self.header is not None or self.buffer
                or self.metadata_left or self.discard_left):
            return self.last_progress
        return None

    def drop_stalled(self, waited: float) -> None:
        what = ("not reading replies" if self.replies_stuck_since is not None
                else "no first message" if not self.received_any
                else "stopped in the middle of a message")
        log.warning("%s: dropped: %s for %.0f s", self.handler.name, what, waited)
        self.abort()

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its requests until it does.
        self.replies_stuck_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.replies_stuck_since = None
        self.last_progress = time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_progress = time.monotonic()
        self.received_any = True
        self.buffer += data
        try:
            with self.relay.fd_pool.batch():  # the index records of this read: one write
                self._process()
        except OSError as error:
            log.error("%s: cannot write: %s", self.handler.name, error)
            self.relay.counters.count(ErrorKind.DISK)
            self.abort()
        except Exception:
            log.exception("%s: internal error", self.handler.name)
            self.abort()
        finally:
            self._flush_replies()

    def _flush_replies(self) -> None:
        """The replies to every request of one read leave in a single write."""
        if self.replies and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.replies))
        self.replies.clear()

    def _process(self) -> None:
        buffer = self.buffer
        while self.transport is not None and not self.transport.is_closing():
            if self.metadata_left:
                if not buffer:
                    return
                assert self.metadata is not None
                take = min(len(buffer), self.metadata_left)
                self.metadata.write(memoryview(buffer)[:take])
                del buffer[:take]
                self.metadata_left -= take
                if self.metadata_left:
                    return
                self._finish_metadata()
                continue
            if self.discard_left:
                take = min(len(buffer), self.discard_left)
                del buffer[:take]
                self.discard_left -= take
                if self.discard_left:
                    return
                continue
            if self.header is None:
                if len(buffer) < wire.CONTROL_HEADER_SIZE:
                    return
                header = wire.ControlHeader.decode(buffer[: wire.CONTROL_HEADER_SIZE])
                del buffer[: wire.CONTROL_HEADER_SIZE]
                if header.data_size > wire.MAX_CONTROL_PAYLOAD:
                    log.warning("%s: payload of %d bytes refused", self.handler.name,
                                header.data_size)
                    self.relay.counters.count(ErrorKind.PROTOCOL)
                    self.abort()
                    return
                self.header = header
            header = self.header
            if header.command == Command.SEND_METADATA:
                if not self._start_metadata(header):
                    return
                continue
            wanted = min(header.data_size, self._payload_limit(header.command))
            if len(buffer) < wanted:
                return
            payload = bytes(buffer[:wanted])
            del buffer[:wanted]
            self.discard_left = header.data_size - wanted
            self.header = None
            outcome = self.handler.handle(header.command, payload)
            if outcome.reply:
                self.replies.append(outcome.reply)
            if outcome.close:
                self._flush_replies()
                self.close()
                return

    def _payload_limit(self, command: int) -> int:
        return wire.MAX_REQUEST_PAYLOAD.get(command, 0)  # unknown commands: 0

    def _start_metadata(self, header: wire.ControlHeader) -> bool:
        fixed = wire.SendMetadataHeader.FORMAT.size
        if header.data_size < fixed:
            log.warning("%s: SEND_METADATA refused: payload of %d bytes is too short",
                        self.handler.name, header.data_size)
            self.abort()
            return False
        if len(self.buffer) < fixed:
            return False
        stream_id, padding = struct.unpack_from(">QI", self.buffer)
        del self.buffer[:fixed]
        stream = self.handler.metadata_stream(stream_id)
        if stream is not None and stream.data_file is None:
            log.warning("%s: SEND_METADATA refused: %s has no open file", self.handler.name,
                        stream)
        if stream is None or stream.data_file is None:
            self.relay.counters.count(ErrorKind.PROTOCOL)
            self.abort()
            return False
        self.metadata = stream
        self.metadata_padding = padding
        self.metadata_left = header.data_size - fixed
        if not self.metadata_left:
            self._finish_metadata()
        return True

    def _finish_metadata(self) -> None:
        assert self.metadata is not None
        stream, self.metadata = self.metadata, None
        assert self.header is not None
        length = self.header.data_size - wire.SendMetadataHeader.FORMAT.size
        self.header = None
        try:
            stream.end_metadata(length, self.metadata_padding)
        except StreamError as error:
            log.warning("%s: SEND_METADATA: %s", self.handler.name, error)
            self.relay.counters.count(ErrorKind.PROTOCOL)
            self.abort()
