"""`pyrelayd --workers 2`: one relay in a router and two worker processes, driven by real peers.

The relay tells traced hosts apart by their address: every connection of a host goes to the
worker serving it. To have two hosts on one machine, the session daemon streams one session
through 127.0.0.1 and the other through 127.0.0.2, with a local route that makes connections
to 127.0.0.2 leave from 127.0.0.2 (the relay sees a second host). Real babeltrace2 viewers
follow both sessions live through the router, and the traces read back from disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyrelayd_testkit.processes import child_pids
from tests.requirements import require_tool, unavailable

from .conftest import LiveViewerFactory, RelayFactory
from .live_helpers import assert_viewer_ended_cleanly, session_output
from .lttng_env import (
    Relay,
    Session,
    SessionDaemon,
    TracedApps,
    list_live_sessions,
    read_trace,
    sequence_numbers,
    wait_until,
)

pytestmark = [pytest.mark.lttng, pytest.mark.timeout(240)]

LIVE_TIMER_US = 100_000
SECOND_HOST = "127.0.0.2"
_ROUTE = ["local", f"{SECOND_HOST}/32", "dev", "lo", "src", SECOND_HOST, "table", "local"]


@pytest.fixture
def second_host() -> Iterator[str]:
    """127.0.0.2, from which connections to it come (held by one test at a time)."""
    require_tool("ip", "iproute2")
    if os.geteuid() != 0:
        unavailable("adding a local route for a second host needs root")
    lock_path = Path(tempfile.gettempdir()) / "pyrelayd-test-second-host.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["ip", "route", "replace", *_ROUTE], check=True)
        try:
            yield SECOND_HOST
        finally:
            subprocess.run(["ip", "route", "del", *_ROUTE], check=False)


@pytest.fixture
def relay(relay_factory: RelayFactory, relay_kind: str) -> Relay:
    if relay_kind != "py":
        pytest.skip("--workers is pyrelayd's")
    # Every local address, 127.0.0.2 included (later URLs win over the launcher's).
    relay = relay_factory(extra_args=["--workers", "2", "-v", "-C", "tcp://0.0.0.0:0",
                                      "-D", "tcp://0.0.0.0:0"])
    relay.wait_live_port()
    wait_until(lambda: len(child_pids(relay.pid)) == 2, timeout=20, what="two workers")
    return relay


def workers_with_files_of(relay: Relay, session: Session) -> set[int]:
    """The worker processes that have files of `session` open."""
    directory = session_output(relay, session)
    assert directory is not None, f"no output directory for {session.name}"
    found = set()
    for pid in child_pids(relay.pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(str(directory) + "/"):
                        found.add(pid)
    return found


def two_host_sessions(sessiond: SessionDaemon, relay: Relay, host: str,
                      prefix: str) -> tuple[Session, Session]:
    sessions = (
        Session.create(sessiond, f"{prefix}-a", relay, live_timer_us=LIVE_TIMER_US),
        Session.create(sessiond, f"{prefix}-b", relay, live_timer_us=LIVE_TIMER_US,
                       relay_host=host),
    )
    for session in sessions:
        session.enable_events()
    return sessions


def test_two_hosts_two_workers_babeltrace_follows_both_live(
    relay: Relay, sessiond: SessionDaemon, apps: TracedApps, second_host: str,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    first, second = two_host_sessions(sessiond, relay, second_host, "workers")
    try:
        viewers = [live_viewer_factory(relay, s.name) for s in (first, second)]
        for viewer, session in zip(viewers, (first, second), strict=True):
            viewer.wait_attached(relay, session.name)
        listed = {s.name: s.id for s in list_live_sessions(relay.live_port)}
        assert {first.name, second.name} <= listed.keys(), "the router lists both workers"
        assert (listed[first.name] - 1) % 2 != (listed[second.name] - 1) % 2, \
            "one session per worker: their ids come from different workers"
        for session in (first, second):
            session.start()
        apps.run_c_app(300, delay_us=500)
        owners = [workers_with_files_of(relay, s) for s in (first, second)]
        assert all(len(o) == 1 for o in owners) and owners[0] != owners[1], owners
        for session in (first, second):
            session.destroy()
        for viewer in viewers:
            assert assert_viewer_ended_cleanly(viewer) == list(range(300))
        for session in (first, second):
            directory = session_output(relay, session)
            assert directory is not None
            assert sequence_numbers(read_trace(directory)) == list(range(300))
    finally:
        for session in (first, second):
            if not session.destroyed:
                session.lttng("destroy", session.name, check=False)


def test_a_killed_worker_costs_only_its_host_and_is_replaced(
    relay: Relay, sessiond: SessionDaemon, apps: TracedApps, second_host: str,
    live_viewer_factory: LiveViewerFactory,
) -> None:
    survivor, victim = two_host_sessions(sessiond, relay, second_host, "killed")
    again: Session | None = None
    try:
        viewer = live_viewer_factory(relay, survivor.name)
        viewer.wait_attached(relay, survivor.name)
        for session in (survivor, victim):
            session.start()
        apps.run_c_app(100, delay_us=500)
        [victim_worker] = workers_with_files_of(relay, victim)
        os.kill(victim_worker, signal.SIGKILL)
        wait_until(lambda: len(child_pids(relay.pid)) == 2 and victim_worker not in
                   child_pids(relay.pid), timeout=20, what="the worker started again")
        apps.run_c_app(100, first_seq=100, delay_us=500)
        survivor.destroy()
        assert assert_viewer_ended_cleanly(viewer) == list(range(200)), \
            "the other host's session and viewer never noticed"
        victim.lttng("destroy", victim.name, check=False)

        # The host of the lost session streams again, into the new worker.
        new = Session.create(sessiond, "killed-again", relay, live_timer_us=LIVE_TIMER_US,
                               relay_host=second_host)
        again = new
        new.enable_events()
        new.start()
        apps.run_c_app(50, delay_us=100)
        new.destroy()
        directory = session_output(relay, new)
        assert directory is not None
        assert sequence_numbers(read_trace(directory)) == list(range(50))
        assert relay.is_running()
        assert "worker 1 (pid" in relay.log_text() or "worker 0 (pid" in relay.log_text()
    finally:
        for left in (survivor, victim, again):
            if left is not None and not left.destroyed:
                left.lttng("destroy", left.name, check=False)
