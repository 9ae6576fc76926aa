"""Fixtures shared by the unit tests of the relay model, its connections and its paths.

The output root is `tmp_path / "lttng-traces"`, so a test can check that nothing was created
next to it (i.e. outside the output root).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.model.session import RelaySession, SessionInfo

SESSIOND_UUID = bytes(range(1, 17))
# 2024-01-02 03:04:05 UTC: session directories are named ...-20240102-030405 in UTC.
CREATION_TIME = 1704164645


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in UTC: directory and chunk names use the relay's local time zone."""
    monkeypatch.setenv("TZ", "UTC0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def output_root(tmp_path: Path) -> Path:
    root = tmp_path / "lttng-traces"
    root.mkdir()
    return root


@pytest.fixture
def relay(output_root: Path) -> Relay:
    return Relay(RelaySettings(output_root=output_root))


@pytest.fixture
def make_session(relay: Relay, utc: None) -> Callable[..., RelaySession]:
    """A relay session as CREATE_SESSION + CREATE_TRACE_CHUNK(0) would leave it."""
    sessiond_session_ids = iter(range(1, 1000))

    def make(*, minor: int = 13, snapshot: bool = False, live_timer: int = 0,
             name: str = "mysess", hostname: str = "myhost") -> RelaySession:
        info = SessionInfo(
            session_name=name, hostname=hostname, base_path="", live_timer=live_timer,
            snapshot=snapshot, sessiond_uuid=SESSIOND_UUID,
            sessiond_session_id=next(sessiond_session_ids), creation_time=CREATION_TIME,
            name_contains_creation_time=False, major=2, minor=minor,
        )
        session = relay.create_session(info, None)
        if minor >= 11:
            relay.create_trace_chunk(session, 0, CREATION_TIME, None)
        return session

    return make


@pytest.fixture
def session(make_session: Callable[..., RelaySession]) -> RelaySession:
    """A 2.13 session with trace chunk 0 (streams go straight into the session directory)."""
    return make_session()
