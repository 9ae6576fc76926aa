"""LTTng 2.13 and LTTng 2.16 peers streaming into one pyrelayd at the same time.

A 2.13 session daemon (Debian 12) records a CTF 1.8 session and a 2.16 session daemon (the sid
chroot) records a CTF 2 session (its default), both live, into the same relay. Viewers of both
generations look at them:

* babeltrace2 2.0 (viewer protocol 2.4) lists only the CTF 1.8 session, cannot attach to the
  CTF 2 one (the relay answers UNK, as lttng-relayd 2.15+ does) and follows the CTF 1.8 one;
* babeltrace2 2.1 (viewer protocol 2.15) lists both, each with its trace format, and follows
  the CTF 2 one;
* both traces read back from disk with the babeltrace2 of their own release hold exactly the
  events emitted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyrelayd.protocol.viewer import (
    AttachSession,
    AttachSessionReply,
    AttachStatus,
    CreateSession,
    CreateSessionReply,
    Seek,
)
from tests.requirements import require_peers

from .live_helpers import RawViewer, live_session_ids, wait_printed
from .lttng_env import (
    HOST_PEERS,
    SID_PEERS,
    LiveViewer,
    Relay,
    Session,
    SessionDaemon,
    TracedApps,
    build_c_app,
    list_live_sessions,
    read_trace,
    run_command,
    sequence_numbers,
    start_relay,
    trace_tools_of,
    wait_until,
)

pytestmark = [pytest.mark.lttng, pytest.mark.timeout(240)]

LIVE_TIMER_US = 100_000
EVENTS = 300


@pytest.fixture
def both_releases(tmp_path: Path) -> Iterator[tuple[TracedApps, TracedApps]]:
    """A 2.13 and a 2.16 session daemon, each with the test application built for it."""
    for peers in (HOST_PEERS, SID_PEERS):
        require_peers(peers)
    daemons: list[SessionDaemon] = []
    try:
        old = SessionDaemon.start(tmp_path / "sessiond-2.13", HOST_PEERS)
        daemons.append(old)
        new = SessionDaemon.start(tmp_path / "sessiond-2.16", SID_PEERS)
        daemons.append(new)
        yield (
            TracedApps(old, build_c_app(tmp_path / "app-2.13")),
            TracedApps(new, build_c_app(tmp_path / "app-2.16", new.sandbox)),
        )
    finally:
        for daemon in daemons:
            daemon.lttng("destroy", "--all", check=False)
            daemon.stop()


@pytest.fixture
def pyrelayd(tmp_path: Path) -> Iterator[Relay]:
    relay = start_relay("py", tmp_path / "relay")
    yield relay
    status = relay.stop()
    assert status == 0, relay.log_text()[-5000:]


def babeltrace2_listing(relay: Relay, daemon: SessionDaemon) -> str:
    """What `babeltrace2 -i lttng-live net://RELAY` prints, with the babeltrace2 of `daemon`'s
    release (2.0 on the host, 2.1 in the sid chroot)."""
    argv = ["babeltrace2", "-i", "lttng-live", f"net://127.0.0.1:{relay.live_port}"]
    if daemon.peers.is_host:
        return run_command(argv, timeout=30).stdout
    return daemon.sandbox.run(argv, timeout=30).stdout


def test_2_13_and_2_16_peers_share_one_relay_and_each_viewer_sees_what_it_can_read(
    both_releases: tuple[TracedApps, TracedApps], pyrelayd: Relay, tmp_path: Path
) -> None:
    old_apps, new_apps = both_releases
    old = Session.create(old_apps.sessiond, "mixed-ctf-1-8", pyrelayd, live_timer_us=LIVE_TIMER_US)
    new = Session.create(new_apps.sessiond, "mixed-ctf-2", pyrelayd, live_timer_us=LIVE_TIMER_US)
    for session in (old, new):
        session.enable_events()
        session.start()
    pyrelayd.wait_live_port()

    # Listings: what each generation of viewer protocol sees.
    def formats(minor: int) -> dict[str, str]:
        return {s.name: s.trace_format for s in list_live_sessions(pyrelayd.live_port,
                                                                    minor=minor)}
    assert formats(4) == {"mixed-ctf-1-8": "ctf-1.8"}
    assert formats(13) == {"mixed-ctf-1-8": "ctf-1.8"}
    assert formats(15) == {"mixed-ctf-1-8": "ctf-1.8", "mixed-ctf-2": "ctf-2"}
    listing_2_0 = babeltrace2_listing(pyrelayd, old_apps.sessiond)
    assert "mixed-ctf-1-8" in listing_2_0 and "mixed-ctf-2" not in listing_2_0, listing_2_0
    listing_2_1 = babeltrace2_listing(pyrelayd, new_apps.sessiond)
    # babeltrace2 2.1 prints each session's trace format at the end of its line.
    for name, label in (("mixed-ctf-1-8", "CTF 1.8"), ("mixed-ctf-2", "CTF 2")):
        line = rf"/{name} \(timer = {LIVE_TIMER_US}, \d+ stream\(s\), \d+ client\(s\) connected, "
        assert re.search(line + re.escape(label) + r"\)", listing_2_1), listing_2_1

    # A viewer of protocol 2.4 is refused the CTF 2 session (and nothing is attached).
    [ctf2_id] = live_session_ids(pyrelayd, "mixed-ctf-2")
    with RawViewer(pyrelayd.live_port) as viewer:
        viewer.connect(minor=4)
        viewer.call(CreateSession(), CreateSessionReply)
        refused = viewer.call(AttachSession(ctf2_id, Seek.BEGINNING), AttachSessionReply)
        assert (refused.status, refused.streams) == (AttachStatus.UNK, ())
    assert all(s.clients == 0 for s in list_live_sessions(pyrelayd.live_port, minor=15))

    # babeltrace2 2.0 told to fail when the session is not there: it is not, for it.
    url_ctf2 = pyrelayd.live_url("mixed-ctf-2")
    refused_bt = run_command(
        ["babeltrace2", "-i", "lttng-live", "--params=session-not-found-action=\"fail\"",
         url_ctf2],
        timeout=30, check=False,
    )  # fmt: skip
    assert refused_bt.returncode != 0, refused_bt.stdout

    # Each session followed live by the babeltrace2 of its own release, while both record.
    with trace_tools_of(old_apps.sessiond.sandbox):
        viewer_2_0 = LiveViewer.start(pyrelayd, "mixed-ctf-1-8", tmp_path / "viewer-2.0")
    with trace_tools_of(new_apps.sessiond.sandbox):
        viewer_2_1 = LiveViewer.start(pyrelayd, "mixed-ctf-2", tmp_path / "viewer-2.1")
    try:
        viewer_2_0.wait_attached(pyrelayd, "mixed-ctf-1-8")
        wait_until(
            lambda: any(s.name == "mixed-ctf-2" and s.clients
                        for s in list_live_sessions(pyrelayd.live_port, minor=15)),
            timeout=20, what="babeltrace2 2.1 attached",
        )  # fmt: skip
        running = [old_apps.start_c_app(EVENTS, delay_us=500),
                   new_apps.start_c_app(EVENTS, delay_us=500, first_seq=10_000)]  # fmt: skip
        for process in running:
            TracedApps.finish(process)
        expected_old, expected_new = list(range(EVENTS)), list(range(10_000, 10_000 + EVENTS))
        wait_printed(viewer_2_0, lambda seqs: seqs == expected_old, timeout=30,
                     what="every 2.13 event")  # fmt: skip
        wait_printed(viewer_2_1, lambda seqs: seqs == expected_new, timeout=30,
                     what="every 2.16 event")  # fmt: skip
        old.destroy()
        new.destroy()
        assert viewer_2_0.wait(30) == 0, viewer_2_0.stderr()
        assert viewer_2_1.wait(30) == 0, viewer_2_1.stderr()
    finally:
        viewer_2_0.stop()
        viewer_2_1.stop()

    # From disk, each trace with the babeltrace2 of its release.
    host_dir = pyrelayd.output_dir / os.uname().nodename
    [old_dir] = host_dir.glob("mixed-ctf-1-8-*")
    [new_dir] = host_dir.glob("mixed-ctf-2-*")
    with trace_tools_of(old_apps.sessiond.sandbox):
        assert sequence_numbers(read_trace(old_dir)) == expected_old
    with trace_tools_of(new_apps.sessiond.sandbox):
        assert sequence_numbers(read_trace(new_dir)) == expected_new
    # The relay writes what it gets: CTF 2 metadata is a JSON text sequence, 1.8 is TSDL.
    assert b'"type": "preamble"' in next(new_dir.rglob("metadata")).read_bytes()[:200]
    assert b"CTF 1.8" in next(old_dir.rglob("metadata")).read_bytes()[:200]
