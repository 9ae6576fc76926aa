"""A bounded pool of file descriptors for the files the relay writes (`--fd-pool-size`).

A relay may have many more streams than the process may open files: each stream has a data
file and an index file. Every such file is a `PooledFile` that writes at an explicit offset
(`pwrite`), so its descriptor can be closed when the pool is full and reopened later (by its
current path: a chunk directory may have been renamed meanwhile) without changing what is
written. The least recently used descriptors are closed first.
"""

from __future__ import annotations

import collections
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
            oldest._suspend()

    def _admit(self, file: PooledFile) -> None:
        self._evict(1)
        self._open[file] = None

    def _forget(self, file: PooledFile) -> None:
        self._open.pop(file, None)


class PooledFile:
    """A file written sequentially through the pool; `size` is where the next write goes."""

    __slots__ = ("_fd", "_path", "closed", "pool", "size")

    def __init__(self, pool: FdPool, path: Callable[[], Path], fd: int, size: int = 0) -> None:
        self.pool = pool
        self._path = path  # resolved again at each reopen
        self._fd: int | None = fd
        self.size = size
        self.closed = False
        pool._admit(self)

    @classmethod
    def create(cls, pool: FdPool, path: Callable[[], Path]) -> PooledFile:
        return cls(pool, path, files.create_file(path()))

    def fileno(self) -> int:
        """An open descriptor (reopening the file if the pool had closed it)."""
        if self._fd is not None:
            self.pool._touch(self)
            return self._fd
        if self.closed:
            raise ValueError("file is closed")
        fd = os.open(self._path(), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.pool.reopened += 1
        self.pool._admit(self)
        self._fd = fd
        return fd

    def _suspend(self) -> None:
        files.close_quietly(self._fd)
        self._fd = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        fd = self.fileno()
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, self.size)
            self.size += written
            view = view[written:]

    def write_zeros(self, count: int) -> None:
        while count > 0:
            chunk = min(count, len(files.ZEROS))
            self.write(memoryview(files.ZEROS)[:chunk])
            count -= chunk

    def read(self, length: int, offset: int) -> bytes:
        return os.pread(self.fileno(), length, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fileno(), size)
        self.size = size

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool._forget(self)
        self._suspend()
