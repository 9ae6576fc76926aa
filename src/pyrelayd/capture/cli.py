"""`pyrelayd-capture`: record relayd traffic through a proxy, replay it into a relay."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence

from pyrelayd.capture.proxy import Address, CaptureProxy, RecordSummary, format_address
from pyrelayd.capture.recording import RecordingError
from pyrelayd.capture.replay import replay
from pyrelayd.capture.replayer import ReplayError
from pyrelayd.constants import DEFAULT_CONTROL_PORT as DEFAULT_CONTROL_PORT
from pyrelayd.constants import DEFAULT_DATA_PORT as DEFAULT_DATA_PORT

_SCHEMES = ("tcp://", "tcp4://", "tcp6://")

DESCRIPTION = """\
Record the control and data connections between session/consumer daemons and a relay
daemon into one file, and replay such a file into any relay daemon.

record: listen like lttng-relayd on --control-port/--data-port, forward every connection
unchanged to the relay at --to-control/--to-data, and record both directions of every
connection to -O FILE until SIGINT or SIGTERM.

replay: send a recording's peer-side bytes to a relay, in the recorded order, rewriting
relay session ids and stream handles to the ones this relay hands out. Exits non-zero on a
malformed recording or when the relay refuses a command that succeeded when recorded.

Addresses are HOST:PORT, [IPV6]:PORT or tcp://HOST:PORT (also tcp4://, tcp6://); an
omitted port means the relayd default (5342 control, 5343 data); port 0 (record's
listeners) picks a free port, printed at start-up.
"""


def parse_address(text: str, default_port: int) -> Address:
    """HOST[:PORT], [IPV6][:PORT], optionally prefixed by tcp:// (a trailing /PATH is ignored,
    as lttng-relayd does)."""
    rest = text
    for scheme in _SCHEMES:
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme) :].split("/", 1)[0]
            break
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"bad address {text!r}")
        port_text = tail[1:]
    elif rest.count(":") > 1:
        raise ValueError(f"bad address {text!r}: bracket IPv6 literals, e.g. [::1]:5342")
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"bad port in address {text!r}")
    return host, int(port_text)


def _address_type(default_port: int) -> Callable[[str], Address]:
    def convert(text: str) -> Address:
        try:
            return parse_address(text, default_port)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrelayd-capture", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    record = commands.add_parser(
        "record", help="proxy connections to a relay and record them",
        description="Proxy connections to a relay and record them to -O FILE until "
                    "SIGINT/SIGTERM.",
    )
    control_type = _address_type(DEFAULT_CONTROL_PORT)
    data_type = _address_type(DEFAULT_DATA_PORT)
    record.add_argument("-C", "--control-port", metavar="URL", type=control_type,
                        default=("0.0.0.0", DEFAULT_CONTROL_PORT),
                        help="where to accept control connections (default tcp://0.0.0.0:5342)")
    record.add_argument("-D", "--data-port", metavar="URL", type=data_type,
                        default=("0.0.0.0", DEFAULT_DATA_PORT),
                        help="where to accept data connections (default tcp://0.0.0.0:5343)")
    record.add_argument("--to-control", metavar="HOST:PORT", type=control_type, required=True,
                        help="control port of the real relay")
    record.add_argument("--to-data", metavar="HOST:PORT", type=data_type, required=True,
                        help="data port of the real relay")
    record.add_argument("-O", "--output", metavar="FILE", required=True,
                        help="recording file to write (overwritten)")

    play = commands.add_parser(
        "replay", help="replay a recording into a relay",
        description="Replay a recording into a relay; prints a one-line summary. Returns once "
                    "every request was answered and the relay has closed every connection "
                    "after reading our EOF, i.e. it has processed every replayed byte.",
    )
    play.add_argument("file", metavar="FILE", help="recording made by `record`")
    play.add_argument("--control", metavar="HOST:PORT", type=control_type,
                      default=("127.0.0.1", DEFAULT_CONTROL_PORT),
                      help="control port of the relay (default 127.0.0.1:5342)")
    play.add_argument("--data", metavar="HOST:PORT", type=data_type,
                      default=("127.0.0.1", DEFAULT_DATA_PORT),
                      help="data port of the relay (default 127.0.0.1:5343)")
    play.add_argument("--reply-timeout", metavar="SECONDS", type=float, default=30.0,
                      help="how long to wait for each reply (default 30)")
    play.add_argument("--close-timeout", metavar="SECONDS", type=float, default=30.0,
                      help="how long to wait, at the end, for the relay to close the "
                           "connections after our EOF (default 30)")
    return parser


async def _record(args: argparse.Namespace) -> RecordSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    proxy = CaptureProxy(
        args.output, control_listen=args.control_port, data_listen=args.data_port,
        control_relay=args.to_control, data_relay=args.to_data,
    )
    async with proxy:
        print(
            f"pyrelayd-capture: recording to {args.output}: control "
            f"{format_address(proxy.control_address)} -> {format_address(args.to_control)}, "
            f"data {format_address(proxy.data_address)} -> {format_address(args.to_data)}",
            file=sys.stderr, flush=True,
        )
        await stop.wait()
    return proxy.summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "record":
            print(asyncio.run(_record(args)), flush=True)
        else:
            summary = asyncio.run(replay(
                args.file, args.control, args.data,
                reply_timeout=args.reply_timeout, close_timeout=args.close_timeout,
            ))
            print(summary, flush=True)
    except RecordingError as error:
        print(f"pyrelayd-capture: malformed recording {getattr(args, 'file', '')}: {error}",
              file=sys.stderr)
        return 1
    except (ReplayError, OSError) as error:
        print(f"pyrelayd-capture: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
