"""LTTng URLs: `PROTO://HOST[:PORT1[:PORT2]][/SUBDIR]` and `file:///PATH`.

The grammar is the one `lttng-relayd -C/-D/-L` and `lttng create --set-url` accept:

* `net://`, `net4://`, `net6://` name a control *and* a data port (`:CTRL:DATA`);
* `tcp://`, `tcp4://`, `tcp6://` name one port;
* `file://` names an absolute local path.

Prefixes are case-insensitive. IPv6 literals go between brackets (`tcp6://[::1]:5342`). An
omitted or empty port is 0, meaning "the default" (or "the OS picks" with dynamic port
allocation). Sans-IO like the rest of protocol/: `parse_uri` only reads text, and
`listen_address` turns a URL into what a listener binds with the host as written. Resolving a
host name is DNS, i.e. I/O: `pyrelayd.netaddr.resolved` does it.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from typing import Literal

from pyrelayd.config import ListenAddress

MAX_PORT = 65535


class UriError(ValueError):
    """A URL that cannot be used; the message is one line, without the URL itself."""


class Scheme(enum.Enum):
    NET = "net"  # control + data pair
    TCP = "tcp"  # a single TCP endpoint
    FILE = "file"  # a local path


@dataclasses.dataclass(frozen=True)
class NetworkUri:
    """A `net*://` or `tcp*://` URL.

    `ports` holds one port for TCP and two (control, data) for NET; 0 means not given.
    `host` is as written (without brackets); only `pyrelayd.netaddr` resolves it.
    """

    scheme: Scheme
    ipv6: bool
    host: str
    ports: tuple[int, ...]
    subdir: str = ""

    @property
    def port(self) -> int:
        """The first (control) port: the only one a listener uses."""
        return self.ports[0]


@dataclasses.dataclass(frozen=True)
class FileUri:
    """A `file://` URL: an absolute local path."""

    path: str
    scheme: Scheme = Scheme.FILE


Uri = NetworkUri | FileUri

# Longest prefixes need no special ordering: each one includes its "://".
_PREFIXES: tuple[tuple[str, Scheme, bool], ...] = (
    ("file://", Scheme.FILE, False),
    ("net://", Scheme.NET, False),
    ("net4://", Scheme.NET, False),
    ("net6://", Scheme.NET, True),
    ("tcp://", Scheme.TCP, False),
    ("tcp4://", Scheme.TCP, False),
    ("tcp6://", Scheme.TCP, True),
)
_SEPARATORS = ":/"


def parse_uri(text: str) -> Uri:
    """Parse one URL; raise `UriError` naming what is wrong with it."""
    for prefix, scheme, ipv6 in _PREFIXES:
        if text[: len(prefix)].lower() == prefix:
            rest = text[len(prefix) :]
            if scheme is Scheme.FILE:
                return _parse_file(rest)
            return _parse_network(rest, scheme, ipv6)
    if "://" in text:
        raise UriError(f"unknown scheme '{text.split('://', 1)[0]}'")
    raise UriError("missing scheme (expected e.g. tcp://HOST:PORT)")


def _parse_file(rest: str) -> FileUri:
    if not rest.startswith("/"):
        raise UriError("a file:// URL needs an absolute path (file:///PATH)")
    return FileUri(rest)


def _parse_network(rest: str, scheme: Scheme, ipv6: bool) -> NetworkUri:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise UriError("missing ']' after the bracketed address")
        host = rest[1:end]
        if not host:
            raise UriError("empty address between brackets")
        rest = rest[end + 1 :]
        if rest and rest[0] not in _SEPARATORS:
            raise UriError(f"unexpected '{rest}' after the bracketed address")
    else:
        end = _find_separator(rest)
        host, rest = rest[:end], rest[end:]
    if not host:
        raise UriError("missing host")
    _check_host(host, ipv6)

    max_ports = 2 if scheme is Scheme.NET else 1
    ports = [0] * max_ports
    count = 0
    while rest.startswith(":"):
        if count == max_ports:
            raise UriError(
                f"too many ports: {scheme.value}:// takes {max_ports} "
                f"({'CONTROL:DATA' if max_ports == 2 else 'PORT'})"
            )
        end = _find_separator(rest, 1)
        ports[count] = _parse_port(rest[1:end])
        count += 1
        rest = rest[end:]

    subdir = ""
    if rest.startswith("/"):
        subdir = rest[1:]
    elif rest:
        raise UriError(f"unexpected '{rest}' after the address")
    return NetworkUri(scheme, ipv6, host, tuple(ports), subdir)


def _find_separator(text: str, start: int = 0) -> int:
    """Index of the first ':' or '/' at or after `start`, or len(text)."""
    positions = [p for p in (text.find(sep, start) for sep in _SEPARATORS) if p >= 0]
    return min(positions, default=len(text))


def _parse_port(text: str) -> int:
    if not text:
        return 0
    # Stricter than upstream's atoi(), which reads "80abc" as 80.
    if not (text.isascii() and text.isdigit()):
        raise UriError(f"invalid port '{text}' (expected a number from 1 to {MAX_PORT})")
    port = int(text)
    if port > MAX_PORT:
        raise UriError(f"port {port} is out of range (1 to {MAX_PORT})")
    return port


def _check_host(host: str, ipv6: bool) -> None:
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        raise UriError(f"invalid character in host '{host}'")
    # A literal of the other family can never resolve; say so rather than "cannot resolve".
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return
    if ipv6 and literal.version == 4:
        raise UriError(f"'{host}' is an IPv4 address; use tcp:// or net:// for IPv4")
    if not ipv6 and literal.version == 6:
        raise UriError(f"'{host}' is an IPv6 address; use tcp6:// or net6:// for IPv6")


def listen_address(
    text: str,
    default_port: int,
    *,
    dynamic_port_allocation: bool = False,
    resolve: Literal[False] = False,
) -> ListenAddress:
    """What a relay listener given the URL `text` binds, its host as written.

    Only the first (control) URI of a `net://` URL is used and its subdirectory is ignored,
    as lttng-relayd does. Port 0 becomes `default_port`, unless dynamic port allocation is
    on: then it stays 0 and the OS picks. Host names stay names: `pyrelayd.netaddr.resolved`
    makes them numeric addresses of the URL's family (I/O, so not here). `resolve=False` is
    still accepted from callers written when this function could resolve.
    """
    if resolve:
        raise TypeError("listen_address does not resolve host names: use pyrelayd.netaddr")
    uri = parse_uri(text)
    if isinstance(uri, FileUri):
        raise UriError("file:// URLs cannot be used for a listener (use tcp:// or net://)")
    port = uri.port
    if port == 0 and not dynamic_port_allocation:
        port = default_port
    return ListenAddress(host=uri.host, port=port, ipv6=uri.ipv6)
