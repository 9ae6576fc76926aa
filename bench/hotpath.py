"""The relay's Python side of each producer pattern, replayed in process: no sockets, no loop.

    python bench/hotpath.py consumerd --size 4096 --packets 40000
    python bench/hotpath.py sessions --sessions 300

A `ControlProtocol` and a `DataProtocol` over fake transports are fed the bytes each pattern
of `bench/producers.py` sends, read by read as the event loop would deliver them (`consumerd`:
the header, the payload and the SEND_INDEX as three reads; `pipelined`: 256 KiB of one
stream's packets, then their SEND_INDEX; `batch`: 256 packets, then their 256 SEND_INDEX;
`sessions`: whole sessions, from VERSION to the connections' loss). The files are written to
tmpfs as the relay would. It prints the process CPU time per packet (per session for
`sessions`): the cost of pyrelayd's Python code and of its file writes, without the socket
and scheduling costs that make the end-to-end figures noisy on a shared machine. Use it to
compare two versions of the code (`PYTHONPATH=other/src`): run each several times, in turn.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # as a script: make `pyrelayd_testkit` importable
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.relayd import Command
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from pyrelayd_testkit.fakes import FakeTransport

STREAMS = 4
STREAM_PATH = "ust/uid/0/64-bit"
SEND_INDEX_REQUEST = struct.Struct(">QQII10Q")
BATCH_BYTES = 256 * 1024
BATCH_PACKETS = 256


class Connections:
    """One session's control and data connections, fed as the event loop feeds them."""

    def __init__(self, relay: Relay, name: str) -> None:
        self.control_transport = FakeTransport()
        self.control = ControlProtocol(relay, set())
        self.control.connection_made(self.control_transport)
        self.request(Command.VERSION, wire.Version(2, 13).encode())
        self.request(Command.CREATE_SESSION, wire.CreateSession(
            session_name=name, hostname="bench-producer", sessiond_uuid=uuid.uuid4().bytes,
            sessiond_session_id=1, creation_time=int(time.time())).encode(13))
        self.request(Command.CREATE_TRACE_CHUNK,
                     wire.CreateTraceChunk(0, int(time.time())).encode())
        self.metadata = self._add_stream("metadata")
        self.streams = [self._add_stream(f"channel0_{n}") for n in range(STREAMS)]
        self.request(Command.STREAMS_SENT, b"")
        metadata = b"/* CTF 1.8 */\n" + bytes(100)
        self.control.data_received(
            wire.ControlHeader(Command.SEND_METADATA, 12 + len(metadata)).encode()
            + struct.pack(">QI", self.metadata, 0) + metadata)
        self.data = DataProtocol(relay, set())
        self.data.connection_made(FakeTransport())
        self.next_seq = dict.fromkeys(self.streams, 0)

    def request(self, command: Command, payload: bytes) -> None:
        self.control.data_received(wire.encode_request(command, payload))

    def _add_stream(self, channel_name: str) -> int:
        before = len(self.control_transport.written)
        self.request(Command.ADD_STREAM, wire.AddStream(channel_name, STREAM_PATH).encode(13))
        handle: int = struct.unpack_from(">Q", self.control_transport.written, before)[0]
        return handle

    def receive_data(self, raw: bytes | memoryview) -> None:
        view = memoryview(raw)
        while view:
            buffer = self.data.get_buffer(-1)
            count = min(len(buffer), len(view))
            buffer[:count] = view[:count]
            self.data.buffer_updated(count)
            view = view[count:]

    def packet(self, stream: int, size: int) -> tuple[bytes, bytes]:
        """The data header and the SEND_INDEX request of the stream's next packet."""
        seq = self.next_seq[stream]
        self.next_seq[stream] = seq + 1
        bits = size * 8
        return (wire.DATA_HEADER.pack(0, stream, seq, size, 0),
                SEND_INDEX_REQUEST.pack(0, 80, Command.SEND_INDEX, 0, stream, seq, bits, bits,
                                        seq * 1000, seq * 1000 + 999, 0, 0, wire.UINT64_MAX,
                                        seq))

    def close(self) -> None:
        for stream in [*self.streams, self.metadata]:
            last = self.next_seq.get(stream, 0) - 1
            self.request(Command.CLOSE_STREAM,
                         wire.CloseStream(stream, last & wire.UINT64_MAX).encode())
        self.control.connection_lost(None)
        self.data.connection_lost(None)


def _reads(pattern: str, connections: Connections, size: int,
           packets: int) -> Iterator[tuple[str, bytes]]:
    """("data" | "control", bytes of one read), as the pattern's producer sends them."""
    payload = bytes(size)
    streams = connections.streams
    if pattern == "consumerd":
        for number in range(packets):
            header, index = connections.packet(streams[number % STREAMS], size)
            yield from (("data", header), ("data", payload), ("control", index))
    elif pattern == "pipelined":
        per_batch = max(1, BATCH_BYTES // size)
        for first in range(0, packets, per_batch):
            stream = streams[(first // per_batch) % STREAMS]
            pairs = [connections.packet(stream, size)
                     for _ in range(min(per_batch, packets - first))]
            yield "data", b"".join(header + payload for header, _ in pairs)
            yield "control", b"".join(index for _, index in pairs)
    elif pattern == "batch":
        for first in range(0, packets, BATCH_PACKETS):
            pairs = [connections.packet(streams[(first + n) % STREAMS], size)
                     for n in range(min(BATCH_PACKETS, packets - first))]
            yield "data", b"".join(header + payload for header, _ in pairs)
            yield "control", b"".join(index for _, index in pairs)
    else:
        raise ValueError(f"unknown pattern {pattern}")


def replay_packets(relay: Relay, pattern: str, size: int, packets: int) -> float:
    """CPU seconds to ingest `packets` packets of one session (the input built beforehand)."""
    connections = Connections(relay, pattern)
    reads = list(_reads(pattern, connections, size, packets))
    start = time.process_time()
    for side, raw in reads:
        if side == "data":
            connections.receive_data(raw)
        else:
            connections.control.data_received(raw)
    elapsed = time.process_time() - start
    connections.close()
    return elapsed


def replay_sessions(relay: Relay, sessions: int, size: int, packets_per_stream: int) -> float:
    """CPU seconds for whole sessions: open, `packets_per_stream` as lttng-consumerd, close."""
    payload = bytes(size)
    start = time.process_time()
    for number in range(sessions):
        connections = Connections(relay, f"session-{number}")
        for _ in range(packets_per_stream):
            for stream in connections.streams:
                header, index = connections.packet(stream, size)
                connections.receive_data(header + payload)
                connections.control.data_received(index)
        for stream in connections.streams:
            last = connections.next_seq[stream] - 1
            connections.request(Command.DATA_PENDING, wire.DataPending(stream, last).encode())
        connections.close()
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("pattern", choices=("consumerd", "pipelined", "batch", "sessions"))
    parser.add_argument("--size", type=int, default=4096, help="packet size (default 4096)")
    parser.add_argument("--packets", type=int, default=40000)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--output", type=Path, default=Path("/dev/shm"),
                        help="where the relay's files go (default: /dev/shm)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-hotpath-", dir=args.output))
    try:
        relay = Relay(RelaySettings(output_root=base))
        if args.pattern == "sessions":
            cpu = replay_sessions(relay, args.sessions, args.size, 4)
            print(f"sessions {args.size}: {cpu / args.sessions * 1e3:.3f} ms CPU per session "
                  f"({STREAMS} streams x 4 packets)")
        else:
            cpu = replay_packets(relay, args.pattern, args.size, args.packets)
            print(f"{args.pattern} {args.size}: {cpu / args.packets * 1e6:.2f} us CPU per packet")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
