"""Host names of listener URLs to numeric addresses: the DNS look-up, kept out of protocol/.

`pyrelayd.protocol.uri` only parses (sans-IO); `resolved` takes what it gives a listener and
asks the system resolver for the host's address in the URL's family, so that a bad name fails
at startup rather than at bind time.
"""

from __future__ import annotations

import dataclasses
import socket

from pyrelayd.config import ListenAddress
from pyrelayd.protocol.uri import UriError

LOOPBACK_IPV4 = "127.0.0.1"
LOOPBACK_IPV6 = "::1"


def resolve_host(host: str, ipv6: bool) -> str:
    """The numeric address `host` stands for in the given family (the first one found).

    `localhost` falls back to the loopback address when the system does not define it for
    that family (RFC 6761), as lttng does, so that a relay can start before the network is up.
    Raises `UriError` for a name with no address in that family.
    """
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        infos = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        return str(sockaddr[0])
    if host == "localhost":
        return LOOPBACK_IPV6 if ipv6 else LOOPBACK_IPV4
    raise UriError(f"cannot resolve host '{host}' to an IPv{6 if ipv6 else 4} address")


def resolved(address: ListenAddress) -> ListenAddress:
    """`address` with its host resolved (see `resolve_host`)."""
    return dataclasses.replace(address, host=resolve_host(address.host, address.ipv6))
