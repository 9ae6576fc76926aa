"""The capture file format: what crossed each proxied relayd connection, in order.

All integers are big-endian.

File header (24 bytes)::

    off size field
      0   8  magic           b"PYRDCAP\\0"
      8   4  format version  1
     12   4  reserved        0
     16   8  start time      wall clock at the start, ns since the Unix epoch

Then records back to back, each a 20-byte header followed by `body length` bytes::

    off size field
      0   8  time offset     ns since the start of the recording (monotonic clock)
      8   4  connection id   1, 2, ... in accept order; control and data connections share it
     12   1  kind            0 control, 1 data
     13   1  direction       0 to relay (peer -> relay), 1 from relay (relay -> peer)
     14   1  event           0 open, 1 bytes, 2 close
     15   1  reserved        0
     16   4  body length
     20   .  body

Bodies by event:

* open (direction "to relay"): `u32` id of the control connection a data connection belongs
  to (0 for control connections and unpaired data connections), then the peer's address as
  UTF-8 text (for humans only).
* bytes: the raw bytes exactly as read from the sending socket.
* close: empty. "to relay" = the peer stopped sending (the relay then saw EOF); "from relay"
  = the relay closed its side.

The writer flushes after every record, so a recording stopped by a signal ends on a
record boundary; a file cut in the middle of a record is reported as truncated.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Self

MAGIC = b"PYRDCAP\0"
FORMAT_VERSION = 1
FILE_HEADER = struct.Struct(">8sIIQ")  # magic, version, reserved, start wall-clock ns
RECORD_HEADER = struct.Struct(">QIBBBBI")  # time, connection, kind, direction, event, 0, length
OPEN_BODY = struct.Struct(">I")  # partner control connection id (0 = none)
NO_PARTNER = 0


class RecordingError(ValueError):
    """A capture file that cannot be read: wrong magic or version, truncated, bad field."""


class Kind(enum.IntEnum):
    CONTROL = 0
    DATA = 1


class Direction(enum.IntEnum):
    TO_RELAY = 0
    FROM_RELAY = 1


class Event(enum.IntEnum):
    OPEN = 0
    BYTES = 1
    CLOSE = 2


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingHeader:
    version: int
    start_wall_ns: int


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One event of one connection; `data`, `partner` and `peer` depend on `event`."""

    time_ns: int
    connection: int
    kind: Kind
    direction: Direction
    event: Event
    data: bytes = b""  # BYTES: the raw bytes
    partner: int | None = None  # OPEN of a data connection: its control connection
    peer: str = ""  # OPEN: the peer's address, informational

    def encode(self) -> bytes:
        if self.event == Event.OPEN:
            partner = NO_PARTNER if self.partner is None else self.partner
            body = OPEN_BODY.pack(partner) + self.peer.encode()
        elif self.event == Event.BYTES:
            body = self.data
        else:
            body = b""
        header = RECORD_HEADER.pack(
            self.time_ns, self.connection, self.kind, self.direction, self.event, 0, len(body)
        )
        return header + body

    @classmethod
    def decode(cls, header: bytes, body: bytes, offset: int = 0) -> Self:
        """A record from its 20-byte header and body; `offset` only serves error messages."""
        time_ns, connection, kind, direction, event, _, _ = RECORD_HEADER.unpack(header)
        try:
            kind_value, direction_value, event_value = (
                Kind(kind), Direction(direction), Event(event)
            )
        except ValueError as error:
            raise RecordingError(f"record at offset {offset}: {error}") from None
        if event_value == Event.OPEN:
            if len(body) < OPEN_BODY.size:
                raise RecordingError(f"open record at offset {offset}: body too short")
            (partner,) = OPEN_BODY.unpack_from(body)
            peer = body[OPEN_BODY.size :].decode(errors="replace")
            return cls(
                time_ns, connection, kind_value, direction_value, event_value,
                partner=None if partner == NO_PARTNER else partner, peer=peer,
            )
        data = body if event_value == Event.BYTES else b""
        return cls(time_ns, connection, kind_value, direction_value, event_value, data=data)


def encode_file_header(start_wall_ns: int) -> bytes:
    return FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0, start_wall_ns)


def decode_file_header(raw: bytes) -> RecordingHeader:
    if len(raw) < FILE_HEADER.size:
        raise RecordingError(f"truncated file header ({len(raw)} of {FILE_HEADER.size} bytes)")
    magic, version, _, start = FILE_HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise RecordingError("not a pyrelayd capture file (bad magic)")
    if version != FORMAT_VERSION:
        raise RecordingError(f"unsupported capture format version {version}")
    return RecordingHeader(version, start)


def parse_recording(raw: bytes) -> tuple[RecordingHeader, list[Record]]:
    """The header and records of a whole capture file held in memory."""
    header = decode_file_header(raw)
    records: list[Record] = []
    offset = FILE_HEADER.size
    while offset < len(raw):
        if len(raw) - offset < RECORD_HEADER.size:
            raise RecordingError(f"truncated record header at offset {offset}")
        record_header = raw[offset : offset + RECORD_HEADER.size]
        length = RECORD_HEADER.unpack(record_header)[-1]
        body_start = offset + RECORD_HEADER.size
        if len(raw) - body_start < length:
            raise RecordingError(
                f"truncated record at offset {offset}: body of {length} bytes, "
                f"{len(raw) - body_start} present"
            )
        body = raw[body_start : body_start + length]
        records.append(Record.decode(record_header, body, offset))
        offset = body_start + length
    return header, records


def read_recording(path: str | Path) -> list[Record]:
    """Every record of a capture file (loaded in memory), or RecordingError."""
    return parse_recording(Path(path).read_bytes())[1]


class RecordingWriter:
    """Appends records to a capture file, flushing each one to the OS as it is written."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._start = time.monotonic_ns()
        file.write(encode_file_header(time.time_ns()))
        file.flush()

    @classmethod
    def create(cls, path: str | Path) -> Self:
        return cls(Path(path).open("wb"))

    def elapsed_ns(self) -> int:
        return time.monotonic_ns() - self._start

    def write(self, record: Record) -> None:
        self._file.write(record.encode())
        self._file.flush()

    def write_all(self, records: Iterable[Record]) -> None:
        for record in records:
            self.write(record)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()
