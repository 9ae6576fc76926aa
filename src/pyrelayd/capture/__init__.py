"""Record relayd control/data traffic through a proxy and replay it into any relay.

`pyrelayd-capture record` forwards connections unchanged to a real relay and writes what
crosses them to one recording (format in `recording`); `pyrelayd-capture replay` sends a
recording into a relay, rewriting relay-assigned ids. The library API:

* `CaptureProxy` (async context manager) / `record(...)`: run the recording proxy.
* `replay(path_or_records, control=(host, port), data=(host, port)) -> ReplaySummary`.
* `read_recording(path) -> list[Record]`, `RecordingWriter`: the file format.

Pure parts (framing, id rewriting, replay planning) live in `framing`, `rewrite`, `plan`
and `replayer`; `proxy` and `replay` are the asyncio shells.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from pyrelayd.capture.cli import main, parse_address
from pyrelayd.capture.proxy import Address, CaptureProxy, ConnectionTable, RecordSummary
from pyrelayd.capture.recording import (
    Direction,
    Event,
    Kind,
    Record,
    RecordingError,
    RecordingHeader,
    RecordingWriter,
    parse_recording,
    read_recording,
)
from pyrelayd.capture.replay import replay
from pyrelayd.capture.replayer import ReplayError, ReplaySummary


async def record(
    path: str | Path,
    *,
    control_listen: Address,
    data_listen: Address,
    control_relay: Address,
    data_relay: Address,
    stop: asyncio.Event,
    ready: Callable[[CaptureProxy], None] | None = None,
) -> RecordSummary:
    """Run the recording proxy until `stop` is set; `ready` gets the listening proxy."""
    proxy = CaptureProxy(
        path, control_listen=control_listen, data_listen=data_listen,
        control_relay=control_relay, data_relay=data_relay,
    )
    async with proxy:
        if ready is not None:
            ready(proxy)
        await stop.wait()
    return proxy.summary


__all__ = [
    "Address",
    "CaptureProxy",
    "ConnectionTable",
    "Direction",
    "Event",
    "Kind",
    "Record",
    "RecordSummary",
    "RecordingError",
    "RecordingHeader",
    "RecordingWriter",
    "ReplayError",
    "ReplaySummary",
    "main",
    "parse_address",
    "parse_recording",
    "read_recording",
    "record",
    "replay",
]
