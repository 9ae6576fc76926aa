"""File-system primitives with lttng-relayd's modes (directories 0770, files 0660)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

DIRECTORY_MODE = 0o770
FILE_MODE = 0o660
ZEROS = bytes(64 * 1024)


def make_directories(path: Path) -> None:
    os.makedirs(path, mode=DIRECTORY_MODE, exist_ok=True)


def create_file(path: Path) -> int:
    """Create or truncate `path` for writing; never follows a symlink planted there."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                   FILE_MODE)


def unlink_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_zeros(fd: int, count: int) -> None:
    while count > 0:
        chunk = min(count, len(ZEROS))
        write_all(fd, memoryview(ZEROS)[:chunk])
        count -= chunk


def remove_empty_tree(path: Path) -> bool:
    """Remove `path` and its subdirectories if no file remains; True when it is gone."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return True
    empty = True
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            empty = remove_empty_tree(Path(entry.path)) and empty
        else:
            empty = False
    if empty:
        try:
            os.rmdir(path)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise
            return error.errno == errno.ENOENT
    return empty


def close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
