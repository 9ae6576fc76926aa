"""What the relay received and served, counted for the metrics and status endpoints.

The hot path only adds to plain ints of objects it already holds: each stream counts its own
packets and bytes, and hands them to its session when it closes. Everything else (sums per
session, the bounded set of per-session series, viewer lag) is computed when someone asks,
from the model as it is then; nothing here allocates per packet.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pyrelayd.storage.paths import UnsafeNameError

if TYPE_CHECKING:
    from pyrelayd.model.session import RelaySession
    from pyrelayd.model.stream import RelayStream
    from pyrelayd.model.viewer import ViewerStream

# Sessions (by hostname and name) that get series of their own; older ones are summed up
# under OTHER_SESSION, so that the number of series stays bounded.
DEFAULT_SESSION_SERIES = 100
OTHER_SESSION = ("", "other")  # (hostname, session name): no peer sends an empty hostname
# LTTng's clocks count nanoseconds (a trace clock of another frequency skews lag seconds).
TRACE_CLOCK_HZ = 1_000_000_000


class ErrorKind(enum.Enum):
    """Why the relay refused input or dropped a peer; the value is the metric label."""

    PROTOCOL = "protocol_error"  # malformed or out-of-place message
    PATH_REFUSED = "path_refused"  # a name or path that would leave the output directory
    DISK = "disk_error"  # the file system failed (full, read-only, permissions)


def error_kind(error: BaseException) -> ErrorKind:
    for cause in (error, error.__cause__):
        if isinstance(cause, UnsafeNameError):
            return ErrorKind.PATH_REFUSED
        if isinstance(cause, OSError):
            return ErrorKind.DISK
    return ErrorKind.PROTOCOL


@dataclasses.dataclass(slots=True)
class Received:
    """Packets and bytes received from the consumer daemons (data, then metadata)."""

    packets: int = 0
    bytes: int = 0  # packet payload, as sent on data connections (without relay padding)
    metadata_bytes: int = 0

    def add(self, other: Received) -> None:
        self.packets += other.packets
        self.bytes += other.bytes
        self.metadata_bytes += other.metadata_bytes

    def add_stream(self, stream: RelayStream) -> None:
        if stream.is_metadata:
            self.metadata_bytes += stream.received_bytes
        else:
            self.packets += stream.received_packets
            self.bytes += stream.received_bytes


class RelayCounters:
    """Relay-wide counts that no model object outlives to keep."""

    def __init__(self) -> None:
        self.connections_accepted = {"control": 0, "data": 0, "live": 0}
        self.errors = dict.fromkeys(ErrorKind, 0)
        self.viewer_sent_bytes = 0  # by viewer connections already closed

    def count(self, kind: ErrorKind) -> None:
        self.errors[kind] += 1

    def count_error(self, error: BaseException) -> None:
        self.errors[error_kind(error)] += 1


@dataclasses.dataclass
class _SessionEntry:
    released: Received = dataclasses.field(default_factory=Received)
    live: dict[int, RelaySession] = dataclasses.field(default_factory=dict)

    def total(self) -> Received:
        total = Received()
        total.add(self.released)
        for session in self.live.values():
            total.add(session.received())
        return total


class SessionLedger:
    """What each session received, by (hostname, session name), bounded in size.

    The `keep` names created most recently have an entry of their own, which outlives
    their relay sessions (the kernel and user space consumers of one recording session
    add up under one name). An older name is folded into OTHER_SESSION, sessions still
    receiving included: every total only ever grows, and so does their sum.
    """

    def __init__(self, keep: int = DEFAULT_SESSION_SERIES) -> None:
        self.keep = keep
        self.created = 0
        self._entries: collections.OrderedDict[tuple[str, str], _SessionEntry] = (
            collections.OrderedDict())
        self._other = _SessionEntry()

    def session_created(self, session: RelaySession) -> None:
        self.created += 1
        key = (session.hostname, session.name)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _SessionEntry()
        else:
            self._entries.move_to_end(key)
        entry.live[session.id] = session
        while len(self._entries) > self.keep:
            _, oldest = self._entries.popitem(last=False)
            self._other.released.add(oldest.released)
            self._other.live.update(oldest.live)

    def session_released(self, session: RelaySession) -> None:
        for entry in (self._entries.get((session.hostname, session.name)), self._other):
            if entry is not None and entry.live.pop(session.id, None) is not None:
                entry.released.add(session.received())
                return

    def totals(self) -> Iterator[tuple[tuple[str, str], Received]]:
        """(hostname, session name) and what it received, OTHER_SESSION last."""
        for key, entry in self._entries.items():
            yield key, entry.total()
        yield OTHER_SESSION, self._other.total()


@dataclasses.dataclass(frozen=True, slots=True)
class Lag:
    """How far a viewer is behind the newest indexed packet of what it reads."""

    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __add__(self, other: Lag) -> Lag:
        return Lag(self.packets + other.packets, self.bytes + other.bytes,
                   max(self.seconds, other.seconds))


def viewer_stream_lag(viewer_stream: ViewerStream) -> Lag:
    """Packets indexed but not yet handed to the viewer; bytes from the stream's mean packet
    size (LTTng packets of a stream all have the sub-buffer's size); seconds in trace time,
    from the end of the last packet the viewer got to the end of the newest one."""
    stream = viewer_stream.stream
    if stream.is_metadata:
        return Lag()
    behind = stream.index_received_seqcount - viewer_stream.index_sent_seqcount
    if behind <= 0:
        return Lag()
    mean_size = stream.received_bytes // stream.received_packets if stream.received_packets else 0
    start = viewer_stream.timestamp_end
    if start is None:
        start = stream.first_timestamp_begin
    seconds = max(0, stream.timestamp_end - start) / TRACE_CLOCK_HZ
    return Lag(behind, behind * mean_size, seconds)
