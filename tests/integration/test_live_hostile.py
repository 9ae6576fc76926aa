"""Hostile viewers on the live port, while a real LTTng 2.13 session is recorded.

Each test misbehaves on raw sockets (commands out of order, bad versions, unknown commands
and ids, out-of-range reads, truncated requests, a viewer that stops reading) and checks the
relay's exact answer (or its silent close). Then, every time, a well-behaved babeltrace2 viewer
attaches and sees the events emitted afterwards, and the session's ingest is complete on disk:
one misbehaving viewer must never disturb the relay, the other viewers or the producers.

Runs against pyrelayd unless PYRELAYD_TEST_RELAY=c (or "both"); checks of pyrelayd-only
improvements are skipped on the C relay, with the reason.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterator

import pytest

from pyrelayd.client.viewer import Seek
from pyrelayd.protocol.viewer import (
    AttachSession,
    AttachSessionReply,
    AttachStatus,
    CommandHeader,
    Connect,
    CreateSession,
    CreateSessionReply,
    CreateSessionStatus,
    DetachSession,
    DetachSessionReply,
    DetachStatus,
    GetMetadata,
    GetNewStreams,
    GetNextIndex,
    GetPacket,
    IndexReply,
    IndexStatus,
    ListSessions,
    MetadataReply,
    MetadataStatus,
    NewStreamsReply,
    NewStreamsStatus,
    PacketReply,
    PacketStatus,
    SessionList,
    StreamInfo,
    encode_request,
)

from .conftest import LiveViewerFactory, SessionFactory
from .live_helpers import (
    RawViewer,
    assert_viewer_ended_cleanly,
    indexed_packets,
    live_session_ids,
    session_output,
    start_pinned_app,
    wait_clients,
)
from .lttng_env import (
    Relay,
    RelayKind,
    Session,
    TracedApps,
    possible_cpus,
    read_trace,
    sequence_numbers,
    wait_until,
)

pytestmark = [pytest.mark.lttng, pytest.mark.timeout(120)]

LIVE_TIMER_US = 100_000
CPUS = possible_cpus()
BUSY_CPU = CPUS[0]
BUSY_STREAM = f"channel0_{BUSY_CPU}"
UNKNOWN_ID = 1 << 40
LTTNG_ERR_UNK = 11


@dataclasses.dataclass
class LiveSetup:
    """A live session being recorded, with packets already on the relay."""

    relay: Relay
    session: Session
    session_id: int
    events_before: list[int]


def emit_on_every_cpu(apps: TracedApps, first_seq: int, per_cpu: int = 5) -> list[int]:
    seq = first_seq
    for cpu in CPUS:
        apps.run_c_app(per_cpu, cpu=cpu, first_seq=seq)
        seq += per_cpu
    return list(range(first_seq, seq))


@pytest.fixture
def live(relay: Relay, session_factory: SessionFactory, apps: TracedApps) -> LiveSetup:
    session = session_factory(relay, live_timer_us=LIVE_TIMER_US)
    # Big sub-buffers, so a viewer can ask for 256 KiB packets.
    session.enable_channel(subbuf_size=256 * 1024, num_subbuf=4)
    session.enable_events()
    session.start()
    events = emit_on_every_cpu(apps, 0)
    app = start_pinned_app(apps, 300, cpu=BUSY_CPU, payload_bytes=2000, first_seq=100)
    apps.finish(app)
    events += list(range(100, 400))
    wait_until(
        lambda: indexed_packets(relay, session, BUSY_STREAM) >= 3,
        timeout=20,
        what="packets on the relay",
    )
    relay.wait_live_port()
    [session_id] = live_session_ids(relay, session.name)
    return LiveSetup(relay, session, session_id, events)


def all_is_still_well(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory
) -> None:
    """A babeltrace2 viewer attaches and sees what comes next; the ingest lost nothing."""
    relay, session = live.relay, live.session
    assert relay.is_running(), "the relay died"
    viewer = live_viewer_factory(relay, session.name)
    viewer.wait_attached(relay, session.name)
    later = emit_on_every_cpu(apps, 1000)
    session.destroy()
    seen = assert_viewer_ended_cleanly(viewer)
    # babeltrace2 attaches at the last packet of each stream: on a loaded machine the last
    # packets of the earlier events may still be in flight and come first. Everything after
    # them must be there, in order.
    assert seen[len(seen) - len(later):] == later, seen
    earlier = seen[: len(seen) - len(later)]
    assert all(seq in live.events_before for seq in earlier), earlier
    assert sequence_numbers(read_trace(relay.output_dir)) == live.events_before + later


def connected(relay: Relay) -> RawViewer:
    viewer = RawViewer(relay.live_port)
    viewer.connect()
    return viewer


def attached(relay: Relay, session_id: int) -> tuple[RawViewer, list[StreamInfo]]:
    viewer = connected(relay)
    assert viewer.call(CreateSession(), CreateSessionReply).status == CreateSessionStatus.OK
    reply = viewer.call(AttachSession(session_id, Seek.BEGINNING), AttachSessionReply)
    assert reply.status == AttachStatus.OK
    return viewer, list(reply.streams)


def stream_named(streams: list[StreamInfo], channel_name: str) -> StreamInfo:
    return next(s for s in streams if s.channel_name == channel_name)


def next_index_ok(viewer: RawViewer, stream: StreamInfo) -> IndexReply:
    reply = viewer.call(GetNextIndex(stream.id), IndexReply)
    assert reply.status == IndexStatus.OK, reply
    return reply


def still_answers(viewer: RawViewer, session_name: str) -> None:
    """The connection is in sync: a LIST_SESSIONS reply decodes exactly."""
    listed = viewer.call(ListSessions(), SessionList)
    assert session_name in {s.session_name for s in listed.sessions}


@pytest.fixture
def closing() -> Iterator[list[RawViewer]]:
    """Raw viewers to reset at teardown, whatever happened."""
    viewers: list[RawViewer] = []
    yield viewers
    for viewer in viewers:
        viewer.reset()


# --------------------------------------------------------------------------------------------
# Handshake


def test_commands_before_connect_close_the_connection_without_reply(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory
) -> None:
    for request in (
        ListSessions(),
        CreateSession(),
        AttachSession(live.session_id),
        GetNextIndex(1),
    ):
        with RawViewer(live.relay.live_port) as viewer:
            viewer.send(encode_request(request))
            assert viewer.read_until_closed() == b"", type(request).__name__
    all_is_still_well(live, apps, live_viewer_factory)


@pytest.mark.parametrize(
    ("major", "connection_type"),
    [(3, 1), (1, 1), (0, 1), (2, 3), (2, 0)],
    ids=["major-3", "major-1", "major-0", "type-3", "type-0"],
)
def test_connect_with_a_bad_version_or_type_closes_without_reply(
    live: LiveSetup,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
    major: int,
    connection_type: int,
) -> None:
    with RawViewer(live.relay.live_port) as viewer:
        viewer.send(encode_request(Connect(major=major, connection_type=connection_type)))
        assert viewer.read_until_closed() == b""
    all_is_still_well(live, apps, live_viewer_factory)


@pytest.mark.parametrize("command", [0, 10, 42, 0xFFFF_FFFF])
def test_unknown_command_gets_lttng_err_unk_then_close(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory, command: int
) -> None:
    with connected(live.relay) as viewer:
        viewer.send(CommandHeader(command, 8).encode() + bytes(8))
        assert viewer.read_until_closed() == struct.pack(">I", LTTNG_ERR_UNK)
    all_is_still_well(live, apps, live_viewer_factory)


# --------------------------------------------------------------------------------------------
# Unknown ids, out-of-range reads


def test_unknown_stream_and_session_ids_get_error_replies(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory
) -> None:
    with connected(live.relay) as viewer:
        assert (
            viewer.call(AttachSession(live.session_id), AttachSessionReply).status
            == AttachStatus.NO_SESSION
        )  # no CREATE_SESSION yet
        assert viewer.call(CreateSession(), CreateSessionReply).status == CreateSessionStatus.OK
        assert viewer.call(AttachSession(UNKNOWN_ID), AttachSessionReply) == AttachSessionReply(
            AttachStatus.UNK
        )
        assert viewer.call(GetNextIndex(UNKNOWN_ID), IndexReply) == IndexReply(IndexStatus.ERR)
        assert viewer.call(GetPacket(UNKNOWN_ID, 0, 4096), PacketReply) == PacketReply(
            PacketStatus.ERR
        )
        assert viewer.call(GetMetadata(UNKNOWN_ID), MetadataReply) == MetadataReply(
            MetadataStatus.ERR
        )
        assert viewer.call(GetNewStreams(UNKNOWN_ID), NewStreamsReply) == NewStreamsReply(
            NewStreamsStatus.ERR
        )
        assert viewer.call(DetachSession(UNKNOWN_ID), DetachSessionReply) == DetachSessionReply(
            DetachStatus.UNK
        )
        # A header announcing a huge payload: relays read the command's fixed size only.
        viewer.send(CommandHeader(ListSessions.COMMAND, 1 << 62).encode())
        assert live.session.name in {s.session_name for s in viewer.receive(SessionList).sessions}
        still_answers(viewer, live.session.name)
    all_is_still_well(live, apps, live_viewer_factory)


def test_get_packet_beyond_the_file_or_too_long_is_an_error_without_payload(
    relay_kind: RelayKind,
    live: LiveSetup,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    viewer, streams = attached(live.relay, live.session_id)
    with viewer:
        busy = stream_named(streams, BUSY_STREAM)
        index = next_index_ok(viewer, busy)
        data_file = session_output(live.relay, live.session)
        assert data_file is not None
        size = next(data_file.rglob(f"64-bit/{BUSY_STREAM}")).stat().st_size
        requests = [(1 << 40, 4096), (size, 1), (size - 10, 4096), (1 << 63, 0xFFFF_FFFF)]
        if relay_kind == "py":
            # lttng-relayd 2.13 answers ERR to this one, then aborts (SIGABRT): the guard on
            # `len` came with lttng-tools 2.16.
            requests.append((index.offset, 0xFFFF_FFFF))
        for offset, length in requests:
            # Each reply must be the 12-byte header alone: a LIST_SESSIONS right after it
            # decodes exactly only if nothing else was sent.
            reply = viewer.call(GetPacket(busy.id, offset, length), PacketReply)
            assert reply == PacketReply(PacketStatus.ERR), (offset, length)
            still_answers(viewer, live.session.name)
        # The stream is still readable on this connection.
        reply = viewer.call(GetPacket(busy.id, index.offset, index.packet_size // 8), PacketReply)
        assert reply.status == PacketStatus.OK and len(reply.data) == index.packet_size // 8
        assert (
            viewer.call(DetachSession(live.session_id), DetachSessionReply).status
            == DetachStatus.OK
        )
    wait_clients(live.relay, live.session.name, 0)
    all_is_still_well(live, apps, live_viewer_factory)


def test_streams_of_a_session_the_viewer_did_not_attach_are_refused(
    relay_kind: RelayKind,
    live: LiveSetup,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    if relay_kind == "c":
        pytest.skip(
            "lttng-relayd 2.13 serves any viewer stream to any connection (the check "
            "that the session is attached came with lttng-tools 2.16); pyrelayd checks"
        )
    owner, streams = attached(live.relay, live.session_id)
    with owner, connected(live.relay) as stranger:
        assert stranger.call(CreateSession(), CreateSessionReply).status == CreateSessionStatus.OK
        busy = stream_named(streams, BUSY_STREAM)
        [metadata] = [s for s in streams if s.is_metadata]
        assert stranger.call(GetNextIndex(busy.id), IndexReply) == IndexReply(IndexStatus.ERR)
        assert stranger.call(GetPacket(busy.id, 0, 4096), PacketReply) == PacketReply(
            PacketStatus.ERR
        )
        assert stranger.call(GetMetadata(metadata.id), MetadataReply) == MetadataReply(
            MetadataStatus.ERR
        )
        assert stranger.call(GetNewStreams(live.session_id), NewStreamsReply) == NewStreamsReply(
            NewStreamsStatus.ERR
        )
        assert stranger.call(
            DetachSession(live.session_id), DetachSessionReply
        ) == DetachSessionReply(DetachStatus.ERR)
        # The owner is not affected by the stranger's attempts.
        next_index_ok(owner, busy)
        metadata_reply = owner.call(GetMetadata(metadata.id), MetadataReply)
        assert metadata_reply.status == MetadataStatus.OK and metadata_reply.data
    all_is_still_well(live, apps, live_viewer_factory)


def test_attach_with_a_bad_seek_is_refused(
    relay_kind: RelayKind,
    live: LiveSetup,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    with connected(live.relay) as viewer:
        assert viewer.call(CreateSession(), CreateSessionReply).status == CreateSessionStatus.OK
        for attempt, seek in enumerate((0, 3, 0xFFFF_FFFF)):
            reply = viewer.call(AttachSession(live.session_id, seek), AttachSessionReply)
            if relay_kind == "c" and live.relay.sandbox is None and attempt > 0:
                # lttng-relayd 2.13 checks the seek only after attaching: the first bad seek
                # leaves the session attached, so the next attaches get ALREADY (fixed in
                # 2.14.1: 2.16 refuses the seek first, as pyrelayd does).
                assert reply == AttachSessionReply(AttachStatus.ALREADY)
            else:
                assert reply == AttachSessionReply(AttachStatus.SEEK_ERR), seek
        if relay_kind == "py" or live.relay.sandbox is not None:
            # Nothing was attached: a good seek now works on the same connection.
            reply = viewer.call(AttachSession(live.session_id, Seek.BEGINNING), AttachSessionReply)
            assert reply.status == AttachStatus.OK and reply.streams
    wait_clients(live.relay, live.session.name, 0)  # closing the connection detaches
    all_is_still_well(live, apps, live_viewer_factory)


def test_detach_of_a_session_not_attached(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory
) -> None:
    with connected(live.relay) as viewer:
        assert viewer.call(
            DetachSession(live.session_id), DetachSessionReply
        ) == DetachSessionReply(DetachStatus.ERR)  # no viewer session
        assert viewer.call(CreateSession(), CreateSessionReply).status == CreateSessionStatus.OK
        assert viewer.call(DetachSession(UNKNOWN_ID), DetachSessionReply) == DetachSessionReply(
            DetachStatus.UNK
        )
        assert viewer.call(
            DetachSession(live.session_id), DetachSessionReply
        ) == DetachSessionReply(DetachStatus.ERR)  # known, not attached
        still_answers(viewer, live.session.name)
    all_is_still_well(live, apps, live_viewer_factory)


def test_get_next_index_on_the_metadata_stream_is_hup(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory
) -> None:
    viewer, streams = attached(live.relay, live.session_id)
    with viewer:
        [metadata] = [s for s in streams if s.is_metadata]
        assert viewer.call(GetNextIndex(metadata.id), IndexReply).status == IndexStatus.HUP
        busy = stream_named(streams, BUSY_STREAM)
        assert viewer.call(GetMetadata(busy.id), MetadataReply) == MetadataReply(
            MetadataStatus.ERR
        )  # not a metadata stream
        reply = viewer.call(GetMetadata(metadata.id), MetadataReply)
        assert reply.status == MetadataStatus.OK and reply.data  # metadata still readable
        next_index_ok(viewer, busy)
    wait_clients(live.relay, live.session.name, 0)
    all_is_still_well(live, apps, live_viewer_factory)


# --------------------------------------------------------------------------------------------
# Broken and stuck connections


@pytest.mark.parametrize("cut", ["inside-header", "inside-payload", "after-connect-header"])
def test_truncated_request_then_close(
    live: LiveSetup, apps: TracedApps, live_viewer_factory: LiveViewerFactory, cut: str
) -> None:
    viewer, streams = attached(live.relay, live.session_id)
    request = encode_request(GetPacket(stream_named(streams, BUSY_STREAM).id, 0, 4096))
    if cut == "inside-header":
        viewer.send(request[:7])
    elif cut == "inside-payload":
        viewer.send(request[: 16 + 5])
    else:
        viewer.send(CommandHeader(Connect.COMMAND, 20).encode())
    viewer.close()
    wait_clients(live.relay, live.session.name, 0)
    all_is_still_well(live, apps, live_viewer_factory)


def test_a_viewer_that_stops_reading_stalls_nobody(
    relay_kind: RelayKind,
    live: LiveSetup,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
    closing: list[RawViewer],
) -> None:
    if relay_kind == "c":
        pytest.skip(
            "lttng-relayd allows one viewer per session and serves every viewer "
            "from one thread, a command at a time; pyrelayd gives each its own task"
        )
    stuck = RawViewer(live.relay.live_port, receive_buffer=4096)
    closing.append(stuck)
    stuck.connect()
    stuck.call(CreateSession(), CreateSessionReply)
    reply = stuck.call(AttachSession(live.session_id, Seek.BEGINNING), AttachSessionReply)
    assert reply.status == AttachStatus.OK
    busy = stream_named(list(reply.streams), BUSY_STREAM)
    # A whole sub-buffer: the live timer may flush the first ones early (page-sized packets)
    # when the machine is busy.
    deadline = time.monotonic() + 20
    while True:
        index = stuck.call(GetNextIndex(busy.id), IndexReply)
        assert index.status in (IndexStatus.OK, IndexStatus.RETRY), index
        if index.status == IndexStatus.OK and index.packet_size // 8 >= 128 * 1024:
            break
        assert time.monotonic() < deadline, "no big packet indexed"
        if index.status == IndexStatus.RETRY:
            time.sleep(0.05)
    length = index.packet_size // 8
    # 16 MiB of replies asked for and never read: far beyond what socket buffers hold.
    stuck.send(encode_request(GetPacket(busy.id, index.offset, length)) * (16 * 2**20 // length))
    all_is_still_well(live, apps, live_viewer_factory)
