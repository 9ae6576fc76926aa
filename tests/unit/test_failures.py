"""Close and release paths finish whatever the file system does on the way.

Each test makes one `os` call fail (ENOSPC or EIO) for one file or directory of one session,
as a full or failing disk would, and checks that what follows still happens: the stream is
closed and unregistered, its trace chunk references are dropped, the chunk is archived as far
as it can be, the session leaves the relay, disk errors are counted, no descriptor is left
open, and another session of the same relay goes on writing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyrelayd.model.chunk import CloseCommand
from pyrelayd.model.counters import ErrorKind
from pyrelayd.model.relay import Relay
from pyrelayd.model.session import RelaySession
from pyrelayd.model.stream import RelayStream
from pyrelayd.protocol.control import ControlHandler
from pyrelayd.protocol.data import DataHandler
from pyrelayd.protocol.index import read_index_file
from pyrelayd.protocol.relayd import (
    CloseStream,
    Command,
    DataFramer,
    DataHeader,
    DataPending,
    ReturnCode,
    SendIndex,
    Version,
    generic_reply,
)
from pyrelayd.storage import paths
from pyrelayd.storage.fdpool import PooledFile
from tests.unit.conftest import CREATION_TIME

STREAM_PATH = "ust/uid/1000/64-bit"
T1 = 1704165000
T2 = 1704165600
ERRNOS = pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO],
                                 ids=lambda code: errno.errorcode[code])


class Faults:
    """Makes one `os` function fail with `code`, once, for the arguments a test aims at
    (once: a descriptor number is reused by the next file opened)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.injected = 0

    def fail(self, name: str, code: int, aimed_at: Callable[..., bool]) -> None:
        real = getattr(os, name)

        def failing(*args: Any, **kwargs: Any) -> Any:
            if not self.injected and aimed_at(*args):
                self.injected += 1
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        self.monkeypatch.setattr(os, name, failing)

    def fail_on_file(self, name: str, code: int, file: PooledFile | None) -> None:
        assert file is not None
        fd = file.fileno()
        self.fail(name, code, lambda first, *_: first == fd)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    return Faults(monkeypatch)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def packet(stream: RelayStream, net_seq_num: int, payload: bytes) -> None:
    """One packet of the data connection, then its SEND_INDEX, as one read each (batched)."""
    with stream.session.relay.fd_pool.batch():
        stream.begin_packet(len(payload))
        stream.append(payload)
        stream.end_packet(net_seq_num, len(payload), 0)
    with stream.session.relay.fd_pool.batch():
        stream.add_index(SendIndex(stream.handle, net_seq_num, len(payload) * 8,
                                   len(payload) * 8, 100 * net_seq_num, 100 * net_seq_num + 99,
                                   0, 3, 4, net_seq_num))


def connection_lost(session: RelaySession) -> None:
    """What the control connection does when it fails: abort, close, let go."""
    session.abort()
    session.close()
    session.put()


def data_file(stream: RelayStream) -> Path:
    assert stream.chunk is not None
    return stream.chunk.directory / STREAM_PATH / stream.channel_name


class Scene:
    """Two sessions of one relay, each with a stream that wrote one packet; the victim's
    trace chunk 0 is closed as a rotation would (MOVE_TO_COMPLETED) but still held by its
    stream, so that it is archived when the stream lets go of it."""

    def __init__(self, relay: Relay, make_session: Callable[..., RelaySession]) -> None:
        self.relay = relay
        self.pool_before = relay.fd_pool.open_count
        self.fds_before = open_fds()
        self.session = make_session(name="victim")
        self.other_session = make_session(name="other")
        self.stream = relay.add_stream(self.session, "channel0_0", STREAM_PATH, 0, 0)
        self.other = relay.add_stream(self.other_session, "channel0_0", STREAM_PATH, 0, 0)
        packet(self.stream, 0, b"a" * 64)
        packet(self.other, 0, b"A" * 64)
        relay.create_trace_chunk(self.session, 1, T1, None)
        relay.close_trace_chunk(self.session, 0, T2, CloseCommand.MOVE_TO_COMPLETED)
        self.chunk = self.stream.chunk
        assert self.chunk is not None and self.chunk.references == 1  # the stream's

    @property
    def archive(self) -> Path:
        assert self.chunk is not None and self.chunk.id is not None
        return (self.session.directory / paths.ARCHIVES_DIRECTORY
                / paths.chunk_name(self.chunk.id, self.chunk.creation_time, T2))

    def check_released(self) -> None:
        """The victim is gone from the relay, its chunks too; no descriptor left."""
        assert self.stream.closed
        assert self.relay.find_stream(self.stream.handle) is None
        assert self.stream.data_file is None and self.stream.index_file is None
        assert self.stream.chunk is None and self.stream.pending_indexes == {}
        assert self.chunk is not None and self.chunk.references == 0
        assert self.relay.find_chunk(self.session, 0) is None
        assert self.session.released and self.session.id not in self.relay.sessions
        assert self.session.current_chunk is None
        assert self.relay.find_chunk(self.session, 1) is None

    def check_other_session_goes_on(self) -> None:
        packet(self.other, 1, b"B" * 64)
        assert data_file(self.other).read_bytes() == b"A" * 64 + b"B" * 64
        self.other.request_close(1)
        self.other_session.close()
        self.other_session.put()
        assert self.other_session.released
        assert self.relay.sessions == {}
        assert self.relay.fd_pool.open_count == self.pool_before
        assert open_fds() == self.fds_before


@pytest.fixture
def scene(relay: Relay, make_session: Callable[..., RelaySession]) -> Scene:
    return Scene(relay, make_session)


# --------------------------------------------------------------------------- writes


@ERRNOS
def test_a_failed_batched_packet_write_closes_only_its_stream(
        scene: Scene, faults: Faults, code: int) -> None:
    # The batch of one read of the data connection: the write that fails is reported to the
    # stream whose file it is; the batch (the connection) goes on.
    stream = scene.stream
    faults.fail_on_file("pwritev", code, stream.data_file)
    second = scene.relay.add_stream(scene.session, "channel0_1", STREAM_PATH, 0, 0)

    with scene.relay.fd_pool.batch():
        stream.begin_packet(64)
        stream.append(b"b" * 64)
        second.begin_packet(64)
        second.append(b"c" * 64)

    assert faults.injected == 1
    assert stream.closed and scene.relay.find_stream(stream.handle) is None
    assert scene.relay.failed_stream(scene.session, stream.handle) is stream
    assert scene.relay.failed_stream(scene.other_session, stream.handle) is None
    assert scene.relay.counters.errors[ErrorKind.DISK] == 1
    assert isinstance(stream.close_error, OSError) and stream.close_error.errno == code
    # The rest of the session goes on: its other stream wrote its packet.
    second.end_packet(0, 64, 0)
    assert data_file(second).read_bytes() == b"c" * 64
    second.request_close(0)
    connection_lost(scene.session)
    scene.check_released()
    assert scene.relay.failed_stream(scene.session, stream.handle) is None  # forgotten
    assert (scene.archive / STREAM_PATH / "channel0_0").read_bytes() == b"a" * 64
    scene.check_other_session_goes_on()


@ERRNOS
def test_a_failed_direct_packet_write_is_raised_to_the_caller(
        scene: Scene, faults: Faults, code: int) -> None:
    # A write outside a batch raises at once; the data handler gives it to the stream.
    stream = scene.stream
    faults.fail_on_file("pwrite", code, stream.data_file)

    with pytest.raises(OSError) as raised:
        stream.write(b"b" * 64)
    assert raised.value.errno == code and faults.injected == 1
    connection_lost(scene.session)  # what the server does with the error

    scene.check_released()
    assert (scene.archive / STREAM_PATH / "channel0_0").read_bytes() == b"a" * 64
    scene.check_other_session_goes_on()


@ERRNOS
@pytest.mark.parametrize("which", ["data", "index"])
def test_a_stream_whose_last_writes_fail_when_it_closes_is_closed_and_reported(
        scene: Scene, faults: Faults, code: int, which: str) -> None:
    # CLOSE_STREAM came first; the last packet's read writes it and closes the stream in the
    # same batch: the closing flush is the write that fails.
    stream = scene.stream
    stream.request_close(1)
    faults.fail_on_file("pwritev", code,
                        stream.data_file if which == "data" else
                        stream.index_file.file if stream.index_file else None)
    stream.add_index(SendIndex(stream.handle, 1, 512, 512, 100, 199, 0, 3, 4, 1))

    with scene.relay.fd_pool.batch():
        stream.begin_packet(64)
        stream.append(b"b" * 64)
        stream.end_packet(1, 64, 0)  # the last announced packet: the stream closes

    assert faults.injected == 1
    assert isinstance(stream.close_error, OSError) and stream.close_error.errno == code
    assert scene.relay.counters.errors[ErrorKind.DISK] == 1
    assert stream.closed and scene.relay.find_stream(stream.handle) is None
    scene.session.close()
    scene.session.put()
    scene.check_released()
    archived = scene.archive / STREAM_PATH
    index = read_index_file((archived / "index/channel0_0.idx").read_bytes())[1]
    if which == "data":
        assert (archived / "channel0_0").read_bytes() == b"a" * 64  # the last packet is lost
        assert [record.offset for record in index] == [0, 64]
    else:
        assert (archived / "channel0_0").read_bytes() == b"a" * 64 + b"b" * 64
        assert [record.offset for record in index] == [0]
    scene.check_other_session_goes_on()


@ERRNOS
def test_a_failed_index_header_write_loses_the_connection_and_releases_everything(
        relay: Relay, make_session: Callable[..., RelaySession], faults: Faults,
        code: int) -> None:
    pool_before, fds_before = relay.fd_pool.open_count, open_fds()
    session = make_session()
    stream = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    faults.fail("pwrite", code, lambda fd, *_: True)  # the index header: the first pwrite

    with pytest.raises(OSError):
        packet(stream, 0, b"a" * 64)
    connection_lost(session)

    assert faults.injected == 1
    assert stream.closed and session.released and relay.sessions == {}
    assert relay.fd_pool.open_count == pool_before and open_fds() == fds_before


@ERRNOS
def test_a_failed_truncate_while_rotating_still_drops_both_chunks(
        relay: Relay, make_session: Callable[..., RelaySession], faults: Faults,
        code: int) -> None:
    pool_before, fds_before = relay.fd_pool.open_count, open_fds()
    session = make_session()
    stream = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    packet(stream, 0, b"a" * 8)
    with relay.fd_pool.batch():  # the first packet of the next chunk, before the rotation
        stream.begin_packet(8)
        stream.append(b"b" * 8)
        stream.end_packet(1, 8, 0)
    relay.create_trace_chunk(session, 1, T1, None)
    old_chunk, next_chunk = stream.chunk, session.current_chunk
    assert old_chunk is not None and next_chunk is not None
    faults.fail("ftruncate", code, lambda fd, size: True)

    with pytest.raises(OSError):  # packet 1 moves to the next chunk: the old file is truncated
        stream.set_pending_rotation(next_chunk, 1)
    relay.close_trace_chunk(session, 0, T2, CloseCommand.MOVE_TO_COMPLETED)
    connection_lost(session)

    assert faults.injected == 1
    assert stream.closed and stream.rotation is None and stream.chunk is None
    assert old_chunk.references == 0 and next_chunk.references == 0
    assert session.released and relay.sessions == {}
    assert relay.fd_pool.open_count == pool_before and open_fds() == fds_before
    archived = session.directory / paths.ARCHIVES_DIRECTORY
    assert [entry.name for entry in archived.iterdir()] == [
        paths.chunk_name(0, old_chunk.creation_time, T2)]


# --------------------------------------------------------------------------- renames, deletes


@ERRNOS
def test_a_chunk_that_cannot_be_archived_is_still_released(
        scene: Scene, faults: Faults, code: int) -> None:
    faults.fail("rename", code,
                lambda source, destination: paths.ARCHIVES_DIRECTORY in str(destination))

    scene.stream.request_close(0)  # its last reference on chunk 0: the archive fails

    assert faults.injected == 1
    assert scene.relay.counters.errors[ErrorKind.DISK] == 1
    scene.session.close()
    scene.session.put()
    scene.check_released()
    assert not scene.archive.exists()
    left = scene.session.directory / paths.TMP_OLD_CHUNK / STREAM_PATH / "channel0_0"
    assert left.read_bytes() == b"a" * 64  # where it was, for an operator to move
    scene.check_other_session_goes_on()


@ERRNOS
def test_a_chunk_that_cannot_leave_the_session_directory_archives_what_moved(
        relay: Relay, make_session: Callable[..., RelaySession], faults: Faults,
        code: int) -> None:
    session = make_session()  # chunk 0 lives in the session directory itself
    kernel = relay.add_stream(session, "channel0_0", "kernel", 0, 0)
    ust = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    packet(kernel, 0, b"k" * 8)
    packet(ust, 0, b"u" * 8)
    relay.close_trace_chunk(session, 0, T2, CloseCommand.MOVE_TO_COMPLETED)
    faults.fail("rename", code, lambda source, destination: Path(source).name == "kernel")

    connection_lost(session)

    assert faults.injected == 1 and relay.counters.errors[ErrorKind.DISK] == 1
    assert session.released and relay.sessions == {}
    archive = session.directory / paths.ARCHIVES_DIRECTORY / paths.chunk_name(0, CREATION_TIME, T2)
    assert (archive / STREAM_PATH / "channel0_0").read_bytes() == b"u" * 8
    assert (session.directory / "kernel/channel0_0").read_bytes() == b"k" * 8


@ERRNOS
def test_a_cleared_chunk_deletes_every_file_it_can(
        relay: Relay, make_session: Callable[..., RelaySession], faults: Faults,
        code: int) -> None:
    session = make_session()
    streams = [relay.add_stream(session, f"channel0_{n}", STREAM_PATH, 0, 0) for n in range(3)]
    for stream in streams:
        packet(stream, 0, b"x" * 8)
    kept = data_file(streams[1])
    relay.create_trace_chunk(session, 1, T1, None)
    relay.close_trace_chunk(session, 0, T2, CloseCommand.DELETE)
    faults.fail("unlink", code, lambda path, *_: Path(path).name == kept.name)

    connection_lost(session)

    assert faults.injected == 1 and relay.counters.errors[ErrorKind.DISK] == 1
    assert session.released and relay.sessions == {}
    old = session.directory / paths.TMP_OLD_CHUNK / STREAM_PATH
    assert sorted(path.name for path in old.rglob("*") if path.is_file()) == ["channel0_1"]


# --------------------------------------------------------------------------- shutdown


@ERRNOS
def test_shutdown_closes_every_session_when_one_fails_to_write(
        relay: Relay, make_session: Callable[..., RelaySession], faults: Faults,
        code: int) -> None:
    pool_before, fds_before = relay.fd_pool.open_count, open_fds()
    sessions = [make_session(name=f"s{n}") for n in range(3)]
    streams = [relay.add_stream(s, "channel0_0", STREAM_PATH, 0, 0) for s in sessions]
    faults.fail_on_file("pwritev", code, streams[0].data_file)

    with relay.fd_pool.batch():
        for stream in streams:
            stream.begin_packet(8)
            stream.append(b"x" * 8)
        relay.shutdown()  # the streams close with their packet still to write

    assert faults.injected == 1 and relay.counters.errors[ErrorKind.DISK] == 1
    assert all(stream.closed for stream in streams) and relay.streams == {}
    for session in sessions:
        session.put()  # their control connections go
    assert relay.sessions == {}
    assert relay.fd_pool.open_count == pool_before and open_fds() == fds_before
    for session in sessions[1:]:
        assert (session.directory / STREAM_PATH / "channel0_0").read_bytes() == b"x" * 8


# --------------------------------------------------------------------------- connections


def data_packet(stream: RelayStream, net_seq_num: int, payload: bytes) -> bytes:
    return DataHeader(stream.handle, net_seq_num, len(payload), 0).encode() + payload


@ERRNOS
def test_the_connections_of_a_session_go_on_past_a_stream_that_cannot_be_written(
        relay: Relay, make_session: Callable[..., RelaySession], faults: Faults,
        code: int) -> None:
    """One stream's file fails in the read of the data connection that carries packets of
    two streams: that stream is closed and reported; its later packets and SEND_INDEX are
    accepted and dropped, DATA_PENDING says nothing is pending for it, CLOSE_STREAM is OK;
    the other stream of the same session gets every byte, over the same connections."""
    session = make_session()
    broken = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    healthy = relay.add_stream(session, "channel0_1", STREAM_PATH, 0, 0)
    control = ControlHandler(relay, "control")
    control.handle(Command.VERSION, Version(2, 13).encode())
    control.session = session  # the reference make_session took for its control connection
    control.version_checked = True
    framer, data = DataFramer(), DataHandler(relay)
    faults.fail_on_file("pwritev", code, broken.data_file)

    def read(raw: bytes) -> None:  # one read of the data socket, as the server does it
        with relay.fd_pool.batch():
            for piece in framer.feed(raw):
                data.handle(piece)

    read(data_packet(broken, 0, b"x" * 64) + data_packet(healthy, 0, b"y" * 64))
    assert faults.injected == 1 and broken.closed
    assert relay.counters.errors[ErrorKind.DISK] == 1
    read(data_packet(broken, 1, b"x" * 64) + data_packet(healthy, 1, b"z" * 64))

    for stream in (broken, healthy):
        for seq in (0, 1):
            outcome = control.handle(Command.SEND_INDEX, SendIndex(
                stream.handle, seq, 512, 512, 100 * seq, 100 * seq + 99, 0, 3, 4, seq,
            ).encode(13))
            assert (outcome.reply, outcome.close) == (generic_reply(ReturnCode.OK), False)
    pending = control.handle(Command.DATA_PENDING, DataPending(broken.handle, 1).encode())
    assert (pending.reply, pending.close) == (generic_reply(0), False)
    closing = control.handle(Command.CLOSE_STREAM, CloseStream(broken.handle, 1).encode())
    assert (closing.reply, closing.close) == (generic_reply(ReturnCode.OK), False)

    assert data_file(healthy).read_bytes() == b"y" * 64 + b"z" * 64
    index_path = data_file(healthy).parent / "index" / "channel0_1.idx"
    assert len(read_index_file(index_path.read_bytes())[1]) == 2
    assert relay.counters.errors[ErrorKind.DISK] == 1  # reported once
    data.connection_lost(False)
    control.connection_lost()
    assert session.released and relay.failed_streams == {}
