"""What a test needs from the machine: skipped without it, failed without it in CI.

`scripts/test` installs every real peer and tool and sets PYRELAYD_TEST_REQUIRE_PEERS=1, so
that a missing one fails the suite there instead of silently skipping what it tests.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

from pyrelayd_testkit.lttng import REQUIRE_PEERS_ENV_VAR, Peers, peers_unavailable


def unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it when the real peers are required."""
    if os.environ.get(REQUIRE_PEERS_ENV_VAR) == "1":
        pytest.fail(f"{message} ({REQUIRE_PEERS_ENV_VAR}=1)")
    pytest.skip(message)


def require_tool(tool: str, package: str) -> str:
    """The path of `tool` (from the Debian `package`)."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (Debian package `{package}`)")
    return path


def require_peers(peers: Peers) -> Peers:
    reason = peers_unavailable(peers)
    if reason is not None:
        unavailable(f"LTTng {peers.name} peers unavailable: {reason}")
    return peers
