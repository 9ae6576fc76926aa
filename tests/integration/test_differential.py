"""pyrelayd writes the same bytes as the C lttng-relayd of the peers' release, from one input.

Each scenario streams from the real session daemon (LTTng 2.13, or 2.16 in CTF 2 and in CTF
1.8) through the capture proxy to a C relay of the same release (2.13, or the sid chroot's
2.16); the recording is replayed into a fresh C `lttng-relayd` of that release and a fresh
pyrelayd started with the same options, and the two output trees must be identical (same
relative paths, same sha256) and readable by babeltrace2. See differential.py for the machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .differential import Capture, Replayed
from .lttng_env import (
    AGENT_EVENT,
    C_APP_EVENT,
    SessionDaemon,
    TracedApps,
    possible_cpus,
    read_trace,
    sequence_numbers,
)

pytestmark = [pytest.mark.lttng, pytest.mark.ctf_1_8_too, pytest.mark.timeout(120)]

CaptureFactory = Callable[..., Capture]
CPUS = possible_cpus()


def _failed(node: pytest.Item) -> bool:
    # conftest's pytest_runtest_makereport hook leaves `report_<phase>` on the item.
    return any(
        getattr(getattr(node, f"report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture
def capture_factory(
    request: pytest.FixtureRequest, sessiond: SessionDaemon, tmp_path: Path
) -> Iterator[CaptureFactory]:
    """`(relay_args=()) -> Capture`: a C relay started with `relay_args` behind a capture
    proxy; the replays get the same options. Everything is stopped after the test."""
    captures: list[Capture] = []

    def start(relay_args: Sequence[str] = ()) -> Capture:
        capture = Capture.start(sessiond, tmp_path / f"capture{len(captures)}", relay_args)
        captures.append(capture)
        return capture

    yield start

    for capture in captures:
        capture.close()
    if _failed(request.node):
        for capture in captures:
            for name, text in capture.logs().items():
                request.node.add_report_section("teardown", name, text[-20000:])
        request.node.add_report_section("teardown", "lttng-sessiond log", sessiond.log_tail(200))


@pytest.fixture
def capture(capture_factory: CaptureFactory) -> Capture:
    return capture_factory()


def replay_identically(capture: Capture) -> Replayed:
    """Replay the recording into a fresh C relay and a fresh pyrelayd; fail unless their
    output trees are identical."""
    replayed = capture.replay_into_both()
    differences = replayed.differences()
    if differences:
        pytest.fail(replayed.describe(differences), pytrace=False)
    return replayed


def replayed_seqs(capture: Capture, event_name: str = C_APP_EVENT) -> list[int]:
    """`replay_identically`, then the sequence numbers babeltrace2 reads from the replayed
    trace (in trace order)."""
    return sequence_numbers(replay_identically(capture).events(), event_name)


# --------------------------------------------------------------------------------------------
# (a) non-live, per-UID buffers


def test_per_uid_session(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-per-uid")
    session.enable_events()
    session.start()
    apps.run_c_app(200)
    session.destroy()

    assert replayed_seqs(capture) == list(range(200))


# --------------------------------------------------------------------------------------------
# (b) live session: beacons and live-timer packets interleave with the data


def test_live_session(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-live", live_timer_us=200_000)
    session.enable_events()
    session.start()
    apps.run_c_app(100, delay_us=3000)
    session.destroy()

    assert replayed_seqs(capture) == list(range(100))


# --------------------------------------------------------------------------------------------
# (c) per-PID buffers of several short-lived applications


def test_per_pid_buffers_of_short_lived_apps(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-per-pid")
    session.enable_channel(buffers="pid")
    session.enable_events()
    session.start()
    processes = [apps.start_c_app(50, delay_us=200, first_seq=first) for first in (0, 100, 200)]
    for process in processes:
        apps.finish(process)
    session.destroy()

    assert sorted(replayed_seqs(capture)) == [*range(50), *range(100, 150), *range(200, 250)]


# --------------------------------------------------------------------------------------------
# (d) tracefile size/count: the oldest trace files are overwritten


def test_tracefile_rotation_wraps(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-tracefile")
    # 4 KiB packets, two per 8 KiB trace file, three files kept: ~19 packets wrap around.
    session.enable_channel(subbuf_size=4096, num_subbuf=64, tracefile_size=8192,
                           tracefile_count=3)  # fmt: skip
    session.enable_events()
    session.start()
    apps.run_c_app(600, payload_bytes=100, cpu=CPUS[0])
    session.destroy()

    kept = replayed_seqs(capture)
    assert 0 < len(kept) < 600
    assert kept == list(range(600 - len(kept), 600))


# --------------------------------------------------------------------------------------------
# (e) rotations: three rotations then destroy, four archived trace chunks


def test_three_rotations_then_destroy(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-rotations")
    session.enable_events()
    session.start()
    for chunk in range(3):
        apps.run_c_app(10, first_seq=10 * chunk)
        session.rotate()
    apps.run_c_app(10, first_seq=30)
    session.destroy()

    assert sorted(replayed_seqs(capture)) == list(range(40))


# --------------------------------------------------------------------------------------------
# (f) clear in the middle of a live session


def test_clear_mid_live_session(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-clear", live_timer_us=200_000)
    session.enable_events()
    session.start()
    apps.run_c_app(20)
    session.clear()
    apps.run_c_app(20, first_seq=100)
    session.destroy()

    assert replayed_seqs(capture) == list(range(100, 120))


# --------------------------------------------------------------------------------------------
# (g) snapshot records


def test_snapshot_records(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-snapshot", snapshot=True)
    session.enable_events()
    session.start()
    apps.run_c_app(10)
    session.snapshot_record()
    apps.run_c_app(10, first_seq=10)
    session.snapshot_record()
    session.destroy()

    # Read one snapshot at a time: both hold the same trace (babeltrace2 would merge them).
    replayed = replay_identically(capture)
    snapshots = sorted(replayed.py_output.glob("*/diff-snapshot-*/snapshot-*"),
                       key=lambda path: int(path.name.rsplit("-", 1)[1]))  # fmt: skip
    # A snapshot holds whatever the ring buffers hold: the second one has both batches.
    assert [sequence_numbers(read_trace(path)) for path in snapshots] == [
        list(range(10)), list(range(20)),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# (h) output grouped by session (-s), with a custom base path


def test_group_by_session_with_base_path(capture_factory: CaptureFactory, apps: TracedApps) -> None:
    capture = capture_factory(relay_args=["-s"])
    session = capture.create_session("diff-grouped", base_path="/my/base")
    session.enable_events()
    session.start()
    apps.run_c_app(20)
    session.destroy()

    assert replayed_seqs(capture) == list(range(20))


# --------------------------------------------------------------------------------------------
# (i) Python agent events


def test_python_agent_events(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-agent")
    session.enable_python_events()
    session.start()
    apps.run_agent_app(30)
    session.destroy()

    assert replayed_seqs(capture, AGENT_EVENT) == list(range(30))


# --------------------------------------------------------------------------------------------
# (j) two sessions (one live) recorded at the same time


def test_two_sessions_at_once(capture: Capture, apps: TracedApps) -> None:
    sessions = [
        capture.create_session("diff-two-live", live_timer_us=200_000),
        capture.create_session("diff-two-plain"),
    ]
    for session in sessions:
        session.enable_events()
        session.start()
    processes = [apps.start_c_app(100, delay_us=500, first_seq=first) for first in (0, 1000)]
    for process in processes:
        apps.finish(process)
    for session in sessions:
        session.destroy()

    # Each session has every event of both applications.
    expected = sorted(2 * [*range(100), *range(1000, 1100)])
    assert sorted(replayed_seqs(capture)) == expected


# --------------------------------------------------------------------------------------------
# Metadata regeneration (RESET_METADATA)


def test_regenerated_metadata(capture: Capture, apps: TracedApps) -> None:
    session = capture.create_session("diff-regenerate")
    session.enable_events()
    session.start()
    apps.run_c_app(10)
    session.regenerate_metadata()
    apps.run_c_app(10, first_seq=10)
    session.destroy()

    assert replayed_seqs(capture) == list(range(20))
