"""Inputs the fuzzers found (fuzz/targets.py), replayed on the sans-IO control handler.

Each used to raise out of the handler (the connection's task died with an internal error
instead of the peer getting lttng-relayd's refusal).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.protocol.relayd import (
    AddStream,
    CloseTraceChunk,
    Command,
    CreateSession,
    CreateTraceChunk,
    ReturnCode,
    Version,
    close_trace_chunk_reply,
    create_session_reply_2_11,
    generic_reply,
)
from pyrelayd.server.control import ControlHandler

UUID = bytes(range(1, 17))
FAR_FUTURE = 2**62  # no time_t can hold it as a date


@pytest.fixture
def handler(tmp_path: Path) -> ControlHandler:
    handler = ControlHandler(Relay(RelaySettings(output_root=tmp_path)), "fuzzed")
    assert handler.handle(Command.VERSION, Version(2, 13).encode()).close is False
    return handler


def create_session(handler: ControlHandler, creation_time: int = 1_700_000_000) -> bytes | None:
    request = CreateSession("s", "h", "", sessiond_uuid=UUID, sessiond_session_id=1,
                            creation_time=creation_time)
    return handler.handle(Command.CREATE_SESSION, request.encode(13)).reply


def create_chunk_0(handler: ControlHandler) -> None:
    create_session(handler)
    outcome = handler.handle(Command.CREATE_TRACE_CHUNK,
                             CreateTraceChunk(0, 1_700_000_000).encode())
    assert outcome.reply == generic_reply(ReturnCode.OK)


def test_a_session_created_in_a_year_no_clock_can_show_is_refused(
    handler: ControlHandler,
) -> None:
    assert create_session(handler, FAR_FUTURE) == create_session_reply_2_11(
        0, ReturnCode.FATAL, None
    )
    assert create_session(handler) is not None  # the connection still works


def test_a_trace_chunk_created_in_a_year_no_clock_can_show_is_refused(
    handler: ControlHandler,
) -> None:
    create_chunk_0(handler)
    outcome = handler.handle(Command.CREATE_TRACE_CHUNK,
                             CreateTraceChunk(1, FAR_FUTURE).encode())
    assert outcome.reply == generic_reply(ReturnCode.INVALID)


def test_a_trace_chunk_closed_in_a_year_no_clock_can_show_is_refused(
    handler: ControlHandler,
) -> None:
    create_chunk_0(handler)
    outcome = handler.handle(Command.CLOSE_TRACE_CHUNK,
                             CloseTraceChunk(0, FAR_FUTURE, 1).encode())
    assert outcome.reply == close_trace_chunk_reply(ReturnCode.INVALID, None)
    # Nothing moved: the chunk closes normally afterwards.
    outcome = handler.handle(Command.CLOSE_TRACE_CHUNK,
                             CloseTraceChunk(0, 1_700_000_100, 1).encode())
    assert outcome.reply is not None and struct.unpack(">I", outcome.reply[:4])[0] == 10


def test_a_stream_announcing_2_64_tracefiles_is_added(handler: ControlHandler) -> None:
    create_chunk_0(handler)
    request = AddStream("channel0_0", "ust/uid/0/64-bit", 4096, 2**64 - 1, 0)
    outcome = handler.handle(Command.ADD_STREAM, request.encode(13))
    assert outcome.reply is not None
    assert struct.unpack(">QI", outcome.reply)[1] == ReturnCode.OK


def test_a_first_trace_chunk_created_in_a_year_no_clock_can_show_is_refused(
    handler: ControlHandler,
) -> None:
    """Chunk 0 is named only when it closes: its creation time used to be checked then, out
    of the handler (UnsafeNameError on CLOSE_TRACE_CHUNK; fuzzers, 2026-12-02)."""
    create_session(handler)
    outcome = handler.handle(Command.CREATE_TRACE_CHUNK,
                             CreateTraceChunk(0, 2**64 - 225).encode())
    assert outcome.reply == generic_reply(ReturnCode.INVALID)
    outcome = handler.handle(Command.CLOSE_TRACE_CHUNK,
                             CloseTraceChunk(0, 1_700_000_100, None).encode())
    assert outcome.reply == close_trace_chunk_reply(26, None), "no such chunk (lttng: NOMEM)"


def test_4_gib_of_padding_announced_in_a_few_bytes_costs_nothing(
    handler: ControlHandler, tmp_path: Path,
) -> None:
    """A SEND_METADATA of 9 bytes announcing 4 GiB - 1 of padding (any u32 is accepted, as
    lttng-relayd does): the file reads the same, but the padding is a hole, not 4 GiB
    written (the fuzzers filled a machine's memory with it on /dev/shm, 2026-12-02)."""
    from pyrelayd.protocol.relayd import CONTROL_HEADER, ControlFramer, decode_status_reply

    create_chunk_0(handler)
    reply = handler.handle(Command.ADD_STREAM, AddStream("metadata", "ust", 0, 0).encode(13))
    assert reply.reply is not None
    stream_handle = decode_status_reply(reply.reply)[0]
    text = b"/* CTF */"
    payload = struct.pack(">QI", stream_handle, 2**32 - 1) + text
    framer = ControlFramer()
    for event in framer.feed(CONTROL_HEADER.pack(0, len(payload), Command.SEND_METADATA, 0)
                             + payload):
        handler.receive(event)
    [metadata] = [p for p in tmp_path.rglob("metadata") if p.is_file()]
    assert metadata.stat().st_size == len(text) + 2**32 - 1
    assert metadata.stat().st_blocks * 512 < 1 << 20, "the padding took disk space"
    with metadata.open("rb") as file:
        assert file.read(len(text)) == text
        file.seek(3 << 30)
        assert file.read(4096) == bytes(4096)
