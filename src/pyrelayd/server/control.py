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
import typing
from collections.abc import Callable
from typing import ClassVar

from pyrelayd.model.chunk import ChunkError
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


_CLOSE = Outcome(None, True)
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

    # ----------------------------------------------------------------- entry points

    def handle(self, command: int, payload: bytes) -> Outcome:
        try:
            outcome = self._dispatch(command, payload)
        except wire.ProtocolError as error:
            log.warning("%s: %s: %s", self.name, _command_name(command), error)
            outcome = Outcome(error.reply, True)
        except OSError as error:
            log.error("%s: %s: I/O error: %s", self.name, _command_name(command), error)
            outcome = _CLOSE
        if outcome.close:
            self.failed = True
        return outcome

    def metadata_stream(self, stream_id: int) -> RelayStream | None:
        """The metadata stream a SEND_METADATA may write to, None to close the connection."""
        if self.session is None:
            return None
        stream = self.relay.find_stream(stream_id)
        if stream is None or stream.session is not self.session or not stream.is_metadata:
            log.warning("%s: SEND_METADATA for unknown stream %d", self.name, stream_id)
            return None
        return stream

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
            return _CLOSE
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
            return _CLOSE
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
        fatal = Outcome(self._create_session_reply(0, ReturnCode.FATAL, None))
        if not self.version_checked:
            return _CLOSE
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
            return fatal
        self.session = session
        log.info("%s: session %d (%s/%s) uses protocol 2.%d, trace format %s", self.name,
                 session.id, session.hostname, session.name, self.minor,
                 session.trace_format.label)
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
            return Outcome(wire.status_stream_reply(UINT64_MAX, ReturnCode.UNK))
        except RelayError as error:
            log.warning("%s: ADD_STREAM refused: %s", self.name, error)
            return Outcome(wire.status_stream_reply(error.code, ReturnCode.UNK))
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
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        stream.request_close(request.last_net_seq_num)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.DataPending.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is None:
            return Outcome(_DATA_PENDING_ERROR, True)
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
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        try:
            stream.add_index(request)
        except StreamError as error:
            log.warning("%s: SEND_INDEX: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _reset_metadata(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.ResetMetadata.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if session.live_timer or stream is None or not stream.is_metadata:
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        try:
            stream.reset_metadata()
        except StreamError as error:
            log.warning("%s: RESET_METADATA: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _rotate_streams(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return _CLOSE
        request = wire.RotateStreams.decode(payload)
        next_chunk = None
        if request.new_chunk_id is not None:
            next_chunk = self.relay.chunks.find(session.registry_key, request.new_chunk_id)
            if next_chunk is None:
                return Outcome(wire.generic_reply(ReturnCode.INVALID_PROTOCOL), True)
        for entry in request.streams:
            stream = self._stream_of(session, entry.stream_id)
            if stream is None:
                return Outcome(wire.generic_reply(ReturnCode.INVALID), True)
            try:
                stream.set_pending_rotation(next_chunk, entry.rotate_at_seq_num)
            except StreamError as error:
                log.warning("%s: ROTATE_STREAMS: %s", self.name, error)
                return Outcome(wire.generic_reply(ReturnCode.FILE_CREATION_ERROR), True)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _create_trace_chunk(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return _CLOSE
        try:
            request = wire.CreateTraceChunk.decode(payload)
            self.relay.create_trace_chunk(session, request.chunk_id, request.creation_timestamp,
                                          request.override_name)
        except (wire.ProtocolError, UnsafeNameError) as error:
            log.warning("%s: CREATE_TRACE_CHUNK refused: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.INVALID), True)
        except ChunkError as error:
            log.warning("%s: CREATE_TRACE_CHUNK refused: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.INVALID_PROTOCOL), True)
        except OSError as error:
            log.error("%s: CREATE_TRACE_CHUNK failed: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _close_trace_chunk(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return _CLOSE
        request = wire.CloseTraceChunk.decode(payload)
        try:
            command = (wire.CloseCommand(request.close_command)
                       if request.close_command is not None else None)
        except ValueError:
            return Outcome(wire.close_trace_chunk_reply(ReturnCode.INVALID, None), True)
        try:
            path = self.relay.close_trace_chunk(session, request.chunk_id,
                                                request.close_timestamp, command)
        except RelayError as error:
            log.warning("%s: CLOSE_TRACE_CHUNK refused: %s", self.name, error)
            return Outcome(wire.close_trace_chunk_reply(error.code, None), True)
        except (ChunkError, OSError) as error:
            log.error("%s: CLOSE_TRACE_CHUNK failed: %s", self.name, error)
            return Outcome(wire.close_trace_chunk_reply(ReturnCode.UNK, None), True)
        return Outcome(wire.close_trace_chunk_reply(ReturnCode.OK, path))

    def _trace_chunk_exists(self, session: RelaySession, payload: bytes) -> Outcome:
        if self.minor < 11:
            return _CLOSE
        request = wire.TraceChunkExists.decode(payload)
        try:
            exists = self.relay.trace_chunk_exists(session, request.chunk_id)
        except RelayError as error:
            return Outcome(wire.trace_chunk_exists_reply(error.code, False), True)
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

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            with self.relay.fd_pool.batch():  # the index records of this read: one write
                self._process()
        except OSError as error:
            log.error("%s: cannot write: %s", self.handler.name, error)
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
        try:
            return wire.MAX_REQUEST_PAYLOAD.get(Command(command), 0)
        except ValueError:
            return 0

    def _start_metadata(self, header: wire.ControlHeader) -> bool:
        fixed = wire.SendMetadataHeader.FORMAT.size
        if header.data_size < fixed:
            self.abort()
            return False
        if len(self.buffer) < fixed:
            return False
        stream_id, padding = struct.unpack_from(">QI", self.buffer)
        del self.buffer[:fixed]
        stream = self.handler.metadata_stream(stream_id)
        if stream is None or stream.data_file is None:
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
            self.abort()
