"""The HTTP request framing and response encoding of the metrics endpoint (sans-IO), and
the `--metrics-port` option."""

from __future__ import annotations

import http
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.cli import CliError, parse_options
from pyrelayd.config import DEFAULT_METRICS_PORT, ListenAddress
from pyrelayd.protocol.http import (
    MAX_HEAD_SIZE,
    Exchange,
    HttpError,
    Request,
    RequestReader,
    encode_response,
    parse_head,
)

# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(("head", "request_"), [
    (b"GET /metrics HTTP/1.1\r\nHost: relay:9464", Request("GET", "/metrics", 1, True)),
    (b"GET /metrics HTTP/1.1\r\nConnection: close", Request("GET", "/metrics", 1, False)),
    (b"HEAD /status?pretty HTTP/1.0", Request("HEAD", "/status", 0, False)),
    (b"GET / HTTP/1.0\r\nconnection: Keep-Alive", Request("GET", "/", 0, True)),
    (b"GET / HTTP/1.1\r\nContent-Length: 0\r\nAccept:text/plain", Request("GET", "/", 1, True)),
    (b"POST /metrics HTTP/1.1", Request("POST", "/metrics", 1, True)),
])
def test_request_heads(head: bytes, request_: Request) -> None:
    assert parse_head(head) == request_


@pytest.mark.parametrize(("head", "status"), [
    (b"", 400),
    (b"GET /metrics", 400),
    (b"get /metrics HTTP/1.1", 400),
    (b"GET  /metrics HTTP/1.1", 400),
    (b"GET metrics HTTP/1.1", 400),
    (b"GET * HTTP/1.1", 400),
    (b"GET /metrics HTTP/1.2", 400),
    (b"GET /m\xc3\xa9trics HTTP/1.1", 400),
    (b"GET / HTTP/1.1\r\n Host: folded", 400),
    (b"GET / HTTP/1.1\r\nHost : relay", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 3", 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked", 400),
    (b"GET / HTTP/1.1" + b"\r\nX: y" * 65, 431),
])
def test_bad_request_heads(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as refused:
        parse_head(head)
    assert refused.value.status == status


def test_pipelined_requests_are_framed_one_at_a_time() -> None:
    reader = RequestReader()
    reader.feed(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\nGET /c")
    first, second = reader.next_request(), reader.next_request()
    assert (first, second) == (Request("GET", "/a", 1, True), Request("GET", "/b", 1, False))
    assert reader.next_request() is None
    reader.feed(b" HTTP/1.1\r\n\r\n")
    assert reader.next_request() == Request("GET", "/c", 1, True)
    assert reader.buffered == 0


def test_a_head_larger_than_the_limit_is_refused_before_it_ends() -> None:
    reader = RequestReader(max_head_size=64)
    reader.feed(b"GET / HTTP/1.1\r\nX: " + b"x" * 40)
    assert reader.next_request() is None
    reader.feed(b"x" * 10)
    with pytest.raises(HttpError) as refused:
        reader.next_request()
    assert refused.value.status == http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_any_bytes_give_requests_or_a_refusal(chunks: list[bytes]) -> None:
    reader = RequestReader()
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (request := reader.next_request()) is not None:
                assert request.path.startswith("/")
            assert reader.buffered <= MAX_HEAD_SIZE + len(b"\r\n\r\n")
    except HttpError as error:
        assert error.status in (400, 431)


# --------------------------------------------------------------------------- responses


def test_responses_say_their_length_and_whether_the_connection_stays() -> None:
    response = encode_response(http.HTTPStatus.OK, b"ok\n", "text/plain", keep_alive=True)
    assert response == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                        b"Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\nok\n")
    head = encode_response(http.HTTPStatus.METHOD_NOT_ALLOWED, b"no\n", "text/plain",
                           keep_alive=False, head_only=True, extra_headers=(("Allow", "GET"),))
    assert head.endswith(b"Content-Length: 3\r\nCache-Control: no-store\r\n"
                         b"Connection: close\r\nAllow: GET\r\n\r\n")


def test_a_bad_request_is_refused_with_its_status_and_the_connection_closed() -> None:
    error = HttpError(http.HTTPStatus.BAD_REQUEST, "bad request line 'x'")
    assert error.reply == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 21\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        b"bad request line 'x'\n")


# --------------------------------------------------------------------------- exchanges

ROUTES = frozenset({"/metrics", "/healthz"})


def _status_and_headers(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("ascii").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_a_method_other_than_get_and_head_is_405_with_allow(method: str) -> None:
    exchange = Exchange(Request(method, "/metrics", 1, True), ROUTES)
    assert exchange.refusal is not None
    status, headers, body = _status_and_headers(exchange.refusal)
    assert (status, headers["Allow"], body) == (405, "GET, HEAD", b"method not allowed\n")
    assert headers["Connection"] == "keep-alive" and exchange.keep_alive


def test_a_path_without_a_route_is_404() -> None:
    exchange = Exchange(Request("GET", "/nothing", 1, False), ROUTES)
    assert exchange.refusal is not None
    status, headers, body = _status_and_headers(exchange.refusal)
    assert (status, body, headers["Connection"]) == (404, b"not found\n", "close")
    assert "Allow" not in headers and not exchange.keep_alive


def test_the_method_is_checked_before_the_path() -> None:
    refusal = Exchange(Request("POST", "/nothing", 1, True), ROUTES).refusal
    assert refusal is not None and refusal.startswith(b"HTTP/1.1 405 ")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_route_answers_get_and_head(method: str) -> None:
    exchange = Exchange(Request(method, "/metrics", 1, True), ROUTES)
    assert exchange.refusal is None
    reply = exchange.respond(http.HTTPStatus.OK, b"up 1\n", "text/plain; version=0.0.4")
    status, headers, body = _status_and_headers(reply)
    assert (status, headers["Content-Type"], headers["Content-Length"]) == (
        200, "text/plain; version=0.0.4", "5")
    assert body == (b"" if method == "HEAD" else b"up 1\n")  # HEAD: the head of the GET


def test_a_route_that_fails_is_500_framed_for_the_request() -> None:
    exchange = Exchange(Request("HEAD", "/healthz", 0, False), ROUTES)
    status, headers, body = _status_and_headers(exchange.failed())
    assert (status, headers["Content-Length"], body) == (500, "15", b"")
    assert headers["Connection"] == "close" and not exchange.keep_alive


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET /metrics HTTP/1.1", True),
    (b"GET /metrics HTTP/1.1\r\nConnection: close", False),
    (b"GET /metrics HTTP/1.0", False),
    (b"GET /metrics HTTP/1.0\r\nConnection: keep-alive", True),
])
def test_the_connection_stays_open_when_the_client_keeps_it_alive(head: bytes,
                                                                  keep_alive: bool) -> None:
    exchange = Exchange(parse_head(head), ROUTES)
    assert exchange.keep_alive is keep_alive
    _status, headers, _body = _status_and_headers(exchange.respond(http.HTTPStatus.OK, b"", "x"))
    assert headers["Connection"] == ("keep-alive" if keep_alive else "close")


# --------------------------------------------------------------------------- --metrics-port


def options_of(argv: list[str], tmp_path: Path) -> ListenAddress | None:
    environ = {"HOME": str(tmp_path), "LTTNG_HOME": str(tmp_path)}
    return parse_options(argv, environ, system_config=tmp_path / "none.conf").metrics


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    assert options_of([], tmp_path) is None


@pytest.mark.parametrize(("url", "address"), [
    ("tcp://127.0.0.1:9100", ListenAddress("127.0.0.1", 9100)),
    ("tcp://127.0.0.1", ListenAddress("127.0.0.1", DEFAULT_METRICS_PORT)),
    ("tcp6://[::1]:9100", ListenAddress("::1", 9100, ipv6=True)),
    ("net://localhost:9100", ListenAddress("127.0.0.1", 9100)),
])
def test_the_metrics_port_is_a_url_as_the_other_ports(tmp_path: Path, url: str,
                                                      address: ListenAddress) -> None:
    assert options_of(["--metrics-port", url], tmp_path) == address


def test_the_metrics_port_comes_from_the_config_file_too(tmp_path: Path) -> None:
    config = tmp_path / "relayd.conf"
    config.write_text("[relayd]\nmetrics-port = tcp://127.0.0.1:9101\n")
    assert options_of(["-f", str(config)], tmp_path) == ListenAddress("127.0.0.1", 9101)
    assert options_of(["-f", str(config), "--metrics-port=tcp://0.0.0.0:9102"],
                      tmp_path) == ListenAddress("0.0.0.0", 9102)


def test_a_bad_metrics_url_is_refused_with_its_origin(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="invalid metrics port URL 'http://x'"):
        options_of(["--metrics-port", "http://x"], tmp_path)
    config = tmp_path / "relayd.conf"
    config.write_text("[relayd]\nmetrics-port = tcp://127.0.0.1:99999\n")
    with pytest.raises(CliError, match=r"relayd.conf:2\): port 99999 is out of range"):
        options_of(["-f", str(config)], tmp_path)
