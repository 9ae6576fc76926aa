"""Live viewing of real LTTng 2.13 sessions through the relay under test.

Real session daemon, consumer daemons and traced applications stream to the relay; the viewers
are real `babeltrace2 -i lttng-live` processes and our own `LiveClient` (whose packets are
written back as CTF and decoded by babeltrace2, so both kinds of viewer are checked event by
event through the `seq` field of the test application).

Scenarios (live timer 100 ms everywhere):

1. a viewer attached before the application starts sees every event, then ends on destroy;
2. late viewers: babeltrace2 (SEEK_LAST) sees a gapless suffix; our client with SEEK_BEGINNING
   sees everything, with SEEK_LAST only the packets indexed after it attached;
3. per-PID applications starting mid-session are all seen;
4. an idle session gives INACTIVE beacons: babeltrace2 prints what it has without waiting for
   more data, and later events still arrive;
5. tracefile size/count wrapping while babeltrace2 reads; a slow client resynced to the oldest
   surviving tracefile;
6. `lttng clear` while viewers read; a rotation driven by our own producer while our client
   reads (`lttng rotate` is refused on live sessions);
7. ten babeltrace2 viewers on one session (pyrelayd only) and viewers killed mid-stream;
8. the classic live checklist of lttng-tools' `live_test`, with our client; GET_PACKET replies
   are not held back by Nagle's algorithm.

The relay under test is pyrelayd unless PYRELAYD_TEST_RELAY=c (or "both") says otherwise;
scenarios testing pyrelayd improvements (several viewers on one session, per-PID applications
that exit before the viewer polls them) are skipped on the C relay, with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path

import pytest

from pyrelayd.client.producer import ProducerStream, RelaydProducer
from pyrelayd.client.viewer import Inactivity, LiveClient, LiveEvent, Packet, Seek, StreamInfo
from pyrelayd.protocol import relayd
from pyrelayd.protocol.viewer import (
    AttachSession,
    AttachSessionReply,
    AttachStatus,
    CreateSession,
    CreateSessionReply,
    GetNextIndex,
    GetPacket,
    IndexReply,
    IndexStatus,
    MetadataStatus,
    PacketStatus,
    encode_request,
)

from .conftest import LiveViewerFactory, SessionFactory
from .live_helpers import (
    BackgroundFollow,
    RawViewer,
    ViewerPool,
    assert_viewer_ended_cleanly,
    client_seqs,
    following,
    indexed_packets,
    kill_viewer,
    live_session_ids,
    session_output,
    start_pinned_app,
    wait_clients,
    wait_printed,
)
from .lttng_env import (
    HOSTNAME,
    LiveViewer,
    Relay,
    RelayKind,
    Session,
    TracedApps,
    possible_cpus,
    read_trace,
    sequence_numbers,
    stop_process,
    wait_until,
)

pytestmark = [pytest.mark.lttng, pytest.mark.timeout(120)]

LIVE_TIMER_US = 100_000
CPUS = possible_cpus()
BUSY_CPU = CPUS[0]
BUSY_STREAM = f"channel0_{BUSY_CPU}"
METADATA_PACKET_MAGIC = (0x75D11D57).to_bytes(4, "little")
SEVERAL_VIEWERS_ARE_PYRELAYD_ONLY = (
    "lttng-relayd allows one viewer per session (the others get ATTACH ALREADY); "
    "several viewers on one session is a pyrelayd extension"
)


def live_session(session_factory: SessionFactory, relay: Relay) -> Session:
    return session_factory(relay, live_timer_us=LIVE_TIMER_US)


def watched_and_followed(
    session_factory: SessionFactory, relay: Relay, live_viewer_factory: LiveViewerFactory
) -> tuple[Session, Session, LiveViewer]:
    """Two started live sessions: the first with babeltrace2 attached before it started (the
    viewer is returned), the second left for our client to follow."""
    watched, followed = live_session(session_factory, relay), live_session(session_factory, relay)
    for session in (watched, followed):
        session.enable_events()
    viewer = live_viewer_factory(relay, watched.name)
    viewer.wait_attached(relay, watched.name)
    for session in (watched, followed):
        session.start()
    return watched, followed, viewer


def touch_every_cpu(apps: TracedApps, first_seq: int = 0, per_cpu: int = 5) -> list[int]:
    """Emit `per_cpu` events on each CPU in turn, so every per-CPU stream has a packet (from
    then on the relay answers its idle streams with INACTIVE, not RETRY). Returns the seqs."""
    seq = first_seq
    for cpu in CPUS:
        apps.run_c_app(per_cpu, cpu=cpu, first_seq=seq)
        seq += per_cpu
    return list(range(first_seq, seq))


def wait_indexed(relay: Relay, session: Session, packets: int, stream: str = BUSY_STREAM) -> None:
    wait_until(
        lambda: indexed_packets(relay, session, stream) >= packets,
        timeout=20,
        what=f"{packets} packets of {stream} indexed by the relay",
    )


def trace_root(relay: Relay, session: Session) -> Path:
    directory = session_output(relay, session)
    assert directory is not None, f"no output directory for {session.name}"
    return directory


def packets_by_stream(follow: BackgroundFollow) -> dict[str, list[Packet]]:
    by_stream: dict[str, list[Packet]] = {}
    for packet in follow.packets:
        by_stream.setdefault(packet.stream.channel_name, []).append(packet)
    return by_stream


def assert_packets_are_the_files(packets: list[Packet], data_file: Path, *, whole: bool) -> None:
    """The packets are consecutive slices of the data file, ending at its end (and starting at
    its beginning when `whole`), each byte for byte what the relay wrote."""
    content = data_file.read_bytes()
    assert packets, f"no packet of {data_file.name}"
    if whole:
        assert packets[0].offset == 0
    for before, after in itertools.pairwise(packets):
        assert after.offset == before.offset + before.packet_size // 8, "gap or overlap"
    for packet in packets:
        assert len(packet.data) == packet.packet_size // 8
        assert packet.data == content[packet.offset : packet.offset + len(packet.data)]
    assert packets[-1].offset + packets[-1].packet_size // 8 == len(content)


# --------------------------------------------------------------------------------------------
# 1. Attached before the application starts


def test_viewer_attached_first_sees_every_event_and_ends_after_destroy(
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    session = live_session(session_factory, relay)
    session.enable_events()
    session.enable_python_events()
    viewer = live_viewer_factory(relay, session.name)
    viewer.wait_attached(relay, session.name)
    session.start()
    apps.run_c_app(200, delay_us=2000)
    apps.run_agent_app(20, first_seq=1000)  # a second channel appears mid-session
    session.destroy()

    assert assert_viewer_ended_cleanly(viewer) == [*range(200), *range(1000, 1020)]


# --------------------------------------------------------------------------------------------
# 2. Late viewers


def test_late_babeltrace_sees_a_gapless_suffix_of_the_events(
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    session = live_session(session_factory, relay)
    session.enable_events()
    session.start()
    count = 300
    app = start_pinned_app(apps, count, cpu=BUSY_CPU, delay_us=10_000)  # ~3 s
    try:
        wait_indexed(relay, session, 3)
        viewer = live_viewer_factory(relay, session.name)  # babeltrace2 seeks to the last
        viewer.wait_attached(relay, session.name)
        assert app.poll() is None, "the application should still be emitting"
    finally:
        apps.finish(app)
    session.destroy()

    seqs = assert_viewer_ended_cleanly(viewer)
    assert seqs, "the late viewer saw nothing"
    assert seqs[0] > 0, "packets indexed before the viewer attached must not be served"
    assert seqs == list(range(seqs[0], count)), "a suffix of the events, without gap"


def test_late_client_seeks_beginning_or_last(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps, tmp_path: Path
) -> None:
    # The same application traced by two sessions: one viewer each, attaching mid-way.
    sessions = [live_session(session_factory, relay) for _ in range(2)]
    for session in sessions:
        session.enable_events()
        session.start()
    count = 300
    app = start_pinned_app(apps, count, cpu=BUSY_CPU, delay_us=10_000)
    try:
        for session in sessions:
            wait_indexed(relay, session, 3)
        relay.wait_live_port()
        with (
            following(
                relay, live_session_ids(relay, sessions[0].name), Seek.BEGINNING
            ) as beginning,
            following(relay, live_session_ids(relay, sessions[1].name), Seek.LAST) as last,
        ):
            for session in sessions:
                wait_clients(relay, session.name, 1)
            assert app.poll() is None, "the application should still be emitting"
            apps.finish(app)
            for session in sessions:
                session.destroy()
            beginning.wait_finished()
            last.wait_finished()
    finally:
        stop_process(app, 2.0)

    assert client_seqs(beginning, tmp_path / "beginning") == list(range(count))
    last_seqs = client_seqs(last, tmp_path / "last")
    assert last_seqs and last_seqs[0] > 0, "SEEK_LAST served packets indexed before attach"
    assert last_seqs == list(range(last_seqs[0], count))

    trace_dir_name = f"ust/uid/0/64-bit/{BUSY_STREAM}"
    busy_beginning = packets_by_stream(beginning)[BUSY_STREAM]
    assert_packets_are_the_files(
        busy_beginning, trace_root(relay, sessions[0]) / trace_dir_name, whole=True
    )
    busy_last = packets_by_stream(last)[BUSY_STREAM]
    assert_packets_are_the_files(
        busy_last, trace_root(relay, sessions[1]) / trace_dir_name, whole=False
    )
    assert busy_last[0].offset > 0


# --------------------------------------------------------------------------------------------
# 3. Per-PID applications starting mid-session


def test_per_pid_apps_starting_mid_session_are_all_seen(
    relay_kind: RelayKind,
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    if relay_kind == "c":
        pytest.skip(
            "lttng-relayd 2.13 misses per-PID applications that exit between two viewer polls "
            "and drops the last packets of the others (its viewer stream moves to 'no chunk' "
            "when the stream closes); 2.14 fixed both, pyrelayd follows 2.14+"
        )
    session = live_session(session_factory, relay)
    session.enable_channel(buffers="pid")
    session.enable_events()
    viewer = live_viewer_factory(relay, session.name)
    viewer.wait_attached(relay, session.name)
    session.start()
    long_lived = apps.start_c_app(250, delay_us=10_000, first_seq=0)  # ~2.5 s
    try:
        wait_until(
            lambda: (
                any((trace_root(relay, session) / "ust" / "pid").glob("*/index/*.idx"))
                if session_output(relay, session)
                else False
            ),
            timeout=20,
            what="the first application's packets on the relay",
        )
        # Two more applications start and end while the first one is still running.
        for first in (1000, 2000):
            apps.finish(apps.start_c_app(50, delay_us=2000, first_seq=first))
        assert long_lived.poll() is None, "the first application should still be running"
    finally:
        apps.finish(long_lived)
    session.destroy()

    seqs = assert_viewer_ended_cleanly(viewer)
    for first, count in ((0, 250), (1000, 50), (2000, 50)):
        assert [s for s in seqs if first <= s < first + count] == list(range(first, first + count))
    assert len(seqs) == 350


# --------------------------------------------------------------------------------------------
# 4. Idle session: beacons


def test_idle_session_gives_inactivity_beacons_then_later_events(
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
    tmp_path: Path,
) -> None:
    # Session A is read by babeltrace2, session B by our client (one viewer per session).
    watched, followed, viewer = watched_and_followed(session_factory, relay, live_viewer_factory)
    first_batch = touch_every_cpu(apps)
    with following(relay, live_session_ids(relay, followed.name), Seek.BEGINNING) as follow:
        # babeltrace2 can only print an event once every stream is known to be past it: with
        # no more data coming, that takes INACTIVE replies carrying the beacons' times.
        wait_printed(
            viewer,
            lambda seqs: seqs == first_batch,
            timeout=15,
            what="the first batch while the session is idle",
        )

        def idle_for_several_periods(events: list[LiveEvent]) -> bool:
            per_stream: dict[int, list[int]] = {}  # beacons after each stream's last packet
            for event in events:
                if isinstance(event, Packet):
                    per_stream[event.stream_id] = []
                elif isinstance(event, Inactivity) and event.stream.id in per_stream:
                    per_stream[event.stream.id].append(event.timestamp_end)
            return len(per_stream) == len(CPUS) and all(len(t) >= 3 for t in per_stream.values())

        follow.wait_for(
            idle_for_several_periods,
            timeout=15,
            what="three beacons on every stream after its last packet",
        )
        last_packet_end = {p.stream_id: p.timestamp_end for p in follow.packets}
        for inactivity in follow.inactivities:
            assert inactivity.timestamp_end >= last_packet_end.get(inactivity.stream.id, 0)
            assert inactivity.ctf_stream_id == follow.packets[0].ctf_stream_id
        beacons = [
            i.timestamp_end
            for i in follow.inactivities
            if i.stream.id == follow.packets[-1].stream_id
        ]
        assert beacons == sorted(beacons) and len(set(beacons)) == len(beacons)

        apps.run_c_app(20, first_seq=100)
        second_batch = list(range(100, 120))
        wait_printed(
            viewer,
            lambda seqs: seqs == first_batch + second_batch,
            timeout=15,
            what="the events emitted after the idle period",
        )
        for session in (watched, followed):
            session.destroy()
        follow.wait_finished()

    assert assert_viewer_ended_cleanly(viewer) == first_batch + second_batch
    assert client_seqs(follow, tmp_path / "client") == first_batch + second_batch


# --------------------------------------------------------------------------------------------
# 5. Tracefile size/count wrapping under a viewer


def test_tracefile_wrapping_while_a_viewer_reads(
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    session = live_session(session_factory, relay)
    # 4 KiB packets, two per trace file, three files per stream: the oldest files are
    # overwritten while the viewer reads.
    session.enable_channel(subbuf_size=4096, num_subbuf=64, tracefile_size=8192, tracefile_count=3)
    session.enable_events()
    viewer = live_viewer_factory(relay, session.name)
    viewer.wait_attached(relay, session.name)
    session.start()
    count = 1000
    apps.run_c_app(count, payload_bytes=100, delay_us=1000, cpu=BUSY_CPU)  # ~30 packets
    session.destroy()

    seqs = assert_viewer_ended_cleanly(viewer)
    on_disk = sequence_numbers(read_trace(relay.output_dir))
    print(f"\nviewer printed {len(seqs)} of {count} events; {len(on_disk)} left on disk")
    assert 0 < len(on_disk) < count, "the trace files should have wrapped"
    assert all(a < b for a, b in itertools.pairwise(seqs)), "duplicates or disorder"
    assert set(on_disk) <= set(seqs), "the viewer missed events still on disk at the end"
    assert seqs[-1] == count - 1


async def read_metadata(client: LiveClient, metadata: StreamInfo) -> bytes:
    text = b""
    while (reply := await client.get_metadata(metadata.id)).status == MetadataStatus.OK:
        text += reply.data
    assert reply.status == MetadataStatus.NO_NEW_METADATA, reply
    return text


async def read_available(
    client: LiveClient, stream: StreamInfo, packets: list[bytes], offsets: list[int]
) -> IndexStatus:
    """Read packets until the stream has nothing more for now; the status that stopped it."""
    while True:
        index = await client.get_next_index(stream.id)
        if index.status != IndexStatus.OK:
            assert index.status in (IndexStatus.RETRY, IndexStatus.INACTIVE, IndexStatus.HUP), (
                f"GET_NEXT_INDEX answered {index.status.name} after {len(packets)} packets"
            )
            return index.status
        reply = await client.get_packet(stream.id, index.offset, index.packet_size // 8)
        assert reply.status == PacketStatus.OK, (
            f"GET_PACKET {index.offset}+{index.packet_size // 8} answered {reply.status.name}"
        )
        packets.append(reply.data)
        offsets.append(index.offset)


async def test_slow_client_is_resynced_to_the_oldest_tracefile(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps, tmp_path: Path
) -> None:
    session = live_session(session_factory, relay)
    session.enable_channel(subbuf_size=4096, num_subbuf=64, tracefile_size=8192, tracefile_count=3)
    session.enable_events()
    session.start()
    apps.run_c_app(5, cpu=BUSY_CPU)
    wait_indexed(relay, session, 1)
    relay.wait_live_port()
    packets: list[bytes] = []
    offsets: list[int] = []
    async with LiveClient("127.0.0.1", relay.live_port, request_timeout=10) as client:
        [session_id] = live_session_ids(relay, session.name)
        await client.create_session()
        streams = await client.attach(session_id, Seek.BEGINNING)
        [metadata] = [s for s in streams if s.is_metadata]
        busy = next(s for s in streams if s.channel_name == BUSY_STREAM)
        metadata_text = await read_metadata(client, metadata)
        assert await read_available(client, busy, packets, offsets) != IndexStatus.HUP
        assert packets, "the first packet should be served"
        first_read = len(packets)
        # The files wrap several times while the viewer does not read (3 files of 2 packets).
        apps.run_c_app(600, payload_bytes=100, cpu=BUSY_CPU, first_seq=100)
        session.stop()  # returns once the relay has every packet
        await read_available(client, busy, packets, offsets)
        session.destroy()
        while await read_available(client, busy, packets, offsets) != IndexStatus.HUP:
            await asyncio.sleep(0.05)
        metadata_text += await read_metadata(client, metadata)

    trace_dir = tmp_path / "client-trace"
    trace_dir.mkdir()
    (trace_dir / "metadata").write_bytes(metadata_text)
    (trace_dir / BUSY_STREAM).write_bytes(b"".join(packets))
    seqs = sequence_numbers(read_trace(trace_dir))
    on_disk = sequence_numbers(read_trace(relay.output_dir))
    print(f"\nslow client: {len(packets)} packets, {len(seqs)} events; {len(on_disk)} on disk")
    assert seqs[:5] == list(range(5)), "the packets read before the wrap"
    later = seqs[5:]
    assert later and later == list(range(later[0], 700)), "then a gapless suffix to the end"
    assert later[0] > 100, "the overwritten packets cannot be served"
    assert set(on_disk) <= set(later)
    assert offsets[first_read] in (0, 4096), "resumes at a packet boundary of a tracefile"


# --------------------------------------------------------------------------------------------
# 6. Clear and rotation while viewing


def test_clear_while_viewers_read(
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
    tmp_path: Path,
) -> None:
    # Session A is read by babeltrace2, session B by our client; both are cleared mid-way.
    watched, followed, viewer = watched_and_followed(session_factory, relay, live_viewer_factory)
    with following(relay, live_session_ids(relay, followed.name), Seek.BEGINNING) as follow:
        first_batch = touch_every_cpu(apps)
        wait_printed(
            viewer, lambda seqs: seqs == first_batch, timeout=15, what="the events before the clear"
        )
        follow.wait_for(
            lambda events: len({p.stream_id for p in follow.packets}) == len(CPUS),
            timeout=15,
            what="our client's first packets",
        )
        metadata_before = {t: trace.metadata for t, trace in follow.traces.items()}
        for session in (watched, followed):
            session.clear()
        second_batch = touch_every_cpu(apps, first_seq=100)
        wait_printed(
            viewer,
            lambda seqs: seqs == first_batch + second_batch,
            timeout=15,
            what="the events emitted after the clear",
        )
        for session in (watched, followed):
            session.destroy()
        follow.wait_finished()

    assert assert_viewer_ended_cleanly(viewer) == first_batch + second_batch
    for session in (watched, followed):
        assert sequence_numbers(read_trace(trace_root(relay, session))) == second_batch
    # The metadata is sent again into the new chunk; the viewer only gets what is new.
    for trace_id, text in metadata_before.items():
        assert follow.traces[trace_id].metadata.startswith(text)
    assert client_seqs(follow, tmp_path / "client") == first_batch + second_batch


METADATA = b"/* CTF 1.8 */\n" + b"/* synthetic metadata, never decoded */\n" * 20
MORE_METADATA = b"/* metadata appended after the rotation */\n" * 5
PACKET_SIZE = 4096


def synthetic_packet(number: int) -> bytes:
    return bytes([number % 251]) * (PACKET_SIZE - 8) + number.to_bytes(8, "big")


async def send_packets(producer: RelaydProducer, stream: ProducerStream, numbers: range) -> None:
    for number in numbers:
        seq = await producer.send_packet(stream, synthetic_packet(number))
        await producer.send_index(
            stream,
            seq,
            packet_size_bits=PACKET_SIZE * 8,
            content_size_bits=PACKET_SIZE * 8,
            timestamp_begin=1000 * number,
            timestamp_end=1000 * number + 999,
        )


async def until(predicate: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_rotation_moves_an_attached_viewer_to_the_new_chunk(relay: Relay) -> None:
    relay.wait_live_port()
    producer = RelaydProducer("127.0.0.1", relay.control_port, relay.data_port)
    await producer.connect()
    name = f"rotation-{uuid.uuid4().hex[:8]}"
    await producer.create_session(name, "pyrelayd-producer", live_timer=LIVE_TIMER_US)
    await producer.create_trace_chunk(0)
    metadata = await producer.add_stream("metadata", "ust/uid/0/64-bit")
    data = await producer.add_stream("channel0_0", "ust/uid/0/64-bit")
    await producer.streams_sent()
    await producer.send_metadata(metadata, METADATA)
    await send_packets(producer, data, range(3))

    received: list[Packet] = []
    async with LiveClient("127.0.0.1", relay.live_port, request_timeout=30) as client:
        [session_id] = [s.id for s in await client.list_sessions() if s.session_name == name]
        follow = client.follow(session_id, Seek.BEGINNING, retry_delay=0.02)

        async def read() -> None:
            async for event in follow:
                if isinstance(event, Packet):
                    received.append(event)

        reader = asyncio.create_task(read())
        try:
            await until(lambda: len(received) >= 3 or reader.done(), "the first chunk's packets")
            # The session daemon's rotation: new chunk, streams switch, the old chunk closes,
            # the whole metadata is sent again into the new chunk (plus what is new).
            await producer.create_trace_chunk(1)
            rotation = relayd.RotateStreams(
                1,
                (
                    relayd.StreamRotation(metadata.handle, 0),
                    relayd.StreamRotation(data.handle, data.next_packet_seq_num),
                ),
            )
            reply = await producer.request(relayd.Command.ROTATE_STREAMS, rotation.encode(), 4)
            assert relayd.decode_generic_reply(reply) == relayd.ReturnCode.OK
            await producer.close_trace_chunk(0, relayd.CloseCommand.MOVE_TO_COMPLETED)
            await producer.send_metadata(metadata, METADATA + MORE_METADATA)
            await send_packets(producer, data, range(3, 6))
            await until(lambda: len(received) >= 6 or reader.done(), "the new chunk's packets")
            for stream in (metadata, data):
                await producer.close_stream(stream)
            await producer.close()
            await asyncio.wait_for(reader, 15)  # every stream hung up: the follow ends
        finally:
            reader.cancel()
            await producer.close()

    assert [p.data for p in received] == [synthetic_packet(n) for n in range(6)]
    assert [p.timestamp_begin for p in received] == [1000 * n for n in range(6)]
    assert [p.offset for p in received] == [0, 4096, 8192, 0, 4096, 8192], "new chunk, new files"
    [trace] = follow.traces.values()
    assert trace.metadata == METADATA + MORE_METADATA, "metadata resent from where it stopped"


# --------------------------------------------------------------------------------------------
# 7. Many viewers, killed viewers


async def detach_and_reattach(relay: Relay, session_ids: list[int]) -> None:
    """Our client attaches, detaches, attaches again and reads an index (its own connection)."""
    async with LiveClient("127.0.0.1", relay.live_port, request_timeout=10) as client:
        await client.create_session()
        first = await client.attach(session_ids[0], Seek.BEGINNING)
        assert any(not s.is_metadata for s in first)
        await client.detach(session_ids[0])
        again = await client.attach(session_ids[0], Seek.BEGINNING)
        assert sorted(s.id for s in again) == sorted(s.id for s in first)
        data_stream = next(s for s in again if s.channel_name == BUSY_STREAM)
        deadline = time.monotonic() + 10
        while (reply := await client.get_next_index(data_stream.id)).status != IndexStatus.OK:
            assert reply.status in (IndexStatus.RETRY, IndexStatus.INACTIVE), reply
            assert time.monotonic() < deadline, "no index after re-attaching"
            await asyncio.sleep(0.05)
        await client.detach(session_ids[0])


def reset_during_big_get_packet(relay: Relay, session_name: str, stream_file: str) -> None:
    """A viewer that asks for a whole data file in one GET_PACKET and vanishes (RST) at once."""
    viewer = RawViewer(relay.live_port)
    try:
        viewer.connect()
        viewer.call(CreateSession(), CreateSessionReply)
        [session_id] = live_session_ids(relay, session_name)
        attached = viewer.call(AttachSession(session_id, Seek.BEGINNING), AttachSessionReply)
        assert attached.status == AttachStatus.OK
        stream = next(s for s in attached.streams if s.channel_name == stream_file)
        index = viewer.call(GetNextIndex(stream.id), IndexReply)
        assert index.status == IndexStatus.OK, index
        viewer.send(encode_request(GetPacket(stream.id, index.offset, index.packet_size // 8)))
    finally:
        viewer.reset()


def test_ten_babeltrace_viewers_on_one_session(
    relay_kind: RelayKind,
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    tmp_path: Path,
) -> None:
    if relay_kind == "c":
        pytest.skip(SEVERAL_VIEWERS_ARE_PYRELAYD_ONLY)
    session = live_session(session_factory, relay)
    session.enable_channel(subbuf_size=256 * 1024, num_subbuf=4)
    session.enable_events()
    pool = ViewerPool(tmp_path / "viewers")
    try:
        viewers = [pool.start(relay, session.name) for _ in range(10)]
        victim = pool.start(relay, session.name)
        wait_clients(relay, session.name, 11)
        session.start()
        first_batch = touch_every_cpu(apps)
        app = start_pinned_app(
            apps, 300, cpu=BUSY_CPU, delay_us=5000, payload_bytes=2000, first_seq=1000
        )
        try:
            wait_indexed(relay, session, 3)
            ids = live_session_ids(relay, session.name)
            asyncio.run(detach_and_reattach(relay, ids))
            reset_during_big_get_packet(relay, session.name, BUSY_STREAM)
            wait_printed(
                victim,
                lambda seqs: any(s >= 1000 for s in seqs),
                timeout=15,
                what="some of the application's events",
            )
            kill_viewer(victim)
            wait_clients(relay, session.name, 10)
            assert app.poll() is None, "the application should still be emitting"
        finally:
            apps.finish(app)
        session.destroy()

        expected = first_batch + list(range(1000, 1300))
        for number, viewer in enumerate(viewers):
            assert assert_viewer_ended_cleanly(viewer) == expected, f"viewer {number}"
    finally:
        pool.stop_all()
    assert sequence_numbers(read_trace(relay.output_dir)) == expected


def test_killed_viewers_leave_ingest_and_later_viewers_unharmed(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps, tmp_path: Path
) -> None:
    # One viewer at a time (as the C relay requires): each dies, the next one attaches.
    session = live_session(session_factory, relay)
    session.enable_channel(subbuf_size=256 * 1024, num_subbuf=4)
    session.enable_events()
    session.start()
    first_batch = touch_every_cpu(apps)
    apps.run_c_app(200, cpu=BUSY_CPU, payload_bytes=2000, first_seq=100)  # big packets
    wait_indexed(relay, session, 2)
    relay.wait_live_port()

    reset_during_big_get_packet(relay, session.name, BUSY_STREAM)
    wait_clients(relay, session.name, 0)

    pool = ViewerPool(tmp_path / "viewers")
    try:
        app = start_pinned_app(apps, 400, cpu=BUSY_CPU, delay_us=5000, first_seq=1000)
        try:
            victim = pool.start(relay, session.name)
            wait_printed(
                victim,
                lambda seqs: any(s >= 1000 for s in seqs),
                timeout=15,
                what="some of the application's events",
            )
            kill_viewer(victim)
            wait_clients(relay, session.name, 0)
            survivor = pool.start(relay, session.name)
            survivor.wait_attached(relay, session.name)
            assert app.poll() is None, "the application should still be emitting"
        finally:
            apps.finish(app)
        session.destroy()
        seqs = assert_viewer_ended_cleanly(survivor)
    finally:
        pool.stop_all()

    assert seqs and seqs == list(range(seqs[0], 1400)), "a gapless suffix up to the end"
    assert sequence_numbers(read_trace(relay.output_dir)) == [
        *first_batch,
        *range(100, 300),
        *range(1000, 1400),
    ]


# --------------------------------------------------------------------------------------------
# 8. The classic live checklist (lttng-tools tests/regression/tools/live/live_test)


async def test_live_checklist_with_our_client(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = live_session(session_factory, relay)
    session.enable_events()
    session.start()
    apps.run_c_app(50, cpu=BUSY_CPU)
    wait_indexed(relay, session, 1)
    relay.wait_live_port()

    async with LiveClient("127.0.0.1", relay.live_port, request_timeout=10) as client:
        # lttng-relayd 2.13 announces 2.13; 2.16 (and pyrelayd) announce 2.15.
        announced = 13 if relay.kind == "c" and relay.sandbox is None else 15
        assert client.relay is not None
        assert (client.relay.major, client.relay.minor) == (2, announced)
        [listed] = [s for s in await client.list_sessions() if s.session_name == session.name]
        assert (listed.hostname, listed.live_timer, listed.clients) == (HOSTNAME, LIVE_TIMER_US, 0)
        assert listed.streams == 1 + len(CPUS)  # metadata + one stream per CPU
        await client.create_session()
        streams = await client.attach(listed.id, Seek.BEGINNING)
        assert len(streams) == 1 + len(CPUS)
        [metadata] = [s for s in streams if s.is_metadata]
        data_streams = [s for s in streams if not s.is_metadata]
        assert {s.channel_name for s in data_streams} == {f"channel0_{cpu}" for cpu in CPUS}

        text = b""
        while (reply := await client.get_metadata(metadata.id)).status == MetadataStatus.OK:
            text += reply.data
        assert reply.status == MetadataStatus.NO_NEW_METADATA
        if apps.sessiond.peers.writes_ctf2:
            # CTF 2: a JSON text sequence (each fragment after an RS byte), a preamble first.
            assert text.startswith(b"\x1e{") and b'"type": "preamble"' in text[:100]
        elif apps.sessiond.peers.is_host:
            # Packetized TSDL: each metadata packet starts with the magic 0x75D11D57.
            assert text[:4] == METADATA_PACKET_MAGIC and b"trace {" in text
        else:
            # LTTng 2.16's CTF 1.8 metadata: TSDL text, not packetized.
            assert text.startswith(b"/* CTF 1.8 */") and b"trace {" in text
        assert (await client.get_next_index(metadata.id)).status == IndexStatus.HUP

        busy = next(s for s in data_streams if s.channel_name == BUSY_STREAM)
        index = await client.get_next_index(busy.id)
        assert index.status == IndexStatus.OK, index
        for idle in data_streams:
            if idle is not busy:
                # No event there, but the consumer flushes an empty packet on the first live
                # timer tick: OK once it is indexed, RETRY (or INACTIVE) before.
                status = (await client.get_next_index(idle.id)).status
                assert status in (IndexStatus.OK, IndexStatus.RETRY, IndexStatus.INACTIVE)
        packet = await client.get_packet(busy.id, index.offset, index.packet_size // 8)
        assert packet.status == PacketStatus.OK
        data_file = trace_root(relay, session) / busy.path_name / busy.channel_name
        assert (
            packet.data
            == data_file.read_bytes()[index.offset : index.offset + index.packet_size // 8]
        )

        await client.detach(listed.id)
        [listed] = [s for s in await client.list_sessions() if s.session_name == session.name]
        assert listed.clients == 0
        again = await client.attach(listed.id, Seek.BEGINNING)
        assert sorted(s.id for s in again) == sorted(s.id for s in streams)
        await client.detach(listed.id)
    session.destroy()
