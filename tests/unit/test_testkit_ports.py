"""The test launcher's port choice: which relays take port 0 and report their ports in port
files (`pyrelayd_testkit.relays.has_dynamic_ports`), and how those files are read
(`pyrelayd_testkit.ports.read_port_files`)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import cast

import pytest

from pyrelayd_testkit.lttng import HOST_PEERS, SID_CTF1_PEERS, SID_PEERS, Peers, Sandbox
from pyrelayd_testkit.ports import read_port_files
from pyrelayd_testkit.relays import has_dynamic_ports


def _sandbox(peers: Peers) -> Sandbox:
    return cast(Sandbox, types.SimpleNamespace(peers=peers))


def test_pyrelayd_and_lttng_relayd_2_16_take_dynamic_ports_2_13_claimed_ones() -> None:
    assert has_dynamic_ports("py", None)
    assert has_dynamic_ports("py", _sandbox(SID_PEERS))
    assert has_dynamic_ports("c", _sandbox(SID_PEERS))
    assert has_dynamic_ports("c", _sandbox(SID_CTF1_PEERS))
    # lttng-relayd 2.13 (the host's: no sandbox) has no --dynamic-port-allocation.
    assert not has_dynamic_ports("c", None)
    assert not has_dynamic_ports("c", _sandbox(HOST_PEERS))
    assert not has_dynamic_ports("c", _sandbox(Peers("2.13-chroot", Path("/x"), (2, 13))))


def _write(run_dir: Path, **files: str) -> None:
    (run_dir / "relayd").mkdir(exist_ok=True)
    for name, text in files.items():
        (run_dir / "relayd" / f"{name}.port").write_text(text)


def test_port_files_are_read_once_all_three_hold_a_whole_number(tmp_path: Path) -> None:
    assert read_port_files(tmp_path) is None
    _write(tmp_path, control="20001\n", data="20002\n")
    assert read_port_files(tmp_path) is None
    _write(tmp_path, live="")  # lttng-relayd's live.port: created, not yet written
    assert read_port_files(tmp_path) is None
    _write(tmp_path, live="2000")  # no newline yet: not known to be whole
    assert read_port_files(tmp_path) is None
    _write(tmp_path, live="20003\n")
    assert read_port_files(tmp_path) == {"control": 20001, "data": 20002, "live": 20003}


@pytest.mark.parametrize("text", ["\n", "x\n", "-1\n", "1 2\n"])
def test_port_files_with_no_port_are_not_read(tmp_path: Path, text: str) -> None:
    _write(tmp_path, control="20001\n", data="20002\n", live=text)
    assert read_port_files(tmp_path) is None
