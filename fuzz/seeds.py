"""Write the seed corpus of every fuzz target into fuzz/corpus/TARGET/.

    python fuzz/seeds.py [RECORDING.capture ...] [--index-dir DIR ...]

Seeds come from real traffic: `pyrelayd-capture` recordings of real session daemons (LTTng
2.13 and 2.16, CTF 1.8 and CTF 2) give control requests, data-port bytes and whole control
conversations; index files written by a relay give index seeds; viewer messages are encoded
with the codec from the values a live session produces. Each seed is laid out as its target
reads its input (see targets.py). The corpus in the repository was made from the recordings of
the differential tests (tests/integration/test_differential.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import targets

from pyrelayd.capture.framing import ControlRequestFramer
from pyrelayd.capture.recording import Direction, Event, Kind, read_recording
from pyrelayd.protocol import relayd, viewer

CORPUS = Path(__file__).resolve().parent / "corpus"
PER_COMMAND = 3  # seeds kept per (command, minor): enough for coverage, small corpus
MAX_SEED = 2048


def _framed(data: bytes) -> bytes:
    """`data` laid out as the framing targets read it: pieces of up to 64 bytes."""
    out = bytearray()
    for start in range(0, len(data), 64):
        piece = data[start : start + 64]
        out += bytes([len(piece) - 1]) + piece
    return bytes(out)


def _selector(value: int, choices: tuple[int, ...]) -> int:
    return choices.index(value) if value in choices else 0


def from_recording(path: Path, seeds: dict[str, list[bytes]]) -> None:
    records = read_recording(path)
    streams: dict[tuple[int, Kind], bytearray] = defaultdict(bytearray)
    for record in records:
        if record.event == Event.BYTES and record.direction == Direction.TO_RELAY:
            streams[(record.connection, record.kind)] += record.data
    kept: dict[tuple[int, int], int] = defaultdict(int)
    for (_connection, kind), data in streams.items():
        if kind == Kind.DATA:
            seeds["data_framing"].append(_framed(bytes(data[:MAX_SEED])))
            continue
        seeds["control_framing"].append(_framed(bytes(data[:MAX_SEED])))
        requests = ControlRequestFramer().feed(bytes(data))
        minor = 0
        conversation = bytearray()
        for request in requests:
            if request.command == relayd.Command.VERSION:
                minor = min(relayd.Version.decode(request.payload).minor,
                            relayd.RELAYD_VERSION_MINOR)
                conversation += bytes([_selector(minor, targets.RELAYD_MINORS)])
                continue
            if request.command in relayd.REQUEST_TYPES and len(request.payload) < 512:
                key = (request.command, minor)
                if kept[key] < PER_COMMAND:
                    kept[key] += 1
                    seeds["relayd_request"].append(
                        bytes([request.command - 1, _selector(minor, targets.RELAYD_MINORS)])
                        + request.payload
                    )
            if conversation and len(conversation) < MAX_SEED and len(request.payload) < 512:
                conversation += bytes([request.command]) + len(request.payload).to_bytes(2, "big")
                conversation += request.payload
        if conversation:
            seeds["control_handler"].append(bytes(conversation))
    raw = path.read_bytes()
    seeds["recording"].append(raw[:MAX_SEED])


def from_index_files(directory: Path, seeds: dict[str, list[bytes]]) -> None:
    for index in sorted(directory.rglob("*.idx"))[:8]:
        seeds["index_file"].append(index.read_bytes()[:MAX_SEED])


def viewer_seeds(seeds: dict[str, list[bytes]]) -> None:
    """What a live session's viewer sends and receives, encoded by the codec."""
    requests: list[viewer.Request] = [
        viewer.Connect(viewer_session_id=2**64 - 1, major=2, minor=15),
        viewer.ListSessions(),
        viewer.CreateSession(),
        viewer.AttachSession(1, viewer.Seek.BEGINNING),
        viewer.GetNewStreams(1),
        viewer.GetNextIndex(3),
        viewer.GetPacket(3, 4096, 4096),
        viewer.GetMetadata(2),
        viewer.DetachSession(1),
    ]
    for request in requests:
        encoded = viewer.encode_request(request)
        seeds["viewer_request"].append(
            bytes([request.COMMAND]) + encoded[viewer.CommandHeader.FORMAT.size :]
        )
    fmt = viewer.TraceFormat
    sessions = (
        viewer.SessionInfo(1, 100_000, 1, 3, "host", "ctf-1-8", fmt.CTF_1_8),
        viewer.SessionInfo(2, 100_000, 0, 5, "host", "ctf-2", fmt.CTF_2),
    )
    stream = viewer.StreamInfo(3, 1, False, "ust/uid/0/64-bit", "channel0_0")
    metadata = viewer.StreamInfo(2, 1, True, "ust/uid/0/64-bit", "metadata")
    replies: list[tuple[object, int]] = [
        (viewer.Connect(1, 2, 15, 0), 15),
        (viewer.SessionList(sessions[:1]), 4),
        (viewer.SessionList(sessions), 15),
        (viewer.AttachSessionReply(viewer.AttachStatus.OK, (metadata, stream)), 15),
        (viewer.NewStreamsReply(viewer.NewStreamsStatus.OK, (stream,)), 15),
        (viewer.IndexReply(viewer.IndexStatus.OK, viewer.NO_FLAGS, 0, 32768, 32000, 1, 2),
         15),
        (viewer.PacketReply(viewer.PacketStatus.OK, b"\xc1\xfc\x1f\xc1" * 8), 15),
        (viewer.MetadataReply(viewer.MetadataStatus.OK, b"/* CTF 1.8 */\ntrace {};\n"), 13),
        (viewer.CreateSessionReply(viewer.CreateSessionStatus.OK), 15),
        (viewer.DetachSessionReply(viewer.DetachStatus.OK), 15),
    ]
    # The --workers router: requests, then each worker's reply to each (LIST_SESSIONS: two).
    for workers in (1, 2):
        stream_data = b"".join(viewer.encode_request(r) for r in (
            viewer.Connect(minor=15), viewer.CreateSession(), viewer.ListSessions(),
            viewer.AttachSession(1, viewer.Seek.BEGINNING), viewer.GetNextIndex(3),
            viewer.GetPacket(3, 0, 32)))
        answers = [viewer.Connect(1, 2, 15, 0).encode()] * workers
        answers += [viewer.CreateSessionReply(viewer.CreateSessionStatus.OK).encode()] * workers
        answers += [viewer.SessionList(sessions[n % 2 : n % 2 + 1]).encode(15)
                    for n in range(workers)]
        answers += [
            viewer.AttachSessionReply(viewer.AttachStatus.OK, (metadata, stream)).encode(),
            viewer.IndexReply(viewer.IndexStatus.OK, viewer.NO_FLAGS, 0, 256, 256, 1, 2).encode(),
            viewer.PacketReply(viewer.PacketStatus.OK, bytes(32)).encode(),
        ]
        seeds["live_router"].append(bytes([workers - 1]) + stream_data.ljust(2047, b"\0")
                                    + b"".join(answers))
    for reply, minor in replies:
        kind = type(reply)
        index = targets._VIEWER_REPLIES.index(kind)
        encoded = reply.encode(minor)  # type: ignore[attr-defined]
        seeds["viewer_reply"].append(
            bytes([index, _selector(minor, targets.VIEWER_MINORS)]) + encoded
        )


URIS = (
    "tcp://0.0.0.0:5342", "tcp://localhost:5344", "tcp6://[::1]:5343", "net://relay.example",
    "net://127.0.0.1:6000:6001/base/path", "file:///tmp/traces", "tcp://127.0.0.1:0",
    "net6://[fe80::1]:5342", "tcp://0.0.0.0", "tcp://127.0.0.1:9464",
)  # fmt: skip


def write(seeds: dict[str, list[bytes]]) -> None:
    for target, inputs in seeds.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            name = hashlib.sha1(data).hexdigest()
            (directory / name).write_bytes(data)
        print(f"{target}: {len(list(directory.iterdir()))} seeds")


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recordings", nargs="*", type=Path)
    parser.add_argument("--index-dir", action="append", type=Path, default=[])
    args = parser.parse_args(list(argv) if argv is not None else None)
    seeds: dict[str, list[bytes]] = defaultdict(list)
    for recording in args.recordings:
        from_recording(recording, seeds)
    for directory in args.index_dir:
        from_index_files(directory, seeds)
    viewer_seeds(seeds)
    seeds["uri"].extend(uri.encode() for uri in URIS)
    write(seeds)


if __name__ == "__main__":
    main()
