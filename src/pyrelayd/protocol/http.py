"""Just enough HTTP/1.1 for the metrics endpoint: request heads in, responses out (sans-IO).

The endpoint answers GET (and HEAD) on a few fixed paths, so requests never have a body:
one that announces one is refused, as is anything that is not a plain origin-form request.
`RequestReader` frames requests from bytes (pipelined requests included) and refuses a head
larger than its limit before it is complete, so a peer can never make it buffer more.
`Exchange` decides how each request is answered: refused (405 with Allow, 404) or by its
route, and how the response is framed (no body for HEAD, whether the connection stays open).
The server only runs the route and writes the bytes.
"""

from __future__ import annotations

import dataclasses
import http
import re
from collections.abc import Container

MAX_HEAD_SIZE = 8192
MAX_HEADERS = 64
_HEAD_END = b"\r\n\r\n"
_REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.([01])")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
METHODS = ("GET", "HEAD")  # the methods the endpoint answers; others get 405
TEXT = "text/plain; charset=utf-8"


class HttpError(Exception):
    """A request that gets this status and then the connection closed."""

    def __init__(self, status: http.HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def reply(self) -> bytes:
        """The response that refuses the request; the connection is closed after it."""
        return encode_response(self.status, f"{self}\n".encode(), TEXT, keep_alive=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # the target without its query string
    minor: int  # HTTP/1.minor
    keep_alive: bool


def parse_head(head: bytes) -> Request:
    """A request head, up to (not including) the blank line that ends it."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(http.HTTPStatus.BAD_REQUEST, "request head is not ASCII") from None
    request_line, *header_lines = text.split("\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise HttpError(http.HTTPStatus.BAD_REQUEST, f"bad request line {request_line[:80]!r}")
    method, target, minor_text = match.groups()
    if len(header_lines) > MAX_HEADERS:
        raise HttpError(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise HttpError(http.HTTPStatus.BAD_REQUEST, f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip(" \t")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise HttpError(http.HTTPStatus.BAD_REQUEST, "request with a body")
    minor = int(minor_text)
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in connection and (minor == 1 or "keep-alive" in connection)
    return Request(method, target.split("?", 1)[0], minor, keep_alive)


class RequestReader:
    """Frames request heads from the bytes of one connection."""

    def __init__(self, max_head_size: int = MAX_HEAD_SIZE) -> None:
        self.max_head_size = max_head_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_request(self) -> Request | None:
        """The next complete request, None until one is; raises `HttpError` if it is bad."""
        end = self._buffer.find(_HEAD_END, 0, self.max_head_size + len(_HEAD_END))
        if end < 0:
            if len(self._buffer) > self.max_head_size:
                raise HttpError(http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                f"request head larger than {self.max_head_size} bytes")
            return None
        head = bytes(self._buffer[:end])
        del self._buffer[: end + len(_HEAD_END)]
        return parse_head(head)

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def encode_response(status: http.HTTPStatus, body: bytes, content_type: str, *,
                    keep_alive: bool, head_only: bool = False,
                    extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        *(f"{name}: {value}" for name, value in extra_headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


class Exchange:
    """How one request is answered, decided before anything runs.

    `refusal` is the whole response when the request is not for a route (405 with Allow for
    a method other than GET and HEAD, 404 for a path not in `routes`); None when the route of
    `request.path` answers: its response is encoded by `respond`, or by `failed` (500) if the
    route raised. Every response is framed for the request: no body for HEAD, and
    `Connection: close` unless the client keeps the connection alive. `keep_alive`: whether
    the connection reads the next request after the response, or is closed.
    """

    def __init__(self, request: Request, routes: Container[str]) -> None:
        self.request = request
        self.keep_alive = request.keep_alive
        self.refusal: bytes | None = None
        if request.method not in METHODS:
            self.refusal = self.respond(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                        b"method not allowed\n", TEXT,
                                        extra_headers=(("Allow", ", ".join(METHODS)),))
        elif request.path not in routes:
            self.refusal = self.respond(http.HTTPStatus.NOT_FOUND, b"not found\n", TEXT)

    def respond(self, status: http.HTTPStatus, body: bytes, content_type: str, *,
                extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        return encode_response(status, body, content_type, keep_alive=self.keep_alive,
                               head_only=self.request.method == "HEAD",
                               extra_headers=extra_headers)

    def failed(self) -> bytes:
        """The response when the route raised."""
        return self.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", TEXT)
