"""The consumer-daemon side of the relayd protocol: a producer of sessions, streams and packets.

Used by benchmarks (a synthetic producer as fast as the relay accepts) and by tests that need
exact control over what a relay receives. It speaks the same bytes as lttng-consumerd 2.15
by default; `minor` picks the protocol minor it announces (e.g. 13 for a 2.13 consumerd, 4
for a 2.4 one), and each session's trace format is chosen at `create_session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
import time
import uuid as uuid_module

from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.relayd import Command, ReturnCode, TraceFormat

UINT64_MAX = wire.UINT64_MAX


class ProducerError(Exception):
    pass


@dataclasses.dataclass
class ProducerStream:
    handle: int
    channel_name: str
    path_name: str
    next_net_seq_num: int = 0
    next_packet_seq_num: int = 0

    @property
    def last_net_seq_num(self) -> int:
        return (self.next_net_seq_num - 1) & UINT64_MAX


class RelaydProducer:
    """One control + data connection pair, as a consumer daemon holds per session.

    `minor` is the protocol minor announced in VERSION; after `connect` it is the negotiated
    one (the lower of it and the relay's), which selects every layout, and `relay_minor` is
    what the relay announced.
    """

    def __init__(self, host: str, control_port: int, data_port: int,
                 minor: int = wire.RELAYD_VERSION_MINOR, *, source: str | None = None) -> None:
        """`source`: the local address to connect from (e.g. 127.0.0.N to look like
        traced host N to a relay that tells hosts apart by address)."""
        self.host = host
        self.source = source
        self.control_port = control_port
        self.data_port = data_port
        self.minor = minor
        self.relay_minor: int | None = None
        self.session_id = 0
        self.output_path = ""
        self._control: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._data: asyncio.StreamWriter | None = None

    # ----------------------------------------------------------------- connections

    async def connect(self) -> None:
        local = None if self.source is None else (self.source, 0)
        self._control = await asyncio.open_connection(self.host, self.control_port,
                                                      local_addr=local)
        _, data_writer = await asyncio.open_connection(self.host, self.data_port,
                                                       local_addr=local)
        self._data = data_writer
        reply = await self.request(Command.VERSION, wire.Version(2, self.minor).encode(), 8)
        major, relay_minor = struct.unpack(">II", reply)
        if major != 2:
            raise ProducerError(f"relay speaks {major}.{relay_minor}")
        self.relay_minor = relay_minor
        self.minor = min(self.minor, relay_minor)

    async def close(self) -> None:
        for writer in (self._control[1] if self._control else None, self._data):
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
        self._control = None
        self._data = None

    async def request(self, command: Command, payload: bytes, reply_size: int | None) -> bytes:
        """Send one control request and read its fixed-size reply (None: no reply)."""
        if self._control is None:
            raise ProducerError("not connected")
        reader, writer = self._control
        writer.write(wire.encode_request(command, payload))
        await writer.drain()
        if reply_size is None:
            return b""
        return await reader.readexactly(reply_size)

    async def _read_variable(self, fixed: int, length_offset: int) -> bytes:
        assert self._control is not None
        reader = self._control[0]
        head = await reader.readexactly(fixed)
        (length,) = struct.unpack_from(">I", head, length_offset)
        return head + await reader.readexactly(length)

    # ----------------------------------------------------------------- session

    async def create_session(
        self,
        name: str,
        hostname: str = "pyrelayd-producer",
        *,
        base_path: str = "",
        live_timer: int = 0,
        snapshot: bool = False,
        sessiond_uuid: bytes | None = None,
        sessiond_session_id: int = 1,
        creation_time: int | None = None,
        trace_format: TraceFormat = TraceFormat.CTF_1_8,
    ) -> int:
        """CREATE_SESSION; the relay session id.

        The trace format is sent from protocol 2.15 on. Like a 2.15+ session daemon, this
        refuses a CTF 2 session over an older protocol (lttng reports error 172,
        "Trace format is not supported") instead of creating it as CTF 1.8.
        """
        if trace_format is not TraceFormat.CTF_1_8 and self.minor < 15:
            raise ProducerError(
                f"trace format {trace_format.label} needs protocol 2.15, "
                f"this connection uses 2.{self.minor}"
            )
        request = wire.CreateSession(
            session_name=name,
            hostname=hostname,
            base_path=base_path,
            live_timer=live_timer,
            snapshot=snapshot,
            sessiond_uuid=sessiond_uuid or uuid_module.uuid4().bytes,
            sessiond_session_id=sessiond_session_id,
            creation_time=creation_time if creation_time is not None else int(time.time()),
            trace_format=trace_format,
        )
        if self.minor >= 11:
            await self.request(Command.CREATE_SESSION, request.encode(self.minor), None)
            session_id, code, path = wire.decode_create_session_reply_2_11(
                await self._read_variable(16, 12)
            )
            self.output_path = path
        else:
            reply = await self.request(Command.CREATE_SESSION, request.encode(self.minor), 12)
            session_id, code = wire.decode_status_reply(reply)
        if code != ReturnCode.OK:
            raise ProducerError(f"CREATE_SESSION refused ({code})")
        self.session_id = session_id
        return session_id

    async def create_trace_chunk(self, chunk_id: int, override_name: str | None = None) -> None:
        payload = wire.CreateTraceChunk(chunk_id, int(time.time()), override_name).encode()
        await self._expect_ok(Command.CREATE_TRACE_CHUNK, payload)

    async def close_trace_chunk(self, chunk_id: int, command: wire.CloseCommand | None) -> str:
        payload = wire.CloseTraceChunk(chunk_id, int(time.time()), command).encode()
        await self.request(Command.CLOSE_TRACE_CHUNK, payload, None)
        raw = await self._read_variable(8, 4)
        code, length = struct.unpack_from(">II", raw)
        if code != ReturnCode.OK:
            raise ProducerError(f"CLOSE_TRACE_CHUNK refused ({code})")
        return raw[8 : 8 + length].split(b"\0", 1)[0].decode()

    async def add_stream(self, channel_name: str, path_name: str, *, tracefile_size: int = 0,
                         tracefile_count: int = 0) -> ProducerStream:
        payload = wire.AddStream(channel_name, path_name, tracefile_size, tracefile_count).encode(
            self.minor
        )
        handle, code = wire.decode_status_reply(
            await self.request(Command.ADD_STREAM, payload, 12)
        )
        if code != ReturnCode.OK:
            raise ProducerError(f"ADD_STREAM {channel_name} refused ({code})")
        return ProducerStream(handle, channel_name, path_name)

    async def streams_sent(self) -> None:
        await self._expect_ok(Command.STREAMS_SENT, b"")

    async def send_metadata(self, stream: ProducerStream, metadata: bytes,
                            padding: int = 0) -> None:
        header = wire.SendMetadataHeader(stream.handle, padding).encode()
        await self.request(Command.SEND_METADATA, header + metadata, None)

    async def send_packet(self, stream: ProducerStream, packet: bytes | memoryview,
                          padding: int = 0) -> int:
        """Write one packet on the data connection; returns its net_seq_num."""
        if self._data is None:
            raise ProducerError("not connected")
        seq = stream.next_net_seq_num
        stream.next_net_seq_num += 1
        header = wire.DataHeader(stream.handle, seq, len(packet), padding).encode()
        self._data.writelines((header, packet))
        await self._data.drain()
        return seq

    async def send_raw_data(self, raw: bytes) -> None:
        """Bytes as they are on the data connection (tests of malformed or hostile peers)."""
        if self._data is None:
            raise ProducerError("not connected")
        self._data.write(raw)
        await self._data.drain()

    async def send_index(self, stream: ProducerStream, net_seq_num: int, *, packet_size_bits: int,
                         content_size_bits: int, timestamp_begin: int, timestamp_end: int,
                         events_discarded: int = 0, ctf_stream_id: int = 0) -> None:
        index = wire.SendIndex(
            stream.handle, net_seq_num, packet_size_bits, content_size_bits, timestamp_begin,
            timestamp_end, events_discarded, ctf_stream_id, 0, stream.next_packet_seq_num,
        )
        stream.next_packet_seq_num += 1
        await self._expect_ok(Command.SEND_INDEX, index.encode(self.minor))

    async def close_stream(self, stream: ProducerStream) -> None:
        payload = wire.CloseStream(stream.handle, stream.last_net_seq_num).encode()
        await self._expect_ok(Command.CLOSE_STREAM, payload)

    async def data_pending(self, stream: ProducerStream) -> bool:
        payload = wire.DataPending(stream.handle, stream.last_net_seq_num).encode()
        return wire.decode_generic_reply(
            await self.request(Command.DATA_PENDING, payload, 4)) == 1

    async def _expect_ok(self, command: Command, payload: bytes) -> None:
        code = wire.decode_generic_reply(await self.request(command, payload, 4))
        if code != ReturnCode.OK:
            raise ProducerError(f"{command.name} refused ({code})")
