"""The only place that turns names received from the wire into paths.

Every name a peer sends (session name, hostname, base path, stream path, channel name, chunk
name) goes through one of the validators here before it touches the file system, so nothing
can ever be created outside the output root.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pyrelayd.config import GroupOutputBy

ARCHIVES_DIRECTORY = "archives"
TMP_OLD_CHUNK = ".tmp_old_chunk"
TMP_NEW_CHUNK = ".tmp_new_chunk"
INDEX_DIRECTORY = "index"
INDEX_SUFFIX = ".idx"
METADATA_CHANNEL = "metadata"
MAX_PATH = 4096


class UnsafeNameError(ValueError):
    """A name or path from a peer that would escape its directory or is malformed."""


def check_component(name: str, what: str) -> str:
    """A single path component: non-empty, no '/', no NUL, not starting with '.'."""
    if not name:
        raise UnsafeNameError(f"{what} is empty")
    if "/" in name or "\0" in name:
        raise UnsafeNameError(f"{what} {name!r} contains a path separator or NUL")
    if name.startswith("."):
        raise UnsafeNameError(f"{what} {name!r} starts with '.'")
    if len(name.encode()) > 255:
        raise UnsafeNameError(f"{what} is longer than 255 bytes")
    return name


def check_relative_path(path: str, what: str, *, allow_empty: bool = False) -> str:
    """A relative path made of safe components; a leading '/' (old peers) is dropped.

    Empty and '.' components are collapsed; '..' or hidden components are refused.
    """
    if "\0" in path:
        raise UnsafeNameError(f"{what} contains NUL")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for part in parts:
        if part == ".." or part.startswith("."):
            raise UnsafeNameError(f"{what} {path!r} has a '..' or hidden component")
        check_component(part, what)
    if not parts and not allow_empty:
        raise UnsafeNameError(f"{what} is empty")
    normal = "/".join(parts)
    if len(normal.encode()) >= MAX_PATH:
        raise UnsafeNameError(f"{what} is too long")
    return normal


def check_base_path(path: str) -> str:
    """A session base path (CREATE_SESSION, 2.11+): relative, may be empty.

    Unlike stream paths, an absolute base path is refused rather than made relative:
    lttng-relayd 2.16 refuses it too (peers send the URL's subdirectory without its '/').
    """
    if path.startswith("/"):
        raise UnsafeNameError(f"base path {path!r} is absolute")
    return check_relative_path(path, "base path", allow_empty=True)


def _local_time(timestamp: int) -> time.struct_time:
    """A peer's timestamp (any u64) as local time; UnsafeNameError if it cannot be one.

    lttng-relayd refuses the command when localtime_r() fails; so do we (found by fuzzing:
    a CREATE_TRACE_CHUNK of year 2**60 raised OverflowError out of the handler).
    """
    try:
        return time.localtime(timestamp)
    except (OverflowError, OSError, ValueError) as error:
        raise UnsafeNameError(f"timestamp {timestamp} is not a date: {error}") from None


def datetime_str(timestamp: int) -> str:
    """`%Y%m%d-%H%M%S` in the relay's local time zone (session directory names)."""
    return time.strftime("%Y%m%d-%H%M%S", _local_time(timestamp))


def iso8601_str(timestamp: int) -> str:
    """`%Y%m%dT%H%M%S%z` in local time (trace chunk names)."""
    return time.strftime("%Y%m%dT%H%M%S%z", _local_time(timestamp))


def chunk_name(chunk_id: int, created: int, closed: int | None = None) -> str:
    end = f"-{iso8601_str(closed)}" if closed is not None else ""
    return f"{iso8601_str(created)}{end}-{chunk_id}"


def check_chunk_name(name: str) -> str:
    """An override chunk name (snapshots): one component, no '.' anywhere."""
    if "." in name:
        raise UnsafeNameError(f"chunk name {name!r} contains '.'")
    return check_component(name, "chunk name")


def session_output_path(
    *,
    session_name: str,
    hostname: str,
    base_path: str,
    creation_time: int,
    name_contains_creation_time: bool,
    group_by: GroupOutputBy,
) -> str:
    """The session directory relative to the output root (peers speaking 2.11 and later)."""
    check_component(session_name, "session name")
    check_component(hostname, "hostname")
    base = check_base_path(base_path)
    if group_by is GroupOutputBy.SESSION:
        path = f"{session_name}/{hostname}-{datetime_str(creation_time)}"
        return f"{path}/{base}" if base else path
    if base:
        return f"{hostname}/{base}"
    if name_contains_creation_time:
        return f"{hostname}/{session_name}"
    return f"{hostname}/{session_name}-{datetime_str(creation_time)}"


def stream_file_name(channel_name: str, tracefile_size: int, tracefile_index: int) -> str:
    """`channel_N` or, when tracefiles are split, `channel_N_<index>`."""
    if tracefile_size:
        return f"{channel_name}_{tracefile_index}"
    return channel_name


def inside(root: Path, path: Path) -> Path:
    """`path` after checking, with symlinks resolved, that it stays under `root`."""
    resolved = Path(os.path.realpath(path))
    real_root = Path(os.path.realpath(root))
    if resolved != real_root and real_root not in resolved.parents:
        raise UnsafeNameError(f"{path} is outside {root}")
    return path


_DATETIME_SUFFIX = re.compile(r".*-[12][0-9]{3}[01][0-9][0-3][0-9]-[0-2][0-9][0-5][0-9][0-5][0-9]$")
_DATETIME_LENGTH = 15  # YYYYmmdd-HHMMSS


def regroup_by_session(path: str, session_name: str, creation_time: int) -> str:
    """Rewrite a 2.4-2.10 peer's `HOST/NAME[-DATETIME]/rest` as `NAME/HOST-DATETIME/rest`.

    Old peers send stream paths that start with the by-host layout; under
    --group-output-by-session the first two components are regrouped. A second component that
    does not start with the session name is a base path and is kept.
    """
    parts = [part for part in path.split("/") if part]
    if len(parts) < 2:
        raise UnsafeNameError(f"stream path {path!r} has no host and session components")
    hostname, second, rest = parts[0], parts[1], "/".join(parts[2:])
    base_path: str | None = None
    if not second.startswith(session_name):
        base_path, second = second, session_name
    leftover = second[len(session_name) :]
    datetime: str | None = None
    if not leftover:
        if _DATETIME_SUFFIX.match(session_name):
            datetime = session_name[-_DATETIME_LENGTH:]
        else:
            datetime = datetime_str(creation_time)
    elif len(leftover) == _DATETIME_LENGTH + 1 and _DATETIME_SUFFIX.match(leftover):
        datetime = leftover[1:]
    else:
        base_path = second
    directory = f"{session_name}/{hostname}" + (f"-{datetime}" if datetime else "")
    if base_path:
        directory += f"/{base_path}"
    return f"{directory}/{rest}"
