"""`pyrelayd-live`: list or follow the live sessions of a relay daemon (C or Python).

    pyrelayd-live net://RELAY[:PORT]
        One line per session, exactly as babeltrace2 2.1 `-i lttng-live net://RELAY[:PORT]`:
        `URL/host/HOSTNAME/SESSION (timer = US, N stream(s), M client(s) connected, FORMAT)`
        where FORMAT is `CTF 1.8` or `CTF 2` (babeltrace2 2.0 prints no format). A relay that
        speaks a protocol older than 2.15 does not say: its sessions are CTF 1.8.

    pyrelayd-live net://RELAY[:PORT]/host/HOSTNAME/SESSION [--seek last|beginning]
        Attach to every relay session of that name and host (one per consumer daemon) and
        print one line per packet, beacon and stream end until the session is destroyed.

    pyrelayd-live ... --events
        Decode events instead, with the `bt2` Python bindings: a graph made of babeltrace2's
        own `source.ctf.lttng-live` component and a small Python sink printing one line per
        event (`TIMESTAMP_NS EVENT_NAME {fields as JSON}`). That source is a viewer of its
        own (it always attaches at the last packet and announces its own protocol minor, so
        `--seek beginning` and `--minor` are refused).

    pyrelayd-live ... --minor 4
        Announce another viewer protocol minor than 15 (babeltrace2 2.1's): 4 speaks as
        babeltrace2 2.0, to which a 2.15+ relay hides CTF 2 sessions.

Errors print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from pyrelayd.client.viewer import (
    DEFAULT_RETRY_DELAY,
    Inactivity,
    LiveClient,
    LiveClientError,
    LiveEvent,
    LiveUrl,
    LiveUrlError,
    Packet,
    Seek,
    SessionInfo,
    StreamEnd,
    TraceFormat,
    merge_sessions,
    parse_live_url,
    session_url,
)
from pyrelayd.protocol.viewer import VIEWER_VERSION_MINOR, ProtocolError

PROGRAM = "pyrelayd-live"


class CliError(Exception):
    """A failure reported as one line on stderr, exit status 1."""


def _minor(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="List or follow the live sessions of an LTTng relay daemon.",
    )
    parser.add_argument(
        "url",
        help="net://RELAY[:PORT] to list sessions, "
             "net://RELAY[:PORT]/host/HOSTNAME/SESSION to follow one",
    )
    parser.add_argument(
        "--seek", choices=("last", "beginning"), default="last",
        help="where to start reading: at the next packet (last, as babeltrace2) or at the "
             "oldest one the relay still has (beginning)",
    )
    parser.add_argument(
        "--events", action="store_true",
        help="decode and print events with babeltrace2's lttng-live source (needs bt2)",
    )
    parser.add_argument(
        "--wait", action="store_true",
        help="wait for the session to appear instead of failing when it does not exist",
    )
    parser.add_argument(
        "--no-inactivity", dest="inactivity", action="store_false",
        help="do not print a line per live beacon of an idle stream",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS",
        help="give up when the relay does not answer a request within this time",
    )
    parser.add_argument(
        "--retry-delay", type=float, default=DEFAULT_RETRY_DELAY, metavar="SECONDS",
        help="pause when the relay had nothing new (default: %(default)s)",
    )
    parser.add_argument(
        "--minor", type=_minor, default=None, metavar="N",
        help=f"viewer protocol minor to announce (default: {VIEWER_VERSION_MINOR}, as "
             "babeltrace2 2.1; 4 speaks as babeltrace2 2.0, from which a 2.15+ relay hides "
             "CTF 2 sessions)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    minor = VIEWER_VERSION_MINOR if args.minor is None else args.minor
    try:
        url = parse_live_url(args.url)
        if args.events:
            if url.is_listing:
                raise CliError("--events needs a session URL (net://RELAY/host/HOST/SESSION)")
            if args.seek != "last":
                raise CliError("--events reads with babeltrace2, which always seeks to the "
                               "last packet: drop --seek")
            if args.minor is not None:
                raise CliError("--events reads with babeltrace2, which announces its own "
                               "protocol minor: drop --minor")
            follow_events(args.url, wait=args.wait, retry_delay=args.retry_delay)
        elif url.is_listing:
            asyncio.run(list_sessions(args.url, url, timeout=args.timeout, minor=minor))
        else:
            seek = Seek.BEGINNING if args.seek == "beginning" else Seek.LAST
            asyncio.run(follow_packets(url, seek, wait=args.wait, retry_delay=args.retry_delay,
                                       inactivity=args.inactivity, timeout=args.timeout,
                                       minor=minor))
    except (CliError, LiveUrlError, LiveClientError, ProtocolError) as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


# --------------------------------------------------------------------------- listing


#: How babeltrace2 2.1 names the trace formats in its listing.
TRACE_FORMAT_NAMES = {TraceFormat.CTF_1_8: "CTF 1.8", TraceFormat.CTF_2: "CTF 2"}


async def list_sessions(
    text: str,
    url: LiveUrl,
    out: TextIO | None = None,
    *,
    timeout: float | None = None,
    minor: int = VIEWER_VERSION_MINOR,
) -> None:
    """babeltrace2's listing: entries merged by (hostname, name), URL prefix as given."""
    out = out or sys.stdout
    async with LiveClient(url.relay_host, url.port, minor=minor,
                          request_timeout=timeout) as client:
        sessions = merge_sessions(await client.list_sessions())
    for session in sessions:
        out.write(format_session(text, session) + "\n")
    out.flush()


def format_session(base: str, session: SessionInfo) -> str:
    """One listing line, as babeltrace2 2.1 prints it."""
    return (
        f"{session_url(base, session.hostname, session.session_name)} "
        f"(timer = {session.live_timer}, {session.streams} stream(s), "
        f"{session.clients} client(s) connected, {TRACE_FORMAT_NAMES[session.trace_format]})"
    )


# --------------------------------------------------------------------------- packets


async def follow_packets(
    url: LiveUrl,
    seek: Seek,
    *,
    wait: bool = False,
    retry_delay: float = DEFAULT_RETRY_DELAY,
    inactivity: bool = True,
    timeout: float | None = None,
    minor: int = VIEWER_VERSION_MINOR,
    out: TextIO | None = None,
) -> None:
    out = out or sys.stdout
    assert url.target_hostname is not None and url.session_name is not None
    async with LiveClient(url.relay_host, url.port, minor=minor,
                          request_timeout=timeout) as client:
        while True:
            # Like babeltrace2: a fresh viewer session, then the relay sessions to attach.
            await client.create_session()
            ids = [
                session.id for session in await client.list_sessions()
                if session.hostname == url.target_hostname
                and session.session_name == url.session_name
            ]
            if ids:
                break
            if not wait:
                raise CliError(f"no session `{url.session_name}` of host "
                               f"`{url.target_hostname}` on {url.base}")
            await asyncio.sleep(retry_delay)
        async with client.follow(ids, seek, retry_delay=retry_delay,
                                 inactivity=inactivity) as follow:
            async for event in follow:
                out.write(format_event(event) + "\n")
                out.flush()


def format_event(event: LiveEvent) -> str:
    """One line per follow event; index fields verbatim (sizes in bits, times in cycles)."""
    stream = event.stream
    where = f"stream {stream.id} ({stream.path_name}/{stream.channel_name})"
    if isinstance(event, Packet):
        return (
            f"{where} packet offset={event.offset} packet_size={event.packet_size} "
            f"content_size={event.content_size} timestamp_begin={event.timestamp_begin} "
            f"timestamp_end={event.timestamp_end} events_discarded={event.events_discarded}"
        )
    if isinstance(event, Inactivity):
        return f"{where} inactive timestamp_end={event.timestamp_end}"
    assert isinstance(event, StreamEnd)
    return f"{where} hung up"


# --------------------------------------------------------------------------- events (bt2)


def _load_bt2() -> Any:
    try:
        return importlib.import_module("bt2")
    except ImportError:
        raise CliError("--events needs the babeltrace2 Python bindings (bt2), "
                       "e.g. /usr/bin/python3 with python3-bt2") from None


def _field_value(bt2: Any, field: Any) -> object:
    if isinstance(field, bt2._StringFieldConst):
        return str(field)
    if isinstance(field, bt2._BoolFieldConst):
        return bool(field)
    if isinstance(field, bt2._IntegerFieldConst | bt2._EnumerationFieldConst):
        return int(field)
    if isinstance(field, bt2._RealFieldConst):
        return float(field)
    if isinstance(field, bt2._StructureFieldConst):
        return {name: _field_value(bt2, value) for name, value in field.items()}
    if isinstance(field, bt2._ArrayFieldConst):
        return [_field_value(bt2, value) for value in field]
    if isinstance(field, bt2._OptionFieldConst | bt2._VariantFieldConst):
        return None if field.field is None else _field_value(bt2, field.field)
    return repr(field)


def _format_bt2_event(bt2: Any, message: Any) -> str:
    event = message.event
    try:
        timestamp = str(message.default_clock_snapshot.ns_from_origin)
    except Exception:  # no clock class, or a value outside the int64 ns range
        timestamp = "-"
    payload = event.payload_field
    fields = _field_value(bt2, payload) if payload is not None else {}
    return f"{timestamp} {event.name} {json.dumps(fields, sort_keys=False)}"


def follow_events(
    url: str,
    *,
    wait: bool = False,
    retry_delay: float = DEFAULT_RETRY_DELAY,
    write: Callable[[str], None] | None = None,
) -> None:
    """Run `source.ctf.lttng-live` -> Python sink until the session ends."""
    bt2 = _load_bt2()
    emit = write or _write_line

    sink_base: Any = bt2._UserSinkComponent

    class EventPrinter(sink_base):  # type: ignore[misc]
        def __init__(self, config: Any, params: Any, obj: Any) -> None:
            self._port = self._add_input_port("in")

        def _user_graph_is_configured(self) -> None:
            self._iterator = self._create_message_iterator(self._port)

        def _user_consume(self) -> None:
            message = next(self._iterator)
            if isinstance(message, bt2._EventMessageConst):
                emit(_format_bt2_event(bt2, message))

    try:
        graph = bt2.Graph()
        source_class = bt2.find_plugin("ctf").source_component_classes["lttng-live"]
        params = {"inputs": [url], "session-not-found-action": "continue" if wait else "fail"}
        source = graph.add_component(source_class, "lttng-live", params)
        sink = graph.add_component(EventPrinter, "printer")
        graph.connect_ports(source.output_ports["out"], sink.input_ports["in"])
        while True:
            try:
                graph.run()
                return
            except bt2.TryAgain:
                time.sleep(retry_delay)
    except bt2._Error as error:
        raise CliError(f"babeltrace2: {_bt2_error_line(error)}") from None


def _bt2_error_line(error: Any) -> str:
    """The most specific cause of a bt2 error, on one line."""
    messages = [str(cause.message).strip() for cause in error]
    messages = [m for m in messages if m]
    return " ".join(messages[0].split()) if messages else "error"


def _write_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
