"""Fixtures driving real LTTng peers (session daemon, consumer daemons, traced apps,
babeltrace2) against a relay daemon: pyrelayd by default, the C `lttng-relayd` of the peers'
release with `PYRELAYD_TEST_RELAY=c`, or both (every relay test runs twice) with
`PYRELAYD_TEST_RELAY=both`.

Every test that uses the peers runs once per installation of them (`peers`): "2.13" (Debian
12: LTTng 2.13, babeltrace2 2.0) and "2.16" (the sid chroot of scripts/peers-sid: LTTng 2.16
in its default CTF 2, babeltrace2 2.1); tests marked `ctf_1_8_too` also run with "2.16-ctf-1.8"
(LTTng 2.16 sessions created with `--trace-format=ctf-1.8`). PYRELAYD_TEST_PEERS=2.13,2.16
picks others. Peers that cannot run here are skipped, or fail the tests when
PYRELAYD_TEST_REQUIRE_PEERS=1 (scripts/test sets it).

Fixtures (the objects they return are those of `pyrelayd_testkit`, imported through lttng_env.py):

* `peers` (session scope, parametrized): the `Peers` in use.
* `sessiond` (session scope): a root `lttng-sessiond` of those peers in its own sandbox.
* `apps` (session scope): `TracedApps`, runs the C test app and the Python-agent app there.
* `relay_kind`: "c" or "py", parametrized from PYRELAYD_TEST_RELAY.
* `relay_factory`: `(kind=None, extra_args=()) -> Relay`, started, listening, stopped after the
  test (a relay that died during the test fails it).
* `relay`: `relay_factory()` with default arguments.
* `session_factory`: `(relay, *, live_timer_us=None, base_path="", snapshot=False,
  name=None) -> Session`; sessions left undestroyed are destroyed after the test.
* `live_viewer_factory`: `(relay, session_name) -> LiveViewer`, stopped after the test.

Environment: PYRELAYD_TEST_RELAY (py | c | both), PYRELAYD_TEST_PEERS, PYRELAYD_TEST_KEEP=1
keeps the session daemon's directory (its log) after the run, PYRELAYD_TEST_RELAY_VERBOSE=1
starts relays with -vvv. On failure the relay logs and the session daemon's log tail are
attached to the report.
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

from tests.requirements import require_peers

from .lttng_env import (
    ALL_PEERS,
    PEERS_ENV_VAR,
    RELAY_ENV_VAR,
    RELAY_KINDS,
    CommandError,
    LiveViewer,
    Peers,
    Relay,
    RelayKind,
    Session,
    SessionDaemon,
    TracedApps,
    build_c_app,
    start_relay,
    trace_tools_of,
)

#: The peers every test runs with, unless PYRELAYD_TEST_PEERS says otherwise.
DEFAULT_PEERS = ("2.13", "2.16")
#: ... and those of the tests marked `ctf_1_8_too`.
CTF_1_8_TOO_PEERS = ("2.13", "2.16", "2.16-ctf-1.8")

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


def selected_peers(marked_ctf_1_8_too: bool) -> list[str]:
    value = os.environ.get(PEERS_ENV_VAR, "").strip()
    if not value:
        return list(CTF_1_8_TOO_PEERS if marked_ctf_1_8_too else DEFAULT_PEERS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_PEERS]
    if unknown:
        raise pytest.UsageError(
            f"{PEERS_ENV_VAR}: unknown peers {unknown}; known: {', '.join(ALL_PEERS)}"
        )
    return names


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "ctf_1_8_too: also run with LTTng 2.16 peers writing CTF 1.8"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "relay_kind" in metafunc.fixturenames:
        kinds = selected_relay_kinds()
        metafunc.parametrize("relay_kind", kinds, ids=[f"relay={k}" for k in kinds])
    if "peers" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("ctf_1_8_too") is not None
        names = selected_peers(marked)
        metafunc.parametrize(
            "peers", names, ids=[f"lttng={n}" for n in names], indirect=True, scope="session"
        )


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
def peers(request: pytest.FixtureRequest) -> Peers:
    """The installation of the LTTng peers this test runs with (parametrized)."""
    return require_peers(ALL_PEERS[request.param])


@pytest.fixture(scope="session")
def lttng_tmpdir(peers: Peers) -> Iterator[Path]:
    """Scratch directory of this pytest process and peers (sessiond home and log, app build),
    removed at the end unless PYRELAYD_TEST_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix=f"pyrelayd-lttng-{peers.name}-"))
    yield path
    if os.environ.get("PYRELAYD_TEST_KEEP") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sessiond(peers: Peers, lttng_tmpdir: Path) -> Iterator[SessionDaemon]:
    daemon = SessionDaemon.start(lttng_tmpdir / "sessiond", peers)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def apps(sessiond: SessionDaemon, lttng_tmpdir: Path) -> TracedApps:
    return TracedApps(sessiond, build_c_app(lttng_tmpdir / "build", sessiond.sandbox))


@pytest.fixture(autouse=True)
def _trace_tools(request: pytest.FixtureRequest) -> Iterator[None]:
    """babeltrace2 and bt2 of the peers in use (2.1 in the sid chroot, else the host's)."""
    if "sessiond" not in request.fixturenames:
        yield
        return
    daemon: SessionDaemon = request.getfixturevalue("sessiond")
    with trace_tools_of(daemon.sandbox):
        yield


@pytest.fixture
def relay_factory(
    request: pytest.FixtureRequest, tmp_path: Path, relay_kind: RelayKind
) -> Iterator[RelayFactory]:
    relays: list[Relay] = []
    # The C relay is that of the peers' release when the test has peers (2.16 in the chroot).
    sandbox = (
        request.getfixturevalue("sessiond").sandbox if "sessiond" in request.fixturenames
        else None
    )

    def start(kind: RelayKind | None = None, extra_args: Sequence[str] = ()) -> Relay:
        relay = start_relay(kind or relay_kind, tmp_path / f"relay{len(relays)}", extra_args,
                            sandbox=sandbox)
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
