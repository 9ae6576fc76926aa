"""Helpers of the live-viewer integration tests (test_live_real.py, test_live_hostile.py).

* `RawViewer`: a blocking socket speaking the viewer protocol byte by byte (through the codec
  `pyrelayd.protocol.viewer`), for viewers that misbehave on purpose.
* `BackgroundFollow`: our own `LiveClient.follow` running in a thread, collecting the events
  it yields while the test drives lttng synchronously.
* `reassemble_trace`: writes what a live client received (metadata and packets) as a CTF
  directory, so babeltrace2 can decode the events our client saw.
* Viewer bookkeeping: babeltrace2 viewers each in their own directory, polling what they
  printed, waiting for the relay to count attached viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from pyrelayd.client.viewer import (
    Inactivity,
    LiveClient,
    LiveEvent,
    LiveFollow,
    LiveTrace,
    Packet,
    Seek,
    StreamEnd,
)
from pyrelayd.protocol.viewer import Connect, Request, encode_request

from .lttng_env import (
    APP_ENVIRONMENT,
    HOSTNAME,
    LiveViewer,
    NamespacedPopen,
    Relay,
    Session,
    TracedApps,
    list_live_sessions,
    read_trace,
    sequence_numbers,
    stop_process,
    text_sequence_numbers,
    wait_until,
)

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


# --------------------------------------------------------------------------------------------
# Applications and on-disk progress


def start_pinned_app(
    apps: TracedApps,
    count: int,
    *,
    cpu: int,
    delay_us: int = 0,
    payload_bytes: int = 0,
    first_seq: int = 0,
) -> NamespacedPopen:
    """The C test app pinned to one CPU, so all its events go to one per-CPU stream."""
    argv = apps.c_app_argv(
        count, delay_us=delay_us, payload_bytes=payload_bytes, first_seq=first_seq
    )
    return apps.sessiond.popen(["taskset", "-c", str(cpu), *argv], env=APP_ENVIRONMENT)


def session_output(relay: Relay, session: Session) -> Path | None:
    """`<output>/<host>/<session>-<datetime>` once the relay created it."""
    found = sorted((relay.output_dir / HOSTNAME).glob(f"{session.name}-*"))
    return found[0] if found else None


def indexed_packets(relay: Relay, session: Session, stream_file: str) -> int:
    """Complete records in the index files of a stream (e.g. `channel0_1`) of the session.

    Tolerates a record being written: only whole records count.
    """
    directory = session_output(relay, session)
    if directory is None:
        return 0
    total = 0
    for index_file in directory.rglob(f"index/{stream_file}*.idx"):
        try:
            data = index_file.read_bytes()
        except FileNotFoundError:
            continue
        if len(data) < 16:
            continue
        entry_length = struct.unpack_from(">I", data, 12)[0]
        total += (len(data) - 16) // entry_length
    return total


# --------------------------------------------------------------------------------------------
# babeltrace2 viewers


def printed_seqs(viewer: LiveViewer) -> list[int]:
    return text_sequence_numbers(viewer.lines())


def wait_printed(
    viewer: LiveViewer,
    predicate: Callable[[list[int]], bool],
    *,
    timeout: float,
    what: str,
) -> list[int]:
    """Poll what babeltrace2 printed until `predicate(seqs)` holds; fail if it exits first."""

    def check() -> list[int] | None:
        seqs = printed_seqs(viewer)
        if predicate(seqs):
            return seqs or [-1]
        if viewer.process.poll() is not None:
            raise AssertionError(
                f"babeltrace2 exited ({viewer.process.returncode}) before {what}; printed "
                f"{seqs[:5]}...{seqs[-5:]}\n{viewer.stderr()}"
            )
        return None

    try:
        wait_until(check, timeout=timeout, interval=0.05, what=what)
    except TimeoutError:
        seqs = printed_seqs(viewer)
        raise AssertionError(
            f"babeltrace2 did not print {what} within {timeout} s; printed {len(seqs)} events "
            f"{seqs[:5]}...{seqs[-5:]}\n{viewer.stderr()}"
        ) from None
    return printed_seqs(viewer)


def session_clients(relay: Relay, session_name: str) -> int:
    """The viewer count LIST_SESSIONS gives for a session (summed over its relay sessions)."""
    return sum(s.clients for s in list_live_sessions(relay.live_port) if s.name == session_name)


def wait_clients(relay: Relay, session_name: str, count: int, *, timeout: float = 20.0) -> None:
    wait_until(
        lambda: session_clients(relay, session_name) == count,
        timeout=timeout,
        interval=0.05,
        what=f"{count} viewers attached to {session_name}",
    )


def live_session_ids(relay: Relay, session_name: str) -> list[int]:
    return [s.id for s in list_live_sessions(relay.live_port) if s.name == session_name]


class ViewerPool:
    """babeltrace2 live viewers, each with its own output files; all stopped by `stop_all`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.viewers: list[LiveViewer] = []

    def start(self, relay: Relay, session_name: str) -> LiveViewer:
        viewer = LiveViewer.start(
            relay, session_name, self.directory / f"viewer{len(self.viewers)}"
        )
        self.viewers.append(viewer)
        return viewer

    def stop_all(self) -> None:
        for viewer in self.viewers:
            viewer.stop()


def kill_viewer(viewer: LiveViewer) -> None:
    """SIGKILL a babeltrace2 we started (by pid) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        viewer.process.kill()  # babeltrace2 itself, also when it runs in a sandbox
    viewer.process.wait(timeout=10)


def assert_viewer_ended_cleanly(viewer: LiveViewer, timeout: float = 30.0) -> list[int]:
    """babeltrace2 ends by itself (session destroyed) with status 0; returns its seqs."""
    status = viewer.wait(timeout=timeout)
    assert status == 0, f"babeltrace2 exited with {status}:\n{viewer.stderr()}"
    return printed_seqs(viewer)


# --------------------------------------------------------------------------------------------
# Raw viewer sockets


class ReplyType(Protocol[R_co]):
    """What the codec's reply classes offer (`missing` then `decode`)."""

    def missing(self, buffer: bytes, minor: int) -> int: ...

    def decode(self, buffer: bytes, minor: int) -> R_co: ...


class RawViewer:
    """A blocking viewer socket; every read has a timeout, so a silent relay fails the test."""

    def __init__(
        self, port: int, *, timeout: float = 5.0, receive_buffer: int | None = None
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.minor = 4

    def __enter__(self) -> RawViewer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError(
                    f"relay closed the connection after {len(data)} of {size} bytes"
                )
            data += chunk
        return bytes(data)

    def receive(self, reply_type: ReplyType[R]) -> R:
        buffer = b""
        while need := reply_type.missing(buffer, self.minor):
            buffer += self.receive_exactly(need)
        return reply_type.decode(buffer, self.minor)

    def call(self, request: Request, reply_type: ReplyType[R]) -> R:
        self.send(encode_request(request))
        return self.receive(reply_type)

    def connect(self, minor: int = 15) -> Connect:
        """CONNECT announcing viewer protocol 2.`minor` (15 sees CTF 2 sessions; babeltrace2
        2.0 announces 4, which sees CTF 1.8 sessions only)."""
        reply = self.call(Connect(minor=minor), Connect)
        self.minor = min(minor, reply.minor)
        return reply

    def read_until_closed(self, timeout: float = 5.0) -> bytes:
        """Everything the relay sends until it closes the connection (a reset counts too);
        raises TimeoutError if the connection stays open."""
        self.sock.settimeout(timeout)
        data = bytearray()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return bytes(data)
            except TimeoutError:
                raise TimeoutError(
                    f"the relay kept the connection open (got {bytes(data)!r})"
                ) from None
            if not chunk:
                return bytes(data)
            data += chunk

    def reset(self) -> None:
        """Close with an RST (SO_LINGER 0), as a killed process with unread data would."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --------------------------------------------------------------------------------------------
# Our live client in a background thread


class BackgroundFollow:
    """`LiveClient.follow(session_ids, seek)` run in a thread; `events` fills as it goes."""

    def __init__(
        self, relay: Relay, session_ids: Sequence[int], seek: Seek, *, retry_delay: float = 0.02
    ) -> None:
        self.port = relay.live_port
        self.session_ids = list(session_ids)
        self.seek = seek
        self.retry_delay = retry_delay
        self.events: list[LiveEvent] = []
        self.traces: dict[int, LiveTrace] = {}
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BackgroundFollow:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            if self.error is None:
                self.error = error
        finally:
            self.finished.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            async with LiveClient("127.0.0.1", self.port, request_timeout=30.0) as client:
                follow: LiveFollow = client.follow(
                    self.session_ids, self.seek, retry_delay=self.retry_delay
                )
                self.traces = follow.traces
                async for event in follow:
                    self.events.append(event)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        if not self.finished.is_set() and self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)

    def wait_finished(self, timeout: float = 30.0) -> None:
        """The iteration ended by itself (every stream hung up); re-raise its error."""
        if not self.finished.wait(timeout):
            self.stop()
            raise AssertionError(
                f"our live client still following after {timeout} s ({len(self.events)} events)"
            )
        if self.error is not None:
            raise AssertionError(f"our live client failed: {self.error!r}") from self.error

    def wait_for(
        self, predicate: Callable[[list[LiveEvent]], bool], *, timeout: float, what: str
    ) -> None:
        def check() -> bool:
            if predicate(list(self.events)):
                return True
            if self.finished.is_set():
                raise AssertionError(f"our live client ended before {what}: {self.error!r}")
            return False

        wait_until(check, timeout=timeout, interval=0.02, what=what)

    @property
    def packets(self) -> list[Packet]:
        return [event for event in self.events if isinstance(event, Packet)]

    @property
    def inactivities(self) -> list[Inactivity]:
        return [event for event in self.events if isinstance(event, Inactivity)]

    @property
    def stream_ends(self) -> list[StreamEnd]:
        return [event for event in self.events if isinstance(event, StreamEnd)]


@contextlib.contextmanager
def following(relay: Relay, session_ids: Sequence[int], seek: Seek) -> Iterator[BackgroundFollow]:
    follow = BackgroundFollow(relay, session_ids, seek).start()
    try:
        yield follow
    finally:
        follow.stop()


def reassemble_trace(follow: BackgroundFollow, directory: Path) -> Path:
    """Write the metadata and packets `follow` received as CTF directories (one per trace)."""
    for trace_id, trace in follow.traces.items():
        trace_dir = directory / f"trace{trace_id}"
        trace_dir.mkdir(parents=True, exist_ok=True)
        (trace_dir / "metadata").write_bytes(trace.metadata)
    for packet in follow.packets:
        path = (
            directory
            / f"trace{packet.trace_id}"
            / (f"{packet.stream.channel_name}-{packet.stream_id}")
        )
        with open(path, "ab") as file:
            file.write(packet.data)
    return directory


def client_seqs(follow: BackgroundFollow, directory: Path) -> list[int]:
    """The `seq` of every test event our client received, decoded by babeltrace2."""
    return sequence_numbers(read_trace(reassemble_trace(follow, directory)))


def stop_all(processes: Sequence[subprocess.Popen[str]]) -> None:
    for process in processes:
        stop_process(process, 2.0)
