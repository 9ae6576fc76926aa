"""Differential testing of pyrelayd against the C `lttng-relayd`, from one recording.

A scenario runs once with the real session daemon streaming through the capture proxy
(`pyrelayd.capture.CaptureProxy`) in front of a *recording relay* (the C one), so the
recording holds both connections of every relay session with the C relay's replies. The
recording is then replayed into a fresh C `lttng-relayd` and into a fresh pyrelayd, started
with the same options; once each has settled, the two output trees must be identical: same
relative paths, same bytes.

Replaying, rather than streaming live to both relays, gives both relays exactly the same
input bytes in the same order (see `SequencedReplay`), so any difference is the relays' doing.

    capture = Capture.start(sessiond, workdir, relay_args)
    session = capture.create_session("name")
    ...  # enable, start, run apps, destroy
    replayed = capture.replay_into_both()
    assert replayed.differences() == []
    replayed.events()  # read back with babeltrace2
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import fcntl
import os
import socket
import struct
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pyrelayd.capture import CaptureProxy, RecordingError, ReplayError, read_recording
from pyrelayd.capture.plan import Close, ReplayPlan, SendRequest, build_plan
from pyrelayd.capture.recording import Direction, Event, Kind
from pyrelayd.capture.replay import _Replay

from .lttng_env import (
    CommandError,
    FileInfo,
    Relay,
    RelayKind,
    Session,
    SessionDaemon,
    TraceEvent,
    output_listing,
    read_trace,
    relative_dirs,
    start_relay,
    wait_until,
)

LOCALHOST = "127.0.0.1"
#: The relay behind the capture proxy while recording: the reference implementation.
RECORDING_RELAY: RelayKind = "c"
#: How long an output tree must stay unchanged before the relay is deemed done with it.
SETTLE_QUIET_S = 0.5
#: How long the peers must have sent nothing for the recording to be deemed complete, when
#: they keep connections open.
RECORDING_QUIET_S = 1.0
#: Differences listed in a failure message, at most.
MAX_LISTED_DIFFERENCES = 40
#: Name prefix of the directories a relay uses while it moves trace chunks around.
TMP_CHUNK_PREFIX = ".tmp_"


# --------------------------------------------------------------------------------------------
# The capture proxy, in a thread of its own


class ProxyThread:
    """A `CaptureProxy` served by an event loop in a background thread.

    It listens on free ports of 127.0.0.1 (picked by the kernel) and forwards to `relay`.
    """

    def __init__(self, recording: Path, relay: Relay) -> None:
        self.recording = recording
        self._relay = relay
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.control_address: tuple[str, int] = ("", 0)
        self.data_address: tuple[str, int] = ("", 0)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(),), name="capture-proxy", daemon=True
        )

    @classmethod
    def start(cls, recording: Path, relay: Relay, *, timeout: float = 10.0) -> ProxyThread:
        proxy = cls(recording, relay)
        proxy._thread.start()
        if not proxy._ready.wait(timeout):
            raise TimeoutError("the capture proxy did not start listening")
        if proxy._error is not None:
            raise RuntimeError("the capture proxy failed to start") from proxy._error
        return proxy

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        proxy = CaptureProxy(
            self.recording,
            control_listen=(LOCALHOST, 0),
            data_listen=(LOCALHOST, 0),
            control_relay=(LOCALHOST, self._relay.control_port),
            data_relay=(LOCALHOST, self._relay.data_port),
        )
        try:
            async with proxy:
                self.control_address = proxy.control_address
                self.data_address = proxy.data_address
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._ready.set()

    def url(self, base_path: str = "") -> str:
        """The `lttng create --set-url` value that streams through the proxy."""
        return f"net://{LOCALHOST}:{self.control_address[1]}:{self.data_address[1]}{base_path}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, close what is still open (recorded as closed), close the file."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the capture proxy did not stop")


def peers_have_closed(recording: Path) -> bool:
    """Whether every recorded connection was closed by its peer and then by the relay."""
    try:
        records = read_recording(recording)
    except RecordingError:  # read in the middle of a record being written
        return False
    opened = {r.connection for r in records if r.event == Event.OPEN}
    closed = {(r.connection, r.direction) for r in records if r.event == Event.CLOSE}
    return bool(opened) and all(
        (connection, direction) in closed
        for connection in opened
        for direction in (Direction.TO_RELAY, Direction.FROM_RELAY)
    )


# --------------------------------------------------------------------------------------------
# Replaying in order across connections


def _proc_net_address(host: str, port: int) -> str:
    """An IPv4 socket address as /proc/net/tcp writes it (address in host byte order)."""
    (address,) = struct.unpack("<I", socket.inet_aton(host))
    return f"{address:08X}:{port:04X}"


def bytes_unread_by_peer(sock: socket.socket) -> int:
    """Bytes written to a loopback TCP socket that its peer has not read yet: our unsent or
    unacknowledged bytes plus the peer socket's receive queue (from /proc/net/tcp)."""
    outgoing = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, outgoing)
        ours = _proc_net_address(*sock.getsockname()[:2])
        theirs = _proc_net_address(*sock.getpeername()[:2])
    except OSError:  # no longer connected: nothing more will be read
        return 0
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if fields[1:3] == [theirs, ours]:  # the peer's socket: local, remote
                return outgoing[0] + int(fields[4].split(":")[1], 16)
    return outgoing[0]


class SequencedReplay(_Replay):
    """`pyrelayd.capture.replay` with the recorded order kept *across* connections.

    The replay tool sends a control request as soon as the data recorded before it is
    written, so a relay may handle the request before that data: a ROTATE_STREAMS then finds
    a stream whose previous rotation still waits for its data and is refused, or a
    CLOSE_TRACE_CHUNK moves a chunk that streams still use. The real peers are protected
    from this only by their own latency. Here, before each control request (and control
    connection close), the replay waits until the relay has read everything sent on the
    data connections; both relays handle what they read before looking at another connection
    (C: one worker thread; pyrelayd: `BufferedProtocol.buffer_updated`), so each relay then
    sees every message in the recorded order.
    """

    DRAIN_TIMEOUT_S = 30.0
    DRAIN_POLL_S = 0.001

    def __init__(self, plan: ReplayPlan, control: tuple[str, int], data: tuple[str, int],
                 reply_timeout: float, close_timeout: float) -> None:  # fmt: skip
        super().__init__(plan, control, data, reply_timeout, close_timeout)
        self._unread: set[int] = set()  # data connections the relay may not have read yet

    async def _send(self, connection: int, raw: bytes) -> None:
        await super()._send(connection, raw)
        if raw and self._live[connection].kind == Kind.DATA:
            self._unread.add(connection)

    async def _request(self, step: SendRequest) -> None:
        await self._until_data_read()
        await super()._request(step)

    async def _close(self, step: Close) -> None:
        if self._live[step.connection].kind == Kind.CONTROL:
            await self._until_data_read()
        await super()._close(step)

    async def _until_data_read(self) -> None:
        deadline = time.monotonic() + self.DRAIN_TIMEOUT_S
        for connection in sorted(self._unread):
            live = self._live[connection]
            sock = live.writer.get_extra_info("socket")
            while not live.relay_closed and (
                live.writer.transport.get_write_buffer_size() or bytes_unread_by_peer(sock)
            ):
                if time.monotonic() >= deadline:
                    raise ReplayError(
                        f"the relay has not read data connection {connection} within "
                        f"{self.DRAIN_TIMEOUT_S:g} s"
                    )
                await asyncio.sleep(self.DRAIN_POLL_S)
        self._unread.clear()


def replay_in_order(
    recording: Path, control: tuple[str, int], data: tuple[str, int], *, timeout: float
) -> None:
    """Replay `recording` into the relay at `control`/`data` (see `SequencedReplay`)."""
    plan = build_plan(read_recording(recording))
    asyncio.run(SequencedReplay(plan, control, data, timeout, timeout).run())


# --------------------------------------------------------------------------------------------
# Output trees


def tree_state(root: Path) -> frozenset[tuple[str, int, int]]:
    """Every entry under `root` with its size and mtime: changes while a relay writes."""
    state = set()
    for directory, subdirs, files in os.walk(root):
        for name in (*subdirs, *files):
            path = Path(directory) / name
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                state.add((path.relative_to(root).as_posix(), info.st_size, info.st_mtime_ns))
    return frozenset(state)


def wait_tree_settled(root: Path, *, timeout: float = 30.0) -> None:
    """Wait until nothing under `root` changed for SETTLE_QUIET_S and no `.tmp_*` directory
    (a trace chunk being moved) is left."""
    last: frozenset[tuple[str, int, int]] | None = None
    changed_at = time.monotonic()

    def settled() -> bool:
        nonlocal last, changed_at
        state = tree_state(root)
        now = time.monotonic()
        if state != last:
            last, changed_at = state, now
            return False
        moving = any(
            part.startswith(TMP_CHUNK_PREFIX) for entry in state for part in entry[0].split("/")
        )
        return not moving and now - changed_at >= SETTLE_QUIET_S

    wait_until(settled, timeout=timeout, interval=0.1, what=f"{root} to settle")


def _first_difference(left: Path, right: Path) -> int | None:
    """Offset of the first byte where two files differ (None if one is a prefix of the
    other)."""
    with open(left, "rb") as a, open(right, "rb") as b:
        offset = 0
        while True:
            block_a, block_b = a.read(1 << 16), b.read(1 << 16)
            if not block_a or not block_b:
                return None
            for index, (byte_a, byte_b) in enumerate(zip(block_a, block_b, strict=False)):
                if byte_a != byte_b:
                    return offset + index
            if len(block_a) != len(block_b):
                return None
            offset += len(block_a)


def tree_differences(c_root: Path, py_root: Path) -> list[str]:
    """Human-readable differences between the C relay's and pyrelayd's output trees."""
    c_files: dict[str, FileInfo] = output_listing(c_root)
    py_files: dict[str, FileInfo] = output_listing(py_root)
    lines = []
    for path in sorted(c_files.keys() - py_files.keys()):
        lines.append(f"only in C:        {path} ({c_files[path].size} bytes)")
    for path in sorted(py_files.keys() - c_files.keys()):
        lines.append(f"only in pyrelayd: {path} ({py_files[path].size} bytes)")
    for path in sorted(c_files.keys() & py_files.keys()):
        c_info, py_info = c_files[path], py_files[path]
        if c_info != py_info:
            offset = _first_difference(c_root / path, py_root / path)
            where = "" if offset is None else f", first difference at byte {offset}"
            lines.append(
                f"different:        {path} (C {c_info.size} bytes, pyrelayd {py_info.size} "
                f"bytes{where})"
            )
    c_dirs, py_dirs = relative_dirs(c_root), relative_dirs(py_root)
    for path in sorted(c_dirs - py_dirs):
        lines.append(f"only in C:        {path}/")
    for path in sorted(py_dirs - c_dirs):
        lines.append(f"only in pyrelayd: {path}/")
    return lines


# --------------------------------------------------------------------------------------------
# Replays


@dataclasses.dataclass(frozen=True)
class Replayed:
    """One recording replayed into a fresh C relay and a fresh pyrelayd (both stopped)."""

    c_output: Path
    py_output: Path
    recorded_output: Path  # what the recording relay itself wrote, for diagnostics

    def differences(self) -> list[str]:
        return tree_differences(self.c_output, self.py_output)

    def describe(self, lines: Sequence[str]) -> str:
        recorded = tree_differences(self.recorded_output, self.c_output)
        more = len(lines) - MAX_LISTED_DIFFERENCES
        return "\n".join([
            f"output trees differ (C: {self.c_output}, pyrelayd: {self.py_output}):",
            *(f"  {line}" for line in lines[:MAX_LISTED_DIFFERENCES]),
            *([f"  ... and {more} more"] if more > 0 else []),
            "the recording relay's own tree "
            + ("is the same as the C replay's" if not recorded
               else f"differs from the C replay's in {len(recorded)} entries"),
        ])  # fmt: skip

    def events(self) -> list[TraceEvent]:
        """The events of the replayed trace, read with babeltrace2 (the bt2 bindings)."""
        return read_trace(self.py_output)


class Capture:
    """A recording relay behind a capture proxy, the sessions that stream through the proxy,
    and the relays the recording is replayed into. `close()` stops everything by pid."""

    def __init__(self, sessiond: SessionDaemon, workdir: Path, relay_args: Sequence[str]) -> None:
        self.sessiond = sessiond
        self.workdir = workdir
        self.relay_args = tuple(relay_args)
        self.recording = workdir / "relayd.capture"
        self.relays: list[Relay] = []
        self.sessions: list[Session] = []
        self.recording_relay: Relay | None = None
        self.proxy: ProxyThread | None = None

    @classmethod
    def start(
        cls, sessiond: SessionDaemon, workdir: Path, relay_args: Sequence[str] = ()
    ) -> Capture:
        """A recording relay started with `relay_args` (the options the replays get too)
        and a capture proxy in front of it."""
        capture = cls(sessiond, workdir, relay_args)
        try:
            capture.recording_relay = capture._start_relay(RECORDING_RELAY, "recorded")
            capture.proxy = ProxyThread.start(capture.recording, capture.recording_relay)
        except BaseException:
            capture.close()
            raise
        return capture

    def _start_relay(self, kind: RelayKind, name: str) -> Relay:
        # The C relay is that of the session daemon's release (2.16 for the sid peers).
        relay = start_relay(kind, self.workdir / name, self.relay_args,
                            sandbox=self.sessiond.sandbox)
        self.relays.append(relay)
        return relay

    def create_session(
        self,
        name: str,
        *,
        live_timer_us: int | None = None,
        base_path: str = "",
        snapshot: bool = False,
    ) -> Session:
        """`lttng create NAME` streaming through the proxy (as `Session.create` does to a
        relay)."""
        assert self.proxy is not None
        args = ["create", name, f"--set-url={self.proxy.url(base_path)}"]
        args += self.sessiond.create_options(live_timer_us=live_timer_us, snapshot=snapshot)
        self.sessiond.lttng(*args)
        session = Session(self.sessiond, name, None, live_timer_us, snapshot)
        self.sessions.append(session)
        return session

    def finish_recording(self, *, timeout: float = 15.0) -> Path:
        """Wait until the peers have closed every connection, or have sent nothing for
        RECORDING_QUIET_S, then stop the proxy.

        (`lttng destroy` returns once all data reached the relay, but the consumer daemon
        keeps the connections of a snapshot session open.) A connection still open is
        recorded as closed when the proxy stops, as the relay would see its peer go away.
        """
        assert self.proxy is not None
        last_size, grew_at = -1, time.monotonic()

        def done() -> bool:
            nonlocal last_size, grew_at
            size = self.recording.stat().st_size
            if size != last_size:
                last_size, grew_at = size, time.monotonic()
            quiet = time.monotonic() - grew_at >= RECORDING_QUIET_S
            return quiet or peers_have_closed(self.recording)

        wait_until(done, timeout=timeout, interval=0.05, what="the peers to finish sending")
        self.proxy.stop()
        return self.recording

    def replay_into(self, kind: RelayKind, *, timeout: float = 60.0) -> Path:
        """Replay the recording into a fresh relay of `kind`; once its output has settled,
        stop it; return its output directory."""
        relay = self._start_relay(kind, f"replay-{kind}")
        replay_in_order(
            self.recording,
            control=(LOCALHOST, relay.control_port),
            data=(LOCALHOST, relay.data_port),
            timeout=timeout,
        )
        wait_tree_settled(relay.output_dir, timeout=timeout)
        if not relay.is_running():
            raise RuntimeError(
                f"{kind} relay exited during the replay (status {relay.process.returncode})"
            )
        relay.stop()
        return relay.output_dir

    def replay_into_both(self) -> Replayed:
        """Finish the recording and replay it into a fresh C relay and a fresh pyrelayd."""
        recording = self.finish_recording()
        assert self.recording_relay is not None
        wait_tree_settled(self.recording_relay.output_dir)
        self.recording_relay.stop()
        assert recording.stat().st_size > 0
        return Replayed(
            c_output=self.replay_into("c"),
            py_output=self.replay_into("py"),
            recorded_output=self.recording_relay.output_dir,
        )

    def logs(self) -> dict[str, str]:
        """Each relay's log, by a readable name (for failure reports)."""
        return {
            f"{relay.kind} relay {relay.log_path.parent.name} ({relay.log_path})": relay.log_text()
            for relay in self.relays
        }

    def close(self) -> None:
        """Destroy leftover sessions, stop the proxy and every relay (by pid)."""
        for session in self.sessions:
            if not session.destroyed:
                with contextlib.suppress(CommandError):
                    session.lttng("destroy", session.name, check=False)
        if self.proxy is not None:
            self.proxy.stop()
        for relay in self.relays:
            relay.stop()
