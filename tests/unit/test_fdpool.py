"""The fd pool: many more files than descriptors, every byte where it belongs."""

from __future__ import annotations

import errno
import functools
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pyrelayd.model.chunk import TraceChunk
from pyrelayd.storage.fdpool import FdPool, PooledFile


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_files_outnumbering_the_pool_are_written_completely(tmp_path: Path) -> None:
    pool = FdPool(limit=8)
    paths = [tmp_path / f"stream{i}" for i in range(100)]
    pooled = [PooledFile.create(pool, functools.partial(Path, p)) for p in paths]
    expected = [bytearray() for _ in paths]
    rng = random.Random(7)
    before = open_fds()
    for _ in range(2000):
        i = rng.randrange(len(paths))
        data = rng.randbytes(rng.randrange(1, 300))
        pooled[i].write(data)
        expected[i] += data
        assert pool.open_count <= 8
    assert open_fds() <= before
    for file, path, content in zip(pooled, paths, expected, strict=True):
        file.close()
        assert path.read_bytes() == bytes(content)
    assert pool.reopened > 0
    assert pool.open_count == 0


def test_descriptors_held_outside_the_pool_leave_it_less_room(tmp_path: Path) -> None:
    pool = FdPool(limit=5)
    files = [PooledFile.create(pool, functools.partial(Path, tmp_path / f"f{i}"))
             for i in range(5)]  # fmt: skip
    assert pool.open_count == 5
    pool.hold(3)
    assert pool.open_count == 2
    pool.unhold(3)
    for file in files:
        file.write(b"x")
    assert pool.open_count == 5


def test_an_evicted_file_follows_its_chunk_when_the_chunk_is_renamed(tmp_path: Path) -> None:
    pool = FdPool(limit=1)
    chunk = TraceChunk(1, 1_700_000_000, ".tmp_new_chunk", tmp_path, pool=pool)
    chunk.create_subdirectory("ust")
    first = chunk.create_file("ust/channel0_0")
    first.write(b"before")
    second = chunk.create_file("ust/channel0_1")  # evicts the first descriptor
    second.write(b"other")
    chunk.rename_path("renamed")
    first.write(b"-after")
    first.close()
    second.close()
    assert (tmp_path / "renamed/ust/channel0_0").read_bytes() == b"before-after"
    assert not (tmp_path / ".tmp_new_chunk").exists()


def test_a_closed_pooled_file_cannot_be_written(tmp_path: Path) -> None:
    pool = FdPool(limit=2)
    file = PooledFile.create(pool, lambda: tmp_path / "f")
    file.close()
    with pytest.raises(ValueError):
        file.write(b"x")


def test_a_pool_without_room_is_refused() -> None:
    with pytest.raises(ValueError):
        FdPool(limit=0)


def test_appends_in_a_batch_are_written_when_it_ends(tmp_path: Path) -> None:
    pool = FdPool()
    file = PooledFile.create(pool, lambda: tmp_path / "data")
    with pool.batch():
        file.append(b"abc")
        file.append(memoryview(b"defg")[1:])
        file.write_zeros(2)
        assert (tmp_path / "data").read_bytes() == b""  # deferred
        assert file.size == 8
    assert (tmp_path / "data").read_bytes() == b"abcefg\0\0"
    file.append(b"!")  # outside a batch: at once
    assert (tmp_path / "data").read_bytes() == b"abcefg\0\0!"


def test_any_other_use_of_a_file_does_its_pending_appends_first(tmp_path: Path) -> None:
    pool = FdPool(limit=1)
    first = PooledFile.create(pool, lambda: tmp_path / "first")
    with pool.batch():
        first.append(b"12345")
        assert first.read(5, 0) == b"12345"
        first.append(b"678")
        first.truncate(7)
        first.append(b"9")
        # Opening a second file evicts the first: its pending append is written first.
        second = PooledFile.create(pool, lambda: tmp_path / "second")
        assert (tmp_path / "first").read_bytes() == b"12345679"
        second.append(b"x")
        first.write(b"0")  # a plain write keeps the order
        second.close()
        assert (tmp_path / "second").read_bytes() == b"x"
    assert (tmp_path / "first").read_bytes() == b"123456790"
    assert pool.dirty == []


def test_many_appends_are_written_by_the_batch_in_order(tmp_path: Path) -> None:
    pool = FdPool()
    file = PooledFile.create(pool, lambda: tmp_path / "data")
    pieces = [bytes([i % 251]) * (i % 7 + 1) for i in range(5000)]  # over the iovec limit
    with pool.batch():
        for piece in pieces:
            file.append(piece)
    assert (tmp_path / "data").read_bytes() == b"".join(pieces)


def test_a_pool_as_large_as_the_process_limit_never_runs_out(tmp_path: Path) -> None:
    # The pool makes room before it opens a file: at the limit, opening first would fail.
    code = """
import os, resource, sys
from pathlib import Path
from pyrelayd.storage.fdpool import FdPool, PooledFile
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
pool = FdPool(64 - (len(os.listdir("/proc/self/fd")) - 1))
files = [PooledFile.create(pool, lambda i=i: Path(sys.argv[1]) / f"f{i}") for i in range(300)]
for i, file in enumerate(files):
    file.write(b"%d" % i)
"""
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "f299").read_bytes() == b"299"


def failing(monkeypatch: pytest.MonkeyPatch, name: str, fd: int, code: int) -> None:
    """`os.<name>` fails with `code` once, on descriptor `fd` (which may be reused later)."""
    real = getattr(os, name)
    armed = [True]

    def fail(first: int, *args: object) -> object:
        if first == fd and armed[0]:
            armed[0] = False
            raise OSError(code, os.strerror(code))
        return real(first, *args)

    monkeypatch.setattr(os, name, fail)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_file_whose_last_writes_fail_is_closed_anyway(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    pool = FdPool()
    before = open_fds()
    file = PooledFile.create(pool, lambda: tmp_path / "data")
    failing(monkeypatch, "pwritev", file.fileno(), code)
    with pool.batch():
        file.append(b"lost")
        with pytest.raises(OSError) as raised:
            file.close()
    assert raised.value.errno == code
    assert file.closed and pool.open_count == 0 and open_fds() == before
    file.close()  # once is enough


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_an_evicted_file_whose_writes_fail_keeps_its_error_for_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    pool = FdPool(limit=1)
    before = open_fds()
    first = PooledFile.create(pool, lambda: tmp_path / "first")
    failing(monkeypatch, "pwritev", first.fileno(), code)
    with pool.batch():
        first.append(b"lost")
        # Room for the second file: the first one's deferred write fails, not this.
        second = PooledFile.create(pool, lambda: tmp_path / "second")
        second.append(b"kept")
    assert pool.open_count == 1 and open_fds() == before + 1
    with pytest.raises(OSError) as raised:
        first.write(b"next")  # the first one hears of it at its next use
    assert raised.value.errno == code
    first.write(b"next")  # and only once
    first.close()
    second.close()
    assert (tmp_path / "first").read_bytes() == b"next"
    assert (tmp_path / "second").read_bytes() == b"kept"
    assert pool.open_count == 0 and open_fds() == before
