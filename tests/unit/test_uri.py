"""LTTng URL parsing: the grammar of `lttng-relayd -C/-D/-L` and `lttng create --set-url`;
and the resolution of listener host names (`pyrelayd.netaddr`), which is kept out of it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.config import ListenAddress
from pyrelayd.netaddr import resolve_host, resolved
from pyrelayd.protocol.uri import (
    FileUri,
    NetworkUri,
    Scheme,
    UriError,
    listen_address,
    parse_uri,
)

# --- parse_uri: accepted forms --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://0.0.0.0:5342", NetworkUri(Scheme.TCP, False, "0.0.0.0", (5342,))),
        ("tcp4://10.0.0.1:1", NetworkUri(Scheme.TCP, False, "10.0.0.1", (1,))),
        ("tcp6://[::1]:5342", NetworkUri(Scheme.TCP, True, "::1", (5342,))),
        ("tcp://localhost", NetworkUri(Scheme.TCP, False, "localhost", (0,))),
        ("tcp://localhost:", NetworkUri(Scheme.TCP, False, "localhost", (0,))),
        ("tcp://host:0", NetworkUri(Scheme.TCP, False, "host", (0,))),
        ("tcp://host:65535", NetworkUri(Scheme.TCP, False, "host", (65535,))),
        ("net://relay.example", NetworkUri(Scheme.NET, False, "relay.example", (0, 0))),
        ("net://h:1:2", NetworkUri(Scheme.NET, False, "h", (1, 2))),
        ("net4://h::2", NetworkUri(Scheme.NET, False, "h", (0, 2))),
        ("net6://[fe80::1]:7", NetworkUri(Scheme.NET, True, "fe80::1", (7, 0))),
        ("net://h:1:2/a/b", NetworkUri(Scheme.NET, False, "h", (1, 2), "a/b")),
        ("tcp://h/sub", NetworkUri(Scheme.TCP, False, "h", (0,), "sub")),
        ("tcp://h:9/", NetworkUri(Scheme.TCP, False, "h", (9,), "")),
        # Brackets are allowed for any family, as in lttng.
        ("tcp://[127.0.0.1]:5", NetworkUri(Scheme.TCP, False, "127.0.0.1", (5,))),
        ("tcp6://[localhost]:5", NetworkUri(Scheme.TCP, True, "localhost", (5,))),
        ("tcp6://localhost:5", NetworkUri(Scheme.TCP, True, "localhost", (5,))),
        ("file:///var/traces", FileUri("/var/traces")),
    ],
)
def test_parse_accepts(text: str, expected: NetworkUri | FileUri) -> None:
    assert parse_uri(text) == expected


@pytest.mark.parametrize("prefix", ["TCP://", "Tcp6://", "NET4://", "FILE://"])
def test_scheme_is_case_insensitive(prefix: str) -> None:
    rest = "/x" if prefix.lower() == "file://" else "[::1]:1" if "6" in prefix else "h:1"
    assert parse_uri(prefix + rest) == parse_uri(prefix.lower() + rest)


def test_port_property_is_the_first_port() -> None:
    uri = parse_uri("net://h:11:22")
    assert isinstance(uri, NetworkUri)
    assert uri.port == 11


# --- parse_uri: refused forms ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("xyz://h", "unknown scheme 'xyz'"),
        ("udp://h:1", "unknown scheme 'udp'"),
        ("localhost:5342", "missing scheme"),
        ("", "missing scheme"),
        ("tcp://", "missing host"),
        ("tcp://:5342", "missing host"),
        ("tcp6://::1", "missing host"),
        ("tcp6://[::1", "missing ']'"),
        ("tcp6://[]:1", "empty address"),
        ("tcp6://[::1]x", "unexpected 'x' after the bracketed address"),
        ("tcp6://[::1]5342", "unexpected '5342'"),
        ("tcp://h:abc", "invalid port 'abc'"),
        ("tcp://h:12ab", "invalid port '12ab'"),
        ("tcp://h:-1", "invalid port '-1'"),
        ("tcp://h:65536", "port 65536 is out of range"),
        ("tcp://h:99999", "out of range"),
        ("tcp://h:1:2", "too many ports"),
        ("tcp://h:1:", "too many ports"),
        ("net://h:1:2:3", "too many ports"),
        ("tcp://h x:1", "invalid character"),
        ("tcp://[::1]:5342", "is an IPv6 address"),
        ("tcp6://[127.0.0.1]:5342", "is an IPv4 address"),
        ("file://relative/path", "absolute path"),
        ("file://", "absolute path"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(UriError, match=message):
        parse_uri(text)


def test_uri_error_is_a_value_error() -> None:
    assert issubclass(UriError, ValueError)


@given(st.text(max_size=40) | st.text(max_size=30).map(lambda t: "tcp6://" + t))
def test_parse_fails_only_with_uri_error(text: str) -> None:
    # Anything else escaping (IndexError, ...) would be a bug.
    try:
        parse_uri(text)
    except UriError as error:
        assert str(error)


# --- parse_uri: round trip on generated URLs ------------------------------------------------

_label = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
_hostname = st.lists(_label, min_size=1, max_size=3).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(min_value=0, max_value=65535)
_subdir = st.from_regex(r"[A-Za-z0-9_./-]{0,20}", fullmatch=True)


@st.composite
def _network_urls(draw: st.DrawFn) -> tuple[str, NetworkUri]:
    net = draw(st.booleans())
    ipv6 = draw(st.booleans())
    host = draw(_ipv6 if ipv6 else st.one_of(_ipv4, _hostname))
    ports = tuple(draw(st.lists(_port, min_size=2 if net else 1, max_size=2 if net else 1)))
    subdir = draw(st.none() | _subdir)
    prefix = draw(
        st.sampled_from(
            ("net6://",)
            if net and ipv6
            else ("net://", "net4://")
            if net
            else ("tcp6://",)
            if ipv6
            else ("tcp://", "tcp4://")
        )
    )
    text = prefix + (f"[{host}]" if ipv6 else host)
    text += "".join(f":{port}" for port in ports)
    if subdir is not None:
        text += "/" + subdir
    expected = NetworkUri(Scheme.NET if net else Scheme.TCP, ipv6, host, ports, subdir or "")
    return text, expected


@given(_network_urls())
def test_generated_urls_parse_back(case: tuple[str, NetworkUri]) -> None:
    text, expected = case
    assert parse_uri(text) == expected


@given(_network_urls(), st.integers(min_value=1, max_value=65535))
def test_listen_address_uses_the_first_port_or_the_default(
    case: tuple[str, NetworkUri], default_port: int
) -> None:
    text, expected = case
    address = listen_address(text, default_port, resolve=False)
    assert address == ListenAddress(expected.host, expected.ports[0] or default_port, expected.ipv6)


# --- listen_address -------------------------------------------------------------------------


def test_listen_address_defaults_the_port() -> None:
    assert listen_address("tcp://0.0.0.0", 5342) == ListenAddress("0.0.0.0", 5342, False)
    assert listen_address("tcp://0.0.0.0:0", 5343) == ListenAddress("0.0.0.0", 5343, False)


def test_listen_address_keeps_port_zero_with_dynamic_allocation() -> None:
    address = listen_address("tcp://0.0.0.0", 5342, dynamic_port_allocation=True)
    assert address == ListenAddress("0.0.0.0", 0, False)
    given_port = listen_address("tcp://0.0.0.0:7000", 5342, dynamic_port_allocation=True)
    assert given_port.port == 7000


def test_listen_address_uses_only_the_control_part_of_net_urls() -> None:
    assert listen_address("net://127.0.0.1:6000:6001/x", 5342) == ListenAddress(
        "127.0.0.1", 6000, False
    )


def test_listen_address_ipv6() -> None:
    assert listen_address("tcp6://[::1]:6000", 5342) == ListenAddress("::1", 6000, True)
    assert listen_address("net6://[::]", 5342) == ListenAddress("::", 5342, True)


def test_listen_address_refuses_file_urls() -> None:
    with pytest.raises(UriError, match="file:// URLs cannot be used for a listener"):
        listen_address("file:///tmp/x", 5342)


def test_listen_address_keeps_host_names() -> None:
    # Resolving is I/O: not protocol/'s business (pyrelayd.netaddr does it).
    assert listen_address("tcp://some.name:1", 5342).host == "some.name"
    assert listen_address("tcp://some.name:1", 5342, resolve=False).host == "some.name"


def test_listen_address_refuses_to_resolve() -> None:
    with pytest.raises(TypeError, match=r"pyrelayd\.netaddr"):
        listen_address("tcp://some.name:1", 5342, resolve=True)  # type: ignore[arg-type]


# --- resolution (pyrelayd.netaddr) ----------------------------------------------------------


def test_resolved_refuses_unresolvable_hosts() -> None:
    address = listen_address("tcp://no-such-host.invalid:1", 5342)
    with pytest.raises(UriError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        resolved(address)


def test_resolved_keeps_the_port_and_family() -> None:
    assert resolved(listen_address("tcp6://localhost:6000", 5342)) == ListenAddress(
        "::1", 6000, True
    )
    assert resolved(listen_address("net://127.0.0.1", 5342, dynamic_port_allocation=True)) == (
        ListenAddress("127.0.0.1", 0, False)
    )


@pytest.mark.parametrize(("ipv6", "loopback"), [(False, "127.0.0.1"), (True, "::1")])
def test_localhost_resolves_in_both_families(ipv6: bool, loopback: str) -> None:
    # Falls back to the loopback address when the system does not name it for the family.
    assert resolve_host("localhost", ipv6) == loopback


def test_numeric_hosts_resolve_to_themselves() -> None:
    assert resolve_host("10.1.2.3", False) == "10.1.2.3"
    assert resolve_host("::", True) == "::"
