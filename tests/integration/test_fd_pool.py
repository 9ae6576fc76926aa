"""Many more streams than the process may open files: the fd pool keeps every byte."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from pathlib import Path

from pyrelayd.client.producer import RelaydProducer
from pyrelayd.protocol.index import read_index_file
from tests.integration.lttng_env import (
    free_tcp_ports,
    listening_tcp_ports,
    release_tcp_ports,
    wait_until,
)

STREAMS = 600  # data + index file each: 1200 files
FD_LIMIT = 256


def start_pyrelayd(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], list[int]]:
    ports = free_tcp_ports(3)

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    with open(tmp_path / "relayd.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pyrelayd", "-C", f"tcp://127.0.0.1:{ports[0]}",
             "-D", f"tcp://127.0.0.1:{ports[1]}", "-L", f"tcp://127.0.0.1:{ports[2]}",
             "-o", str(tmp_path / "out"), *extra],
            preexec_fn=limit_descriptors, stdout=log, stderr=subprocess.STDOUT,
        )
    return process, ports


async def stream_everything(control: int, data: int) -> list[tuple[str, bytes]]:
    producer = RelaydProducer("127.0.0.1", control, data)
    await producer.connect()
    await producer.create_session("many", "fdhost", live_timer=0)
    await producer.create_trace_chunk(0)
    streams = [await producer.add_stream(f"channel0_{i}", "ust/uid/0/64-bit")
               for i in range(STREAMS)]
    metadata = await producer.add_stream("metadata", "ust/uid/0/64-bit")
    await producer.streams_sent()
    await producer.send_metadata(metadata, b"/* CTF 1.8 */")
    sent = []
    for round_number in range(3):
        for i, stream in enumerate(streams):
            packet = bytes([i % 251]) * 64 + round_number.to_bytes(4, "big") * 16
            seq = await producer.send_packet(stream, packet)
            await producer.send_index(stream, seq, packet_size_bits=len(packet) * 8,
                                      content_size_bits=len(packet) * 8,
                                      timestamp_begin=seq, timestamp_end=seq + 1)
            sent.append((stream.channel_name, packet))
    for stream in streams:
        await producer.close_stream(stream)
    await producer.close()
    return sent


def test_streams_beyond_the_descriptor_limit_keep_every_byte(tmp_path: Path) -> None:
    relay, ports = start_pyrelayd(tmp_path, "--fd-pool-size", "200")
    try:
        wait_until(lambda: set(ports[:2]) <= listening_tcp_ports() or relay.poll() is not None,
                   timeout=20, what="pyrelayd to listen")
        assert relay.poll() is None, (tmp_path / "relayd.log").read_text()
        sent = asyncio.run(stream_everything(ports[0], ports[1]))
        open_fds = len(os.listdir(f"/proc/{relay.pid}/fd"))
        assert open_fds <= 200
    finally:
        relay.terminate()
        relay.wait(20)
        release_tcp_ports(ports)
    trace = next((tmp_path / "out" / "fdhost").iterdir()) / "ust/uid/0/64-bit"
    expected: dict[str, bytes] = {}
    for channel, packet in sent:
        expected[channel] = expected.get(channel, b"") + packet
    for channel, content in expected.items():
        assert (trace / channel).read_bytes() == content
        _, records = read_index_file((trace / "index" / f"{channel}.idx").read_bytes())
        assert [record.offset for record in records] == [0, 128, 256]
