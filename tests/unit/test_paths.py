"""Names from the wire and the paths built from them (`storage/paths.py`).

Every session name, hostname, base path, stream path, channel name and chunk name a peer sends
must be refused unless it stays inside its directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.config import GroupOutputBy
from pyrelayd.storage.paths import (
    UnsafeNameError,
    check_base_path,
    check_chunk_name,
    check_component,
    check_relative_path,
    chunk_name,
    datetime_str,
    inside,
    iso8601_str,
    regroup_by_session,
    session_output_path,
    stream_file_name,
)

CREATED = 1704164645  # 2024-01-02 03:04:05 UTC
CLOSED = 1704165000  # 2024-01-02 03:10:00 UTC


@pytest.fixture
def plus_one_hour(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A relay whose local time zone is UTC+01:00 (POSIX spells it UTC-1)."""
    monkeypatch.setenv("TZ", "UTC-1")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --------------------------------------------------------------------------- components


@pytest.mark.parametrize("name", ["mysess", "auto-20240102-030405", "a.b", "a..b", "é" * 127,
                                  "x" * 255, "-", "my host"])
def test_component_accepted(name: str) -> None:
    assert check_component(name, "session name") == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("/", id="slash"),
        pytest.param("a/b", id="separator"),
        pytest.param("/abs", id="leading slash"),
        pytest.param("a\0b", id="NUL"),
        pytest.param(".", id="dot"),
        pytest.param("..", id="dot-dot"),
        pytest.param(".hidden", id="hidden"),
        pytest.param("x" * 256, id="256 bytes"),
        pytest.param("é" * 128, id="256 bytes of UTF-8"),
    ],
)
def test_component_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        check_component(name, "session name")


# --------------------------------------------------------------------------- relative paths


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("ust/uid/1000/64-bit", "ust/uid/1000/64-bit"),
        ("kernel", "kernel"),
        ("ust/pid/app-1234-20240102-030405", "ust/pid/app-1234-20240102-030405"),
        # Peers before 2.11 send "absolute" paths that are relative to the output root.
        ("/myhost/mysess-20240102-030405/kernel", "myhost/mysess-20240102-030405/kernel"),
        ("a//b/", "a/b"),
        ("a/./b", "a/b"),
        ("./a", "a"),
        ("a.b/c..d", "a.b/c..d"),
    ],
)
def test_relative_path_accepted_and_normalised(path: str, normal: str) -> None:
    assert check_relative_path(path, "stream path") == normal


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("", id="empty"),
        pytest.param("/", id="slash"),
        pytest.param("./", id="dot"),
        pytest.param("..", id="dot-dot"),
        pytest.param("../x", id="leading dot-dot"),
        pytest.param("../../etc", id="climbing"),
        pytest.param("/abs/../..", id="absolute climbing"),
        pytest.param("a/./../b", id="dot then dot-dot"),
        pytest.param("a/b/..", id="trailing dot-dot"),
        pytest.param("a/.hidden/b", id="hidden component"),
        pytest.param(".tmp_old_chunk/ust", id="relay's own temporary directory"),
        pytest.param("a\0/b", id="NUL"),
        pytest.param("a/" + "x" * 256, id="component of 256 bytes"),
        pytest.param("/".join(["x" * 200] * 21), id="4220 bytes in all"),
    ],
)
def test_relative_path_refused(path: str) -> None:
    with pytest.raises(UnsafeNameError):
        check_relative_path(path, "stream path")


def test_relative_path_length_limit_is_4095_bytes() -> None:
    longest = "/".join(["x" * 255] * 16)[:4095]
    assert len(longest) == 4095

    assert check_relative_path(longest, "base path") == longest
    with pytest.raises(UnsafeNameError):
        check_relative_path(longest + "x", "base path")


@pytest.mark.parametrize("path", ["", "/", "./", "//"])
def test_relative_path_may_be_empty_when_allowed(path: str) -> None:
    assert check_relative_path(path, "base path", allow_empty=True) == ""


relative_path_attempts = st.one_of(
    st.lists(
        st.sampled_from(["", ".", "..", "...", "a", "b.c", ".x", "é", "x" * 255, "\0"]),
        max_size=8,
    ).map("/".join),
    st.text(alphabet="./a\0é", max_size=30),
    st.text(max_size=40),
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("output-root")


@given(path=relative_path_attempts)
def test_every_accepted_relative_path_stays_under_its_root(root: Path, path: str) -> None:
    try:
        normal = check_relative_path(path, "stream path", allow_empty=True)
    except UnsafeNameError:
        return

    assert inside(root, root / normal) == root / normal
    assert not normal.startswith("/")
    assert ".." not in normal.split("/")
    assert os.path.realpath(root / normal).startswith(os.path.realpath(root))


def test_inside_refuses_paths_that_climb_out(root: Path) -> None:
    with pytest.raises(UnsafeNameError):
        inside(root, root / "..")
    with pytest.raises(UnsafeNameError):
        inside(root, root / "a" / ".." / ".." / "elsewhere")


def test_inside_accepts_the_root_itself(root: Path) -> None:
    assert inside(root, root) == root


def test_inside_follows_symlinks(tmp_path: Path) -> None:
    session_directory = tmp_path / "root" / "myhost"
    session_directory.mkdir(parents=True)
    (session_directory / "escape").symlink_to(tmp_path)

    with pytest.raises(UnsafeNameError):
        inside(tmp_path / "root", session_directory / "escape" / "file")


def test_inside_refuses_a_sibling_sharing_the_root_prefix(tmp_path: Path) -> None:
    with pytest.raises(UnsafeNameError):
        inside(tmp_path / "root", tmp_path / "root2" / "file")


# --------------------------------------------------------------------------- session directory


@pytest.mark.parametrize(
    ("group_by", "base_path", "name_contains_creation_time", "expected"),
    [
        (GroupOutputBy.HOST, "", False, "myhost/mysess-20240102-030405"),
        (GroupOutputBy.HOST, "", True, "myhost/mysess"),
        (GroupOutputBy.HOST, "my/base", False, "myhost/my/base"),
        (GroupOutputBy.HOST, "my/base", True, "myhost/my/base"),
        (GroupOutputBy.SESSION, "", False, "mysess/myhost-20240102-030405"),
        (GroupOutputBy.SESSION, "", True, "mysess/myhost-20240102-030405"),
        (GroupOutputBy.SESSION, "my/base", False, "mysess/myhost-20240102-030405/my/base"),
        (GroupOutputBy.SESSION, "my/base", True, "mysess/myhost-20240102-030405/my/base"),
    ],
)
def test_session_output_path_grouping(utc: None, group_by: GroupOutputBy, base_path: str,
                                      name_contains_creation_time: bool, expected: str) -> None:
    path = session_output_path(
        session_name="mysess", hostname="myhost", base_path=base_path, creation_time=CREATED,
        name_contains_creation_time=name_contains_creation_time, group_by=group_by,
    )

    assert path == expected


def test_session_output_path_for_an_auto_session(utc: None) -> None:
    path = session_output_path(
        session_name="auto-20240102-030405", hostname="myhost", base_path="",
        creation_time=CREATED, name_contains_creation_time=True, group_by=GroupOutputBy.HOST,
    )

    assert path == "myhost/auto-20240102-030405"


@pytest.mark.parametrize("base_path", ["/my/base", "/", "//my/base"])
def test_an_absolute_base_path_is_refused(base_path: str) -> None:
    # lttng-relayd 2.16 (session.cpp:315): unlike stream paths, not made relative.
    with pytest.raises(UnsafeNameError, match="absolute"):
        check_base_path(base_path)


@pytest.mark.parametrize(("base_path", "expected"),
                         [("", ""), ("my/base", "my/base"), ("my..base/x", "my..base/x")])
def test_relative_base_paths_are_accepted(base_path: str, expected: str) -> None:
    assert check_base_path(base_path) == expected


def test_session_output_path_uses_the_relay_local_time(plus_one_hour: None) -> None:
    path = session_output_path(
        session_name="mysess", hostname="myhost", base_path="", creation_time=CREATED,
        name_contains_creation_time=False, group_by=GroupOutputBy.HOST,
    )

    assert path == "myhost/mysess-20240102-040405"


@pytest.mark.parametrize(
    ("session_name", "hostname", "base_path"),
    [
        ("", "myhost", ""),
        (".hidden", "myhost", ""),
        ("../x", "myhost", ""),
        ("a/b", "myhost", ""),
        ("mysess", "", ""),
        ("mysess", ".", ""),
        ("mysess", "h/../..", ""),
        ("mysess", "myhost", "../x"),
        ("mysess", "myhost", "a/../../x"),
        ("mysess", "myhost", "a/.."),
        ("mysess", "myhost", ".hidden"),
        ("mysess", "myhost", "/my/base"),
    ],
)
def test_session_output_path_refuses_unsafe_names(session_name: str, hostname: str,
                                                  base_path: str) -> None:
    for group_by in GroupOutputBy:
        with pytest.raises(UnsafeNameError):
            session_output_path(
                session_name=session_name, hostname=hostname, base_path=base_path,
                creation_time=CREATED, name_contains_creation_time=False, group_by=group_by,
            )


# --------------------------------------------------------------------------- time and chunk names


def test_datetime_str_format(utc: None) -> None:
    assert datetime_str(CREATED) == "20240102-030405"


def test_iso8601_str_carries_the_utc_offset(plus_one_hour: None) -> None:
    assert iso8601_str(CREATED) == "20240102T040405+0100"


def test_open_chunk_name_is_start_then_id(utc: None) -> None:
    assert chunk_name(1, CREATED) == "20240102T030405+0000-1"


def test_closed_chunk_name_is_start_end_id(utc: None) -> None:
    assert chunk_name(0, CREATED, CLOSED) == "20240102T030405+0000-20240102T031000+0000-0"


def test_chunk_names_use_the_relay_local_time(plus_one_hour: None) -> None:
    assert chunk_name(7, CREATED, CLOSED) == "20240102T040405+0100-20240102T041000+0100-7"


@pytest.mark.parametrize("name", ["snapshot-1-20240102-030405-0", "mysnap"])
def test_override_chunk_name_accepted(name: str) -> None:
    assert check_chunk_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", ".", "..", "a/b", "x" * 256, "a\0"])
def test_override_chunk_name_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError):
        check_chunk_name(name)


# --------------------------------------------------------------------------- stream files


def test_stream_file_name_without_tracefile_size_has_no_suffix() -> None:
    assert stream_file_name("channel0_3", 0, 0) == "channel0_3"
    assert stream_file_name("metadata", 0, 0) == "metadata"


@pytest.mark.parametrize("index", [0, 1, 17])
def test_stream_file_name_with_tracefile_size_has_the_index_suffix(index: int) -> None:
    assert stream_file_name("channel0_3", 4096, index) == f"channel0_3_{index}"


# --------------------------------------------------------------------------- old peers, -s


@pytest.mark.parametrize(
    ("path", "session_name", "regrouped"),
    [
        ("myhost/mysess-20240102-030405/kernel", "mysess",
         "mysess/myhost-20240102-030405/kernel"),
        # The datetime of the path wins over the session's creation time.
        ("myhost/mysess-20231231-235959/ust/uid/1000/64-bit", "mysess",
         "mysess/myhost-20231231-235959/ust/uid/1000/64-bit"),
        # Snapshot paths carry the bare session name: the creation time is used.
        ("myhost/mysess/kernel", "mysess", "mysess/myhost-20240102-030405/kernel"),
        # Auto-named sessions carry their creation time in their name.
        ("myhost/auto-20231231-235959/kernel", "auto-20231231-235959",
         "auto-20231231-235959/myhost-20231231-235959/kernel"),
        # A second component that is not the session's is a base path (--set-url .../path).
        ("myhost/my_path/kernel", "mysess", "mysess/myhost-20240102-030405/my_path/kernel"),
        # Starting with the session name but no datetime after it: a base path, no datetime.
        ("myhost/mysess_extra/kernel", "mysess", "mysess/myhost/mysess_extra/kernel"),
    ],
)
def test_regroup_by_session_of_pre_2_11_stream_paths(utc: None, path: str, session_name: str,
                                                     regrouped: str) -> None:
    assert regroup_by_session(path, session_name, CREATED) == regrouped


def test_regroup_by_session_needs_host_and_session_components() -> None:
    with pytest.raises(UnsafeNameError):
        regroup_by_session("myhost", "mysess", CREATED)
