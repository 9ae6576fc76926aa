"""Real LTTng peers (2.13; 2.16 in CTF 2 and in CTF 1.8) stream to the relay under test.

Each scenario runs a real session daemon (with its consumer daemons) and real traced
applications, streams to a relay started for the test, and checks that:

* babeltrace2 reads back from the relay's output directory exactly the events the applications
  emitted (every sequence number, in order), and
* the files are where lttng-relayd puts them (layout observed with the C relays 2.13 and 2.16,
  the same for both trace formats):

      <output>/<host>/<session>-<YYYYmmdd-HHMMSS>/ust/uid/<uid>/64-bit/metadata
                                                  .../channel0_<cpu>
                                                  .../index/channel0_<cpu>.idx

The relay under test is pyrelayd unless PYRELAYD_TEST_RELAY=c (or "both") says otherwise.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LiveViewerFactory, RelayFactory, SessionFactory
from .live_helpers import session_output
from .lttng_env import (
    AGENT_EVENT,
    AGENT_LOGGER,
    CHUNK_TIME_RE,
    HOSTNAME,
    SESSION_DATETIME_RE,
    Relay,
    Session,
    TracedApps,
    babeltrace2_text,
    index_problems,
    list_live_sessions,
    possible_cpus,
    read_trace,
    relative_files,
    sequence_numbers,
    text_sequence_numbers,
    wait_until,
)

pytestmark = [pytest.mark.lttng, pytest.mark.ctf_1_8_too, pytest.mark.timeout(120)]

CPUS = possible_cpus()
#: Per-UID buffers of this (root) user's 64-bit applications, relative to the chunk.
PER_UID = f"ust/uid/{os.getuid()}/64-bit"
#: `ust/pid/<procname>-<pid>-<YYYYmmdd-HHMMSS>` directory of one per-PID application.
PER_PID_DIR_RE = rf"app-(\d+)-{SESSION_DATETIME_RE}"
#: Archived trace chunk: `<start>-<end>-<chunk id>`.
ARCHIVED_CHUNK_RE = rf"({CHUNK_TIME_RE})-({CHUNK_TIME_RE})-(\d+)"


def stream_files(trace_path: str, channel: str = "channel0", *, indexes: bool = True) -> set[str]:
    """Files of one UST trace (one stream per CPU) under `trace_path` ("" for none)."""
    prefix = f"{trace_path}/" if trace_path else ""
    files = {f"{prefix}metadata"}
    for cpu in CPUS:
        files.add(f"{prefix}{channel}_{cpu}")
        if indexes:
            files.add(f"{prefix}index/{channel}_{cpu}.idx")
    return files


def only_entry(directory: Path, pattern: str) -> Path:
    """The single entry of `directory`, whose name must match `pattern`."""
    names = sorted(path.name for path in directory.iterdir())
    assert len(names) == 1, f"{directory} should hold one entry, holds {names}"
    assert re.fullmatch(pattern, names[0]), f"{names[0]!r} does not match {pattern!r}"
    return directory / names[0]


def session_dir(relay: Relay, session: Session) -> Path:
    """`<output>/<host>/<session>-<YYYYmmdd-HHMMSS>`, the only session directory of `relay`."""
    host_dir = only_entry(relay.output_dir, re.escape(HOSTNAME))
    return only_entry(host_dir, rf"{re.escape(session.name)}-{SESSION_DATETIME_RE}")


def assert_indexes_describe_data(trace_dir: Path) -> None:
    """Every index file lists the packets of its data file back to back."""
    index_files = sorted(trace_dir.rglob("index/*.idx"))
    assert index_files, f"no index file under {trace_dir}"
    for index_file in index_files:
        data_file = index_file.parent.parent / index_file.name.removesuffix(".idx")
        assert index_problems(data_file, index_file) == [], index_file


def record(session: Session, emit: Callable[[], object] | None = None) -> None:
    """Enable the test event, start, run `emit` (default: nothing), destroy."""
    session.enable_events()
    session.start()
    if emit is not None:
        emit()
    session.destroy()


def seqs_of(path: Path) -> list[int]:
    return sequence_numbers(read_trace(path))


# --------------------------------------------------------------------------------------------
# (a) non-live, per-UID buffers


def test_per_uid_session_delivers_every_event(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay)
    record(session, lambda: apps.run_c_app(200))

    directory = session_dir(relay, session)
    assert relative_files(directory) == stream_files(PER_UID)
    assert_indexes_describe_data(directory / PER_UID)
    assert seqs_of(relay.output_dir) == list(range(200))
    assert text_sequence_numbers(babeltrace2_text(relay.output_dir)) == list(range(200))


def test_session_directory_is_stamped_with_its_creation_time(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    before = datetime.datetime.now().replace(microsecond=0)
    session = session_factory(relay)
    record(session, lambda: apps.run_c_app(1))
    after = datetime.datetime.now()

    stamp = session_dir(relay, session).name.removeprefix(f"{session.name}-")
    created = datetime.datetime.strptime(stamp, "%Y%m%d-%H%M%S")  # relay's local time
    assert before <= created <= after


# --------------------------------------------------------------------------------------------
# (b) live sessions


def test_live_session_is_written_to_disk(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay, live_timer_us=200_000)
    # 100 events over ~0.3 s: several live-timer periods, so beacons interleave with packets.
    record(session, lambda: apps.run_c_app(100, delay_us=3000))

    directory = session_dir(relay, session)
    assert relative_files(directory) == stream_files(PER_UID)
    assert_indexes_describe_data(directory / PER_UID)
    assert seqs_of(relay.output_dir) == list(range(100))


def test_live_viewer_reads_the_session_while_it_is_recorded(
    relay: Relay,
    session_factory: SessionFactory,
    apps: TracedApps,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    session = session_factory(relay, live_timer_us=200_000)
    session.enable_events()

    relay.wait_live_port()
    [listed] = list_live_sessions(relay.live_port)
    assert (listed.name, listed.hostname, listed.live_timer_us, listed.clients) == (
        session.name, HOSTNAME, 200_000, 0,
    )  # fmt: skip

    viewer = live_viewer_factory(relay, session.name)
    viewer.wait_attached(relay, session.name)
    session.start()
    apps.run_c_app(100, delay_us=3000)
    session.destroy()

    assert viewer.wait(timeout=30) == 0, viewer.stderr()
    assert text_sequence_numbers(viewer.lines()) == list(range(100))
    assert seqs_of(relay.output_dir) == list(range(100))


# --------------------------------------------------------------------------------------------
# (c) per-PID buffers


def test_per_pid_buffers_of_short_lived_apps(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay)
    session.enable_channel(buffers="pid")
    session.enable_events()
    session.start()
    first_seqs = (0, 1000, 2000)
    processes = {first: apps.start_c_app(50, delay_us=200, first_seq=first) for first in first_seqs}
    # The pids the session daemon sees (its sandbox has a pid namespace of its own).
    pids = {first: process.namespace_pid() or -1 for first, process in processes.items()}
    for process in processes.values():
        apps.finish(process)
    session.destroy()

    # One trace per application: ust/pid/<procname>-<pid>-<YYYYmmdd-HHMMSS>/
    app_dirs = {}
    for app_dir in (session_dir(relay, session) / "ust" / "pid").iterdir():
        match = re.fullmatch(PER_PID_DIR_RE, app_dir.name)
        assert match, app_dir.name
        app_dirs[int(match[1])] = app_dir
    assert sorted(app_dirs) == sorted(pids.values())
    for first, pid in pids.items():
        app_dir = app_dirs[pid]
        assert relative_files(app_dir) == stream_files("")
        assert_indexes_describe_data(app_dir)
        assert seqs_of(app_dir) == list(range(first, first + 50))


# --------------------------------------------------------------------------------------------
# (d) tracefile size/count: the oldest files are overwritten


TRACEFILE_SIZE = 8192
TRACEFILE_COUNT = 3


def test_tracefile_count_keeps_only_the_newest_files(
    relay_factory: RelayFactory, session_factory: SessionFactory, apps: TracedApps
) -> None:
    # The same events go to the relay under test and to the C relay (two sessions with the
    # same channel): what the C relay keeps after the wrap is the reference.
    relay = relay_factory()
    reference = relay_factory("c")
    sessions = [session_factory(relay), session_factory(reference)]
    for session in sessions:
        # 4 KiB packets, two per trace file; the 256 KiB ring buffer holds every event, so
        # nothing is discarded and the files keep a contiguous tail of the sequence.
        session.enable_channel(
            subbuf_size=4096,
            num_subbuf=64,
            tracefile_size=TRACEFILE_SIZE,
            tracefile_count=TRACEFILE_COUNT,
        )
        session.enable_events()
        session.start()
    count = 600
    apps.run_c_app(count, payload_bytes=100, cpu=CPUS[0])  # ~19 packets, all on one CPU
    for session in sessions:
        session.destroy()

    directory = session_dir(relay, sessions[0])
    trace_dir = directory / PER_UID
    busy_stream = f"channel0_{CPUS[0]}"
    assert sorted(p.name for p in trace_dir.glob(f"{busy_stream}_*")) == [
        f"{busy_stream}_{n}" for n in range(TRACEFILE_COUNT)
    ]
    assert sorted(p.name for p in (trace_dir / "index").glob(f"{busy_stream}_*")) == [
        f"{busy_stream}_{n}.idx" for n in range(TRACEFILE_COUNT)
    ]
    for data_file in trace_dir.glob("channel0_*"):
        assert data_file.stat().st_size <= TRACEFILE_SIZE, data_file
    assert_indexes_describe_data(trace_dir)

    kept = seqs_of(relay.output_dir)
    assert 0 < len(kept) < count, "the oldest trace files should have been overwritten"
    assert kept == list(range(count - len(kept), count))

    reference_dir = session_dir(reference, sessions[1])
    assert relative_files(directory) == relative_files(reference_dir), "same files as the C relay"
    assert kept == seqs_of(reference.output_dir), "same events kept as by the C relay"


# --------------------------------------------------------------------------------------------
# (e) rotations


def test_each_rotation_archives_a_chunk(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay)
    session.enable_events()
    session.start()
    for chunk in range(3):
        apps.run_c_app(10, first_seq=10 * chunk)
        session.rotate()
    apps.run_c_app(10, first_seq=30)
    session.destroy()  # archives the last chunk too

    directory = session_dir(relay, session)
    assert [p.name for p in directory.iterdir()] == ["archives"]
    archived = {}
    for chunk_dir in (directory / "archives").iterdir():
        match = re.fullmatch(ARCHIVED_CHUNK_RE, chunk_dir.name)
        assert match, chunk_dir.name
        start, end, chunk_id = match.groups()
        assert start <= end, chunk_dir.name
        archived[int(chunk_id)] = chunk_dir
    assert sorted(archived) == [0, 1, 2, 3]

    for chunk_id, chunk_dir in archived.items():
        assert relative_files(chunk_dir) == stream_files(PER_UID), chunk_dir.name
        assert_indexes_describe_data(chunk_dir / PER_UID)
        assert seqs_of(chunk_dir) == list(range(10 * chunk_id, 10 * chunk_id + 10))
    assert sorted(seqs_of(directory)) == list(range(40))


def test_periodic_rotations_without_any_application_archive_one_chunk_each(
    relay: Relay, session_factory: SessionFactory
) -> None:
    """Per-PID buffers and a rotation timer, but nothing traced (lttng-tools' own regression
    test of the timer): every rotation still gives an archived chunk directory, empty."""
    session = session_factory(relay)
    session.enable_channel(buffers="pid")
    session.enable_events()
    session.lttng("enable-rotation", f"--session={session.name}", "--timer=500ms")
    session.start()
    directory = wait_until(
        lambda: session_output(relay, session), timeout=10, what="the session directory"
    )
    wait_until(
        lambda: len(list((directory / "archives").glob("*"))) >= 3
        if (directory / "archives").is_dir() else False,
        timeout=20, what="three archived chunks",
    )  # fmt: skip
    session.stop()
    session.destroy()

    assert [p.name for p in directory.iterdir()] == ["archives"]
    chunk_ids = []
    for chunk_dir in (directory / "archives").iterdir():
        match = re.fullmatch(ARCHIVED_CHUNK_RE, chunk_dir.name)
        assert match, chunk_dir.name
        assert chunk_dir.is_dir() and relative_files(chunk_dir) == set(), chunk_dir.name
        chunk_ids.append(int(match[3]))
    assert sorted(chunk_ids) == list(range(len(chunk_ids))), "one directory per rotation"
    assert len(chunk_ids) >= 3


# --------------------------------------------------------------------------------------------
# (f) clear


def test_clear_discards_the_events_recorded_before_it(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay)
    session.enable_events()
    session.start()
    apps.run_c_app(10)
    session.clear()
    apps.run_c_app(10, first_seq=100)
    session.destroy()

    directory = session_dir(relay, session)
    assert relative_files(directory) == stream_files(PER_UID)  # no archive, no leftover chunk
    assert_indexes_describe_data(directory / PER_UID)
    assert seqs_of(relay.output_dir) == list(range(100, 110))


def test_clear_is_refused_when_the_relay_disallows_it(
    relay_factory: RelayFactory, session_factory: SessionFactory, apps: TracedApps
) -> None:
    relay = relay_factory(extra_args=["-x"])
    session = session_factory(relay)
    session.enable_events()
    session.start()
    apps.run_c_app(10)

    refused = session.clear(check=False)
    assert refused.returncode != 0
    assert "not supported by the relay daemon" in refused.stderr

    apps.run_c_app(10, first_seq=100)
    session.destroy()
    assert seqs_of(relay.output_dir) == [*range(10), *range(100, 110)]


# --------------------------------------------------------------------------------------------
# (g) snapshots


def test_snapshot_records_go_to_the_relay(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay, snapshot=True)
    session.enable_events()
    session.start()
    apps.run_c_app(10)
    session.snapshot_record()
    apps.run_c_app(10, first_seq=10)
    session.snapshot_record()
    session.destroy()

    directory = session_dir(relay, session)
    snapshots = {}
    for snapshot_dir in directory.iterdir():
        match = re.fullmatch(rf"snapshot-1-{SESSION_DATETIME_RE}-(\d+)", snapshot_dir.name)
        assert match, snapshot_dir.name
        snapshots[int(match[1])] = snapshot_dir
    assert sorted(snapshots) == [0, 1]
    for snapshot_dir in snapshots.values():
        assert relative_files(snapshot_dir) == stream_files(PER_UID, indexes=False)
    # A snapshot holds whatever the ring buffers hold: the second one has both batches.
    assert seqs_of(snapshots[0]) == list(range(10))
    assert seqs_of(snapshots[1]) == list(range(20))


# --------------------------------------------------------------------------------------------
# (h) output grouping and custom base paths


@pytest.mark.parametrize(
    ("relay_args", "base_path", "trace_root"),
    [
        (["-s"], "/my/base", rf"<session>/{re.escape(HOSTNAME)}-{SESSION_DATETIME_RE}/my/base"),
        (
            ["--group-output-by-session"],
            "",
            rf"<session>/{re.escape(HOSTNAME)}-{SESSION_DATETIME_RE}",
        ),
        ([], "/my/base", rf"{re.escape(HOSTNAME)}/my/base"),
    ],
    ids=["by-session-with-base-path", "by-session", "by-host-with-base-path"],
)
def test_output_grouping_and_base_path(
    relay_factory: RelayFactory,
    session_factory: SessionFactory,
    apps: TracedApps,
    relay_args: list[str],
    base_path: str,
    trace_root: str,
) -> None:
    relay = relay_factory(extra_args=relay_args)
    session = session_factory(relay, base_path=base_path)
    record(session, lambda: apps.run_c_app(20))

    files = relative_files(relay.output_dir)
    roots = {path.split(f"/{PER_UID}/")[0].removesuffix(f"/{PER_UID}") for path in files}
    expected_root = trace_root.replace("<session>", re.escape(session.name))
    assert len(roots) == 1 and re.fullmatch(expected_root, roots.pop()), files
    assert {path[path.index("ust/") :] for path in files} == stream_files(PER_UID)
    assert seqs_of(relay.output_dir) == list(range(20))


# --------------------------------------------------------------------------------------------
# (i) Python agent


def test_python_agent_events(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay)
    session.enable_python_events()
    session.start()
    apps.run_agent_app(30)
    session.destroy()

    directory = session_dir(relay, session)
    assert relative_files(directory) == stream_files(PER_UID, channel="lttng_python_channel")
    events = read_trace(relay.output_dir)
    assert {event.name for event in events} == {AGENT_EVENT}
    assert {event.fields["logger_name"] for event in events} == {AGENT_LOGGER}
    assert sequence_numbers(events, AGENT_EVENT) == list(range(30))


# --------------------------------------------------------------------------------------------
# (j) concurrent sessions


def test_two_sessions_record_at_the_same_time(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    sessions = [session_factory(relay, live_timer_us=200_000), session_factory(relay)]
    for session in sessions:
        session.enable_events()
        session.start()
    processes = [apps.start_c_app(100, delay_us=500, first_seq=first) for first in (0, 1000)]
    for process in processes:
        apps.finish(process)
    for session in sessions:
        session.destroy()

    host_dir = relay.output_dir / HOSTNAME
    assert len(list(host_dir.iterdir())) == 2
    for session in sessions:
        [directory] = host_dir.glob(f"{session.name}-*")
        assert relative_files(directory) == stream_files(PER_UID)
        seqs = seqs_of(directory)
        assert [s for s in seqs if s < 1000] == list(range(100))
        assert [s for s in seqs if s >= 1000] == list(range(1000, 1100))


# --------------------------------------------------------------------------------------------
# Metadata regeneration (RESET_METADATA on the relay)


def test_regenerated_metadata_keeps_the_trace_readable(
    relay: Relay, session_factory: SessionFactory, apps: TracedApps
) -> None:
    session = session_factory(relay)
    session.enable_events()
    session.start()
    apps.run_c_app(10)
    session.regenerate_metadata()
    apps.run_c_app(10, first_seq=10)
    session.destroy()

    assert relative_files(session_dir(relay, session)) == stream_files(PER_UID)
    assert seqs_of(relay.output_dir) == list(range(20))
