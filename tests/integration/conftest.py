"""Fixtures driving real LTTng 2.13 peers (session daemon, consumer daemons, traced apps,
babeltrace2) against a relay daemon: pyrelayd by default, the C `lttng-relayd` with
`PYRELAYD_TEST_RELAY=c`, or both (every relay test runs twice) with `PYRELAYD_TEST_RELAY=both`.

Fixtures (see lttng_env.py for the objects they return):

* `sessiond` (session scope): a root `lttng-sessiond` in a private mount namespace.
* `apps` (session scope): `TracedApps`, runs the C test app and the Python-agent app there.
* `relay_kind`: "c" or "py", parametrized from PYRELAYD_TEST_RELAY.
* `relay_factory`: `(kind=None, extra_args=()) -> Relay`, started, listening, stopped after the
  test (a relay that died during the test fails it).
* `relay`: `relay_factory()` with default arguments.
* `session_factory`: `(relay, *, live_timer_us=None, base_path="", snapshot=False,
  name=None) -> Session`; sessions left undestroyed are destroyed after the test.
* `live_viewer_factory`: `(relay, session_name) -> LiveViewer`, stopped after the test.

Environment: PYRELAYD_TEST_RELAY (py | c | both), PYRELAYD_TEST_KEEP=1 keeps the session
daemon's directory (its log) after the run, PYRELAYD_TEST_RELAY_VERBOSE=1 starts relays with
-vvv. On failure the relay logs and the session daemon's log tail are attached to the report.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import pytest

from .lttng_env import (
    RELAY_ENV_VAR,
    RELAY_KINDS,
    CommandError,
    LiveViewer,
    Relay,
    RelayKind,
    Session,
    SessionDaemon,
    TracedApps,
    build_c_app,
    host_has_lttng,
    start_relay,
)

RelayFactory = Callable[..., Relay]
SessionFactory = Callable[..., Session]
LiveViewerFactory = Callable[[Relay, str], LiveViewer]


def selected_relay_kinds() -> list[RelayKind]:
    value = os.environ.get(RELAY_ENV_VAR, "py").strip().lower()
    if value == "both":
        return list(RELAY_KINDS)
    if value not in RELAY_KINDS:
        raise pytest.UsageError(f"{RELAY_ENV_VAR} must be one of c, py, both (got {value!r})")
    return [value]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "relay_kind" in metafunc.fixturenames:
        kinds = selected_relay_kinds()
        metafunc.parametrize("relay_kind", kinds, ids=[f"relay={k}" for k in kinds])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Lets fixtures know at teardown whether the test failed (to attach daemon logs).
    setattr(item, f"report_{report.when}", report)
    return report


def _test_failed(node: pytest.Item) -> bool:
    return any(
        getattr(node, f"report_{when}", None) is not None and getattr(node, f"report_{when}").failed
        for when in ("setup", "call")
    )


@pytest.fixture(scope="session")
def lttng_host() -> None:
    reason = host_has_lttng()
    if reason is not None:
        pytest.skip(f"real LTTng peers unavailable: {reason}")


@pytest.fixture(scope="session")
def lttng_tmpdir(lttng_host: None) -> Iterator[Path]:
    """Scratch directory of this pytest process (sessiond home and log, app build), removed at
    the end unless PYRELAYD_TEST_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix="pyrelayd-lttng-"))
    yield path
    if os.environ.get("PYRELAYD_TEST_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sessiond(lttng_tmpdir: Path) -> Iterator[SessionDaemon]:
    daemon = SessionDaemon.start(lttng_tmpdir / "sessiond")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def apps(sessiond: SessionDaemon, lttng_tmpdir: Path) -> TracedApps:
    return TracedApps(sessiond, build_c_app(lttng_tmpdir / "build"))


@pytest.fixture
def relay_factory(
    request: pytest.FixtureRequest, tmp_path: Path, relay_kind: RelayKind
) -> Iterator[RelayFactory]:
    relays: list[Relay] = []

    def start(kind: RelayKind | None = None, extra_args: Sequence[str] = ()) -> Relay:
        relay = start_relay(kind or relay_kind, tmp_path / f"relay{len(relays)}", extra_args)
        relays.append(relay)
        return relay

    yield start

    died = [relay for relay in relays if not relay.is_running()]
    for relay in relays:
        relay.stop()
    if _test_failed(request.node) or died:
        for relay in relays:
            request.node.add_report_section(
                "teardown", f"{relay.kind} relay log ({relay.log_path})", relay.log_text()[-20000:]
            )
    if died:
        pytest.fail(
            "relay exited during the test: "
            + ", ".join(f"{r.kind} pid {r.pid} status {r.process.returncode}" for r in died)
        )


@pytest.fixture
def relay(relay_factory: RelayFactory) -> Relay:
    return relay_factory()


def _session_prefix(node_name: str) -> str:
    name = re.sub(r"^test_", "", node_name.split("[", 1)[0])
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:40]


@pytest.fixture
def session_factory(
    request: pytest.FixtureRequest,
    sessiond: SessionDaemon,
    relay_factory: RelayFactory,  # torn down after the sessions, which may still be streaming
) -> Iterator[SessionFactory]:
    if not sessiond.is_running():
        pytest.fail(
            f"lttng-sessiond (pid {sessiond.pid}) exited with status"
            f" {sessiond.process.returncode}:\n{sessiond.log_tail()}"
        )
    sessions: list[Session] = []
    prefix = _session_prefix(request.node.name)

    def create(
        relay: Relay,
        *,
        live_timer_us: int | None = None,
        base_path: str = "",
        snapshot: bool = False,
        name: str | None = None,
    ) -> Session:
        session = Session.create(
            sessiond,
            name or f"{prefix}-{len(sessions)}",
            relay,
            live_timer_us=live_timer_us,
            base_path=base_path,
            snapshot=snapshot,
        )
        sessions.append(session)
        return session

    yield create

    for session in sessions:
        if not session.destroyed:
            with contextlib.suppress(CommandError):
                session.lttng("destroy", session.name, check=False)
    if _test_failed(request.node):
        request.node.add_report_section("teardown", "lttng-sessiond log", sessiond.log_tail(200))


@pytest.fixture
def live_viewer_factory(tmp_path: Path) -> Iterator[LiveViewerFactory]:
    viewers: list[LiveViewer] = []

    def start(relay: Relay, session_name: str) -> LiveViewer:
        viewer = LiveViewer.start(relay, session_name, tmp_path / "viewers")
        viewers.append(viewer)
        return viewer

    yield start
    for viewer in viewers:
        viewer.stop()
