"""What a control connection's requests do (sans-IO): request in, reply and model calls out.

`ControlHandler` takes the events of a `ControlFramer` (protocol/relayd.py) one at a time
and returns an `Outcome`: the reply bytes, whether the connection must close, and what to
count. It never sees a socket; the server's `ControlProtocol` moves the bytes.
"""

from __future__ import annotations

import dataclasses
import logging
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

# Logged as the control connection: operators filter on that name, whichever module decides.
log = logging.getLogger("pyrelayd.server.control")

UINT64_MAX = wire.UINT64_MAX
_DATA_PENDING_ERROR = wire.generic_reply(wire.UINT32_MAX)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes | None = None
    close: bool = False
    # Counted in the relay's error metrics; closing without saying is a protocol error.
    error: ErrorKind | None = None


_CLOSE = Outcome(None, True)
_NO_REPLY = Outcome()
_OK = Outcome(wire.generic_reply(ReturnCode.OK))  # shared: the answer to most SEND_INDEX
ConnectionCommand = Callable[[bytes], Outcome]  # a handler method, by the request payload
SessionCommand = Callable[[RelaySession, bytes], Outcome]  # also given the session


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
        # The stream the SEND_METADATA being received writes to, and its padding and length.
        self.metadata: RelayStream | None = None
        self.metadata_padding = 0
        self.metadata_length = 0

    # ----------------------------------------------------------------- entry points

    def receive(self, event: wire.ControlEvent) -> Outcome:
        """One event of the connection's `ControlFramer`."""
        if event.__class__ is wire.ControlRequest:
            return self.handle(event.header.command, event.payload)
        self.command = Command.SEND_METADATA
        try:
            outcome = self._metadata_bytes(typing.cast(wire.MetadataBytes, event))
        except (wire.ProtocolError, OSError) as error:
            outcome = self._failure(error)
        if outcome.close or outcome.error is not None:
            self._count(outcome)
        return outcome

    def handle(self, command: int, payload: bytes) -> Outcome:
        """One request (for SEND_METADATA: its fixed part; the metadata bytes follow)."""
        self.command = command
        try:
            outcome = self._dispatch(command, payload)
        except (wire.ProtocolError, OSError) as error:
            outcome = self._failure(error)
        if outcome.close or outcome.error is not None:
            self._count(outcome)
        return outcome

    def _failure(self, error: wire.ProtocolError | OSError) -> Outcome:
        what = wire.command_name(self.command)
        if isinstance(error, wire.ProtocolError):
            log.warning("%s: %s: %s", self.name, what, error)
            return Outcome(error.reply, True)
        log.error("%s: %s: I/O error: %s", self.name, what, error)
        return Outcome(None, True, ErrorKind.DISK)

    def _count(self, outcome: Outcome) -> None:
        if outcome.close:
            self.failed = True
        self.relay.counters.count(outcome.error or ErrorKind.PROTOCOL)

    def _refuse(self, reason: str, outcome: Outcome = _CLOSE) -> Outcome:
        """Log why the current command is refused; `outcome` answers it."""
        log.warning("%s: %s refused: %s", self.name, wire.command_name(self.command), reason)
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
        # By method name: what a command does can be replaced on the class (tests do).
        name = self._SESSION_COMMANDS.get(command)
        if name is not None:
            session = self.session
            if session is None or not self.version_checked:
                log.warning("%s: %s before VERSION and CREATE_SESSION", self.name,
                            wire.command_name(command))
                return _CLOSE
            session_command: SessionCommand = getattr(self, name)
            return session_command(session, payload)
        name = self._CONNECTION_COMMANDS.get(command)
        if name is None:
            log.warning("%s: unknown command %d", self.name, command)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        connection_command: ConnectionCommand = getattr(self, name)
        return connection_command(payload)

    # ----------------------------------------------------------------- connection commands

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

    def _start_data(self, payload: bytes) -> Outcome:
        return Outcome(wire.generic_reply(ReturnCode.OK))

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
            if self.relay.failed_stream(session, request.stream_id):
                return Outcome(wire.generic_reply(ReturnCode.OK))  # closed already
            return self._refuse(f"unknown stream {request.stream_id}",
                                Outcome(wire.generic_reply(ReturnCode.UNK), True))
        stream.request_close(request.last_net_seq_num)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.DataPending.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is None:
            if self.relay.failed_stream(session, request.stream_id):
                # Closed by a write failure: nothing more will be written; the session
                # daemon must not wait for it.
                return Outcome(wire.generic_reply(0))
            return self._refuse(f"unknown stream {request.stream_id}",
                                Outcome(_DATA_PENDING_ERROR, True))
        return Outcome(wire.generic_reply(int(stream.data_pending(request.last_net_seq_num))))

    def _quiescent_control(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.QuiescentControl.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is not None:
            stream.mark_quiescent()
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _begin_data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.BeginDataPending.decode(payload)
        self.relay.begin_data_pending(request.session_id)
        return Outcome(wire.generic_reply(ReturnCode.OK))

    def _end_data_pending(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.EndDataPending.decode(payload)
        pending = self.relay.end_data_pending(request.session_id)
        return Outcome(wire.generic_reply(int(pending)))

    def _send_metadata(self, session: RelaySession, payload: bytes) -> Outcome:
        """The fixed part of a SEND_METADATA: which stream the metadata bytes go to."""
        request = wire.SendMetadataHeader.decode(payload)
        stream = self._stream_of(session, request.stream_id)
        if stream is None or not stream.is_metadata:
            return self._refuse(f"unknown metadata stream {request.stream_id}")
        if stream.data_file is None:
            return self._refuse(f"{stream} has no open file")
        self.metadata = stream
        self.metadata_padding = request.padding_size
        self.metadata_length = 0
        return _NO_REPLY  # SEND_METADATA has no reply

    def _metadata_bytes(self, piece: wire.MetadataBytes) -> Outcome:
        """Metadata bytes are written as they arrive, never buffered whole."""
        stream = self.metadata
        if stream is None:
            return self._refuse("metadata bytes outside a SEND_METADATA")
        if piece.data:
            stream.write(piece.data)
            self.metadata_length += len(piece.data)
        if not piece.last:
            return _NO_REPLY
        self.metadata = None
        try:
            stream.end_metadata(self.metadata_length, self.metadata_padding)
        except StreamError as error:
            return self._refuse(str(error))
        return _NO_REPLY

    def _send_index(self, session: RelaySession, payload: bytes) -> Outcome:
        request = wire.SendIndex.decode(payload, self.minor)
        stream = self._stream_of(session, request.relay_stream_id)
        if stream is None and self.relay.failed_stream(session, request.relay_stream_id):
            return _OK  # closed by a write failure: the index is dropped with its packets
        if stream is None or stream.is_metadata:
            return self._refuse(f"unknown data stream {request.relay_stream_id}",
                                Outcome(wire.generic_reply(ReturnCode.UNK), True))
        try:
            stream.add_index(request)
        except StreamError as error:
            log.warning("%s: SEND_INDEX: %s", self.name, error)
            return Outcome(wire.generic_reply(ReturnCode.UNK), True)
        except OSError as error:
            stream.fail(error)  # that stream only: the session and connection go on
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
            next_chunk = self.relay.find_chunk(session, request.new_chunk_id)
            if next_chunk is None:
                return self._refuse(
                    f"unknown trace chunk {request.new_chunk_id}",
                    Outcome(wire.generic_reply(ReturnCode.INVALID_PROTOCOL), True))
        for entry in request.streams:
            stream = self._stream_of(session, entry.stream_id)
            if stream is None and self.relay.failed_stream(session, entry.stream_id):
                continue  # closed by a write failure: nothing to rotate
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
        except (ChunkError, OSError, UnsafeNameError) as error:
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

    _CONNECTION_COMMANDS: ClassVar[dict[int, str]] = {
        Command.VERSION: "_version",
        Command.GET_CONFIGURATION: "_get_configuration",
        Command.CREATE_SESSION: "_create_session",
        Command.START_DATA: "_start_data",
    }
    _SESSION_COMMANDS: ClassVar[dict[int, str]] = {
        Command.ADD_STREAM: "_add_stream",
        Command.SEND_METADATA: "_send_metadata",
        Command.STREAMS_SENT: "_streams_sent",
        Command.CLOSE_STREAM: "_close_stream",
        Command.DATA_PENDING: "_data_pending",
        Command.QUIESCENT_CONTROL: "_quiescent_control",
        Command.BEGIN_DATA_PENDING: "_begin_data_pending",
        Command.END_DATA_PENDING: "_end_data_pending",
        Command.SEND_INDEX: "_send_index",
        Command.RESET_METADATA: "_reset_metadata",
        Command.ROTATE_STREAMS: "_rotate_streams",
        Command.CREATE_TRACE_CHUNK: "_create_trace_chunk",
        Command.CLOSE_TRACE_CHUNK: "_close_trace_chunk",
        Command.TRACE_CHUNK_EXISTS: "_trace_chunk_exists",
    }
