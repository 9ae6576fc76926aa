"""`RelaydProducer`, the consumerd side used by tests and benchmarks, against pyrelayd.

The relay runs in the test's event loop (control and data ports on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyrelayd.client.producer import ProducerError, RelaydProducer
from pyrelayd.model.relay import Relay
from pyrelayd.protocol.relayd import RELAYD_VERSION_MINOR, TraceFormat
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol

pytestmark = pytest.mark.usefixtures("utc")


@contextlib.asynccontextmanager
async def serving(relay: Relay) -> AsyncIterator[tuple[int, int]]:
    loop = asyncio.get_running_loop()
    connections: set[asyncio.BaseProtocol] = set()
    servers = [
        await loop.create_server(lambda: ControlProtocol(relay, connections), "127.0.0.1", 0),
        await loop.create_server(lambda: DataProtocol(relay, connections), "127.0.0.1", 0),
    ]
    try:
        yield servers[0].sockets[0].getsockname()[1], servers[1].sockets[0].getsockname()[1]
    finally:
        for server in servers:
            server.close()
        relay.shutdown()


async def test_the_producer_announces_2_15_by_default(relay: Relay) -> None:
    async with serving(relay) as (control, data):
        producer = RelaydProducer("127.0.0.1", control, data)
        await producer.connect()
        session_id = await producer.create_session("s", trace_format=TraceFormat.CTF_2)
        await producer.close()

    assert RELAYD_VERSION_MINOR == 15
    assert (producer.minor, producer.relay_minor) == (15, 15)
    assert session_id == 1


@pytest.mark.parametrize(("minor", "trace_format"), [
    (13, TraceFormat.CTF_1_8), (15, TraceFormat.CTF_1_8), (15, TraceFormat.CTF_2),
])
async def test_the_producer_speaks_the_minor_and_format_it_is_given(
        relay: Relay, output_root: Path, minor: int, trace_format: TraceFormat) -> None:
    async with serving(relay) as (control, data):
        producer = RelaydProducer("127.0.0.1", control, data, minor=minor)
        await producer.connect()
        await producer.create_session("s", "h", creation_time=1704164645,
                                      trace_format=trace_format)
        session = relay.sessions[producer.session_id]
        assert (session.minor, session.trace_format) == (minor, trace_format)
        await producer.create_trace_chunk(0)
        stream = await producer.add_stream("channel0_0", "ust/uid/0/64-bit")
        await producer.send_packet(stream, b"P" * 64)
        await producer.send_index(stream, 0, packet_size_bits=512, content_size_bits=512,
                                  timestamp_begin=1, timestamp_end=2)
        await producer.close()

    assert producer.output_path == "h/s-20240102-030405"
    assert (output_root / producer.output_path / "ust/uid/0/64-bit/channel0_0").read_bytes() \
        == b"P" * 64


async def test_ctf_2_needs_protocol_2_15(relay: Relay) -> None:
    async with serving(relay) as (control, data):
        producer = RelaydProducer("127.0.0.1", control, data, minor=13)
        await producer.connect()
        with pytest.raises(ProducerError, match=r"ctf-2 needs protocol 2\.15"):
            await producer.create_session("s", trace_format=TraceFormat.CTF_2)
        await producer.close()

    assert relay.sessions == {}
