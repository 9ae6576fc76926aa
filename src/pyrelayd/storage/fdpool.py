"""A bounded pool of file descriptors for the files the relay writes (`--fd-pool-size`).

A relay may have many more streams than the process may open files: each stream has a data
file and an index file. Every such file is a `PooledFile` that writes at an explicit offset
(`pwrite`), so its descriptor can be closed when the pool is full and reopened later (by its
current path: a chunk directory may have been renamed meanwhile) without changing what is
written. The least recently used descriptors are closed first.

Appends (`PooledFile.append`) made inside `FdPool.batch()` are deferred: the many small writes
of one read from a connection (packets, padding, index records) then leave as one `pwritev`
per file when the batch ends, before the connection's handler returns to the event loop, so
nothing else (a viewer, a control command) ever sees a file with writes still pending. Any
other operation on a file does its own pending writes first. Outside a batch, appends are
written at once.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from pyrelayd.storage import files


class FdPool:
    """At most `limit` descriptors open at once (None: no limit).

    Descriptors the pool cannot close (sockets, files read by live viewers) are counted with
    `hold` / `unhold`: they leave less room for the pooled files.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("the fd pool needs room for at least one file")
        self.limit = limit
        self._open: collections.OrderedDict[PooledFile, None] = collections.OrderedDict()
        self.held = 0
        self.reopened = 0  # descriptors reopened after eviction (for metrics and tests)
        self.evicted = 0  # descriptors closed to make room (for metrics)
        self.dirty: list[PooledFile] = []  # files with deferred writes
        self.batching = 0  # depth of nested `batch()` blocks
        self._batch = _Batch(self)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Defer appends until the end of the block (the outermost one, if nested)."""
        return self._batch

    def flush(self) -> None:
        """Do every deferred write. A file whose writes fail is reported to its `owner` (once
        every file was tried); without an owner, the first error is raised at the end."""
        failure: OSError | None = None
        owned: list[tuple[Callable[[OSError], None], OSError]] = []
        while self.dirty:
            file = self.dirty.pop()
            try:
                file.flush()
            except OSError as error:
                if file.owner is not None:
                    owned.append((file.owner, error))
                else:
                    failure = failure or error
        for owner, owned_error in owned:
            owner(owned_error)
        if failure is not None:
            raise failure

    def hold(self, count: int = 1) -> None:
        """`count` descriptors the pool cannot close are about to be opened: make room."""
        self.held += count
        self._evict(0)

    def unhold(self, count: int = 1) -> None:
        self.held = max(0, self.held - count)

    @property
    def open_count(self) -> int:
        return len(self._open)

    def _touch(self, file: PooledFile) -> None:
        self._open.move_to_end(file)

    def _evict(self, wanted: int) -> None:
        if self.limit is None:
            return
        while self._open and len(self._open) + self.held + wanted > self.limit:
            oldest, _ = self._open.popitem(last=False)
            self.evicted += 1
            try:
                oldest._suspend()
            except OSError as error:
                # Its deferred writes failed: that is the evicted file's failure, not the
                # failure of whatever needed the room. It raises it at its next use.
                oldest.failure = error

    def _admit(self, file: PooledFile) -> None:
        self._evict(1)
        self._open[file] = None

    def _forget(self, file: PooledFile) -> None:
        self._open.pop(file, None)


class _Batch:
    """`FdPool.batch()`, entered once per read from a connection: a plain context manager
    object, as a generator-based one costs about a microsecond each time."""

    __slots__ = ("pool",)

    def __init__(self, pool: FdPool) -> None:
        self.pool = pool

    def __enter__(self) -> None:
        self.pool.batching += 1

    def __exit__(self, *exc_info: object) -> None:
        pool = self.pool
        pool.batching -= 1
        if not pool.batching:
            pool.flush()


# Deferred writes of one file leave in one pwritev of at most this many buffers / bytes.
_MAX_PENDING_BUFFERS = min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024)
_MAX_PENDING_BYTES = 4 << 20
# Padding longer than this is left as a hole in the file (see `PooledFile.write_zeros`).
SPARSE_PADDING = 1 << 20


class PooledFile:
    """A file written sequentially through the pool; `size` is where the next write goes
    (deferred writes included)."""

    __slots__ = ("_fd", "_path", "_pending", "_pending_size", "closed", "failure", "owner", "pool",
                 "size")

    def __init__(self, pool: FdPool, path: Callable[[], Path], fd: int, size: int = 0) -> None:
        self.pool = pool
        self._path = path  # resolved again at each reopen
        self._fd: int | None = fd
        self.size = size
        self._pending: list[bytes | bytearray | memoryview] = []
        self._pending_size = 0
        self.closed = False
        # Deferred writes that failed while the pool closed the descriptor to make room:
        # raised by the next operation on this file.
        self.failure: OSError | None = None
        # Told when a batched write of this file fails (the stream it belongs to), instead of
        # the failure ending the whole batch (the connection that happened to flush it).
        self.owner: Callable[[OSError], None] | None = None
        pool._admit(self)

    @classmethod
    def create(cls, pool: FdPool, path: Callable[[], Path]) -> PooledFile:
        pool._evict(1)  # room first: at the limit, opening before evicting would fail
        return cls(pool, path, files.create_file(path()))

    def fileno(self) -> int:
        """An open descriptor on the file with every write done."""
        self.flush()
        return self._descriptor()

    def _descriptor(self) -> int:
        """An open descriptor (reopening the file if the pool had closed it)."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        if self._fd is not None:
            self.pool._touch(self)
            return self._fd
        if self.closed:
            raise ValueError("file is closed")
        self.pool._evict(1)
        fd = os.open(self._path(), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.pool.reopened += 1
        self.pool._admit(self)
        self._fd = fd
        return fd

    def _suspend(self) -> None:
        """Write what is deferred and close the descriptor; closed even if the write fails."""
        fd, self._fd = self._fd, None
        try:
            if self._pending and fd is not None:
                self._write_pending(fd)
        finally:
            files.close_quietly(fd)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._write_at_end(self.fileno(), data)

    def _write_at_end(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        """pwrite all of `data` at `size`; `size` always tells what is really in the file."""
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, self.size)
            self.size += written
            view = view[written:]

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at the end, deferred in a batch (`data` must not change until the
        batch ends)."""
        if not self.pool.batching:
            self.write(data)
            return
        if not data:
            return
        if not self._pending:
            self.pool.dirty.append(self)
        self._pending.append(data)
        self._pending_size += len(data)
        self.size += len(data)
        if (len(self._pending) >= _MAX_PENDING_BUFFERS
                or self._pending_size >= _MAX_PENDING_BYTES):
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._write_pending(self._descriptor())

    def _write_pending(self, fd: int) -> None:
        pending, size = self._pending, self._pending_size
        self._pending, self._pending_size = [], 0
        self.size -= size  # back to what is really in the file until written
        written = os.pwritev(fd, pending, self.size)
        self.size += written
        if written < size:  # rare (a signal, a nearly full disk): finish the rest
            self._write_at_end(fd, memoryview(b"".join(pending))[written:])

    def write_zeros(self, count: int) -> None:
        """`count` zero bytes at the end (a packet's padding). Beyond `SPARSE_PADDING` they
        are a hole (the file is extended, nothing is written): what the file reads is the
        same, but a peer announcing 4 GiB of padding in a 45-byte request costs no disk,
        memory or time (lttng-relayd's `stream_write` writes them all)."""
        if count > SPARSE_PADDING:
            self.flush()
            fd = self.fileno()
            os.ftruncate(fd, self.size + count)
            self.size += count
            return
        while count > 0:
            chunk = min(count, len(files.ZEROS))
            self.append(memoryview(files.ZEROS)[:chunk])
            count -= chunk

    def read(self, length: int, offset: int) -> bytes:
        return os.pread(self.fileno(), length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fileno(), size)
        self.size = size

    def close(self) -> None:
        """Write what is deferred and give the descriptor back to the pool.

        The file is closed and out of the pool whatever fails on the way; the error of the
        last writes (deferred writes lost, or a failure kept from an eviction) is raised
        afterwards, for the owner to report.
        """
        if self.closed:
            return
        try:
            self.flush()
            if self.failure is not None:
                raise self.failure
        finally:
            self.closed = True
            self.failure = None
            self.pool._forget(self)
            self._pending, self._pending_size = [], 0  # lost if the flush failed
            self._suspend()
