"""Hostile ingest peers cost only their own connection.

While a real session streams through the relay, other peers send garbage, absurd lengths,
paths that climb out of the output root, packets for streams that are not theirs, and
connections cut in the middle of a message. The real session must end with every event on
disk, nothing may appear outside the output root, and the relay must keep serving.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest

from pyrelayd.client.producer import ProducerError, RelaydProducer
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.relayd import Command, ReturnCode

from .conftest import RelayFactory, SessionFactory
from .lttng_env import HOSTNAME, Relay, TracedApps, read_trace, sequence_numbers, wait_until

pytestmark = pytest.mark.lttng


def raw_exchange(port: int, payload: bytes, reply_size: int = 64) -> bytes:
    """Send bytes, return whatever comes back before the relay closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while len(received) < reply_size:
                chunk = sock.recv(reply_size - len(received))
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def version_request() -> bytes:
    return wire.encode_request(Command.VERSION, wire.Version(2, 13).encode())


def create_session_request(name: str, hostname: str, base_path: str = "") -> bytes:
    request = wire.CreateSession(
        session_name=name, hostname=hostname, base_path=base_path, live_timer=0,
        sessiond_uuid=uuid.uuid4().bytes, sessiond_session_id=7, creation_time=1_700_000_000,
    )
    return wire.encode_request(Command.CREATE_SESSION, request.encode(13))


async def hostile_peers(relay: Relay) -> list[str]:
    """Every attack; returns what each one got, for the assertion messages."""
    outcomes = []
    control, data = relay.control_port, relay.data_port
    loop = asyncio.get_running_loop()

    def run(label: str, port: int, payload: bytes) -> None:
        outcomes.append(f"{label}: {raw_exchange(port, payload)!r}")

    attacks = [
        ("garbage on control", control, b"\xff" * 4096),
        ("128 MiB + 1 payload announced", control,
         wire.ControlHeader(Command.VERSION, wire.MAX_CONTROL_PAYLOAD + 1).encode()),
        ("add stream before version", control,
         wire.encode_request(Command.ADD_STREAM, wire.AddStream("c", "ust").encode(13))),
        ("session climbing out of the root", control,
         version_request() + create_session_request("../../escape", "host")),
        ("hostname with a slash", control,
         version_request() + create_session_request("s", "a/b")),
        ("base path climbing out", control,
         version_request() + create_session_request("s", "evil", "../../../tmp/x")),
        ("cut in the middle of a header", control, version_request()[:30]),
        ("garbage on data", data, b"\x00" * 8 + b"\xff" * 100),
        ("data cut mid-header", data, b"\x00" * 20),
    ]
    for label, port, payload in attacks:
        await loop.run_in_executor(None, run, label, port, payload)

    # A well-formed session of our own that then sends a stream path climbing out.
    producer = RelaydProducer("127.0.0.1", control, data)
    await producer.connect()
    await producer.create_session("intruder", "evilhost")
    await producer.create_trace_chunk(0)
    with pytest.raises(ProducerError):
        await producer.add_stream("channel0_0", "../../../../outside")
    stream = await producer.add_stream("channel0_0", "ust/uid/0/64-bit")
    # Handles are global and the victim's streams were added first: every lower one is theirs.
    victim_stream_ids = range(1, stream.handle)
    # Once its data connection carried a packet of its own session, packets for the
    # victim's streams on it cost it that connection, and nothing reaches the victim.
    await producer.send_packet(stream, b"ok" * 32)
    for victim_stream in victim_stream_ids:
        header = wire.DataHeader(victim_stream, 0, 64, 0).encode()
        try:
            await producer.send_raw_data(header + b"X" * 64)
        except ConnectionError:
            break
    # The control side is refused too: a foreign stream is an unknown stream.
    code = wire.decode_generic_reply(await producer.request(
        Command.SEND_INDEX,
        wire.SendIndex(victim_stream_ids.start, 0, 512, 512, 0, 1, 0, 0).encode(13), 4))
    outcomes.append(f"SEND_INDEX for a foreign stream: {code}")
    assert code == ReturnCode.UNK
    await producer.close()
    return outcomes


def test_hostile_ingest_peers_leave_a_real_session_untouched(
    relay_factory: RelayFactory, session_factory: SessionFactory, apps: TracedApps,
    tmp_path: Path,
) -> None:
    relay = relay_factory(kind="py")
    session = session_factory(relay)
    session.enable_events()
    session.start()
    running = apps.start_c_app(2000, delay_us=200)
    # The per-UID buffers (and so the victim's streams) exist once the app has registered.
    wait_until(lambda: list((relay.output_dir / HOSTNAME).rglob("metadata")), timeout=30,
               what="the victim's streams")
    outcomes = asyncio.run(hostile_peers(relay))
    apps.finish(running)
    session.destroy()

    assert relay.is_running(), "\n".join(outcomes)
    victim = relay.output_dir / HOSTNAME
    assert sequence_numbers(read_trace(victim)) == list(range(2000)), "\n".join(outcomes)
    outside = [p for p in relay.output_dir.parent.rglob("*")
               if "escape" in p.name or "outside" in p.name or p.name == "x"]
    assert outside == [], outside
    assert not (Path("/tmp") / "x").exists()

    # The relay still takes new sessions.
    second = session_factory(relay)
    second.enable_events()
    second.start()
    apps.run_c_app(10, first_seq=5000)
    second.destroy()
    events = sequence_numbers(read_trace(relay.output_dir / HOSTNAME))
    assert sorted(events) == list(range(2000)) + list(range(5000, 5010))
