"""The health socket's protocol (sans-IO): the one 4-byte request framed, what to do with it,
and the 8-byte bitmask reply, both in host byte order. The socket itself, queried by the real
liblttng-ctl, is tests/unit/test_health.py's."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.protocol.health import (
    HEALTH_CMD_CHECK,
    REPLY,
    REQUEST,
    Check,
    Close,
    HealthRequestReader,
    encode_reply,
)

CHECK = struct.pack("=I", HEALTH_CMD_CHECK)


def test_the_wire_format_is_lttng_relayds() -> None:
    assert (HEALTH_CMD_CHECK, REQUEST.size, REPLY.size) == (0, 4, 8)
    assert REQUEST.format == "=I" and REPLY.format == "=Q"  # host byte order, no padding


def test_a_whole_check_is_answered() -> None:
    reader = HealthRequestReader()
    assert reader.wanted == 4 and not reader.done

    assert reader.receive(CHECK) == Check()
    assert reader.done and reader.wanted == 0


@pytest.mark.parametrize("cuts", [(1, 2, 3), (1,), (2,), (3,)])
def test_a_request_is_framed_from_partial_reads(cuts: tuple[int, ...]) -> None:
    reader = HealthRequestReader()
    bounds = list(zip((0, *cuts), (*cuts, REQUEST.size), strict=True))
    for start, end in bounds[:-1]:
        assert reader.wanted == REQUEST.size - start  # never more than the request's rest
        assert reader.receive(CHECK[start:end]) is None
    start, end = bounds[-1]
    assert reader.wanted == REQUEST.size - start
    assert reader.receive(CHECK[start:end]) == Check()
    assert reader.wanted == 0


def test_nothing_after_the_request_is_taken() -> None:
    # One query per connection: bytes after the request (another one) are never decoded.
    assert HealthRequestReader().receive(CHECK + struct.pack("=I", 7)) == Check()


@pytest.mark.parametrize("command", [1, 7, 0xFFFFFFFF])
def test_an_unknown_command_closes_without_reply(command: int) -> None:
    reader = HealthRequestReader()
    assert reader.receive(struct.pack("=I", command)) == Close(f"unknown command {command}")
    assert reader.done


def test_the_command_is_read_in_host_byte_order() -> None:
    one = struct.pack("=I", 1)
    assert HealthRequestReader().receive(one) == Close("unknown command 1")
    swapped = one[::-1]  # 1 in the other byte order: 0x01000000
    assert HealthRequestReader().receive(swapped) == Close(
        f"unknown command {struct.unpack('=I', swapped)[0]}")


@pytest.mark.parametrize("received", [b"", b"\0", b"\0\0", b"\0\0\0"])
def test_a_client_closing_before_a_whole_request_gets_no_reply(received: bytes) -> None:
    reader = HealthRequestReader()
    if received:
        assert reader.receive(received) is None
    assert reader.receive(b"") == Close(None)  # b"": end of stream, nothing to say
    assert reader.done


def test_receiving_after_the_decision_is_a_bug() -> None:
    reader = HealthRequestReader()
    reader.receive(CHECK)
    with pytest.raises(RuntimeError, match="over"):
        reader.receive(CHECK)


@pytest.mark.parametrize(("bitmask", "expected"), [
    (0, struct.pack("=Q", 0)),
    (0b101, struct.pack("=Q", 5)),
    ((1 << 64) - 1, b"\xff" * 8),
])
def test_the_reply_is_the_bitmask_on_8_bytes_in_host_byte_order(bitmask: int,
                                                                  expected: bytes) -> None:
    assert encode_reply(bitmask) == expected
    assert len(encode_reply(bitmask)) == 8


@pytest.mark.parametrize("bitmask", [-1, 1 << 64])
def test_a_bitmask_that_does_not_fit_is_refused(bitmask: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_reply(bitmask)


@given(st.binary(max_size=16), st.lists(st.integers(1, 4), max_size=8))
def test_any_bytes_in_any_pieces_give_one_decision_at_most(data: bytes,
                                                           sizes: list[int]) -> None:
    reader = HealthRequestReader()
    decisions = []
    for size in sizes:
        if reader.done:
            break
        piece, data = data[:size], data[size:]
        event = reader.receive(piece)
        assert reader.wanted <= REQUEST.size
        if event is not None:
            decisions.append(event)
    assert len(decisions) <= 1
    assert all(isinstance(event, Check | Close) for event in decisions)
