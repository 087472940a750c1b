"""A real HTTP server on 127.0.0.1 whose routes misbehave on purpose.

Use the ``fault_server`` fixture and register routes with its methods; each
returns the route's URL::

    url = fault_server.feed("/feed.xml", SAMPLE_RSS, etag='"v1"')
    fault_server.hang("/hang")
    fault_server.redirect("/old", 301, "/feed.xml")

The server records every request (path and headers), counts the requests
in flight and the body bytes it managed to send, so a test can check what a
client sent and when it stopped reading. It speaks HTTP/1.0: each request
gets its own connection, and a body may end when the connection closes.

Another test file gets the fixture by importing it, which registers it
under the name ``fault_server`` (pytest puts the tests folder on sys.path)::

    from faultserver import fault_server_fixture  # noqa: F401
"""

import socket
import struct
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

SAMPLE_RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel>
<title>Fault Server Engineering</title><link>http://127.0.0.1/</link>
<description>A feed served by the test server</description>
<item><title>First post</title><link>http://127.0.0.1/posts/1</link>
<guid>post-1</guid><pubDate>Mon, 03 Aug 2026 10:00:00 GMT</pubDate>
<description>Hello from the fault server.</description></item>
</channel></rss>
"""

HTML_PAGE = b"""<!DOCTYPE html>
<html><head><title>Blog moved</title></head>
<body><h1>Our blog has moved</h1><p>Please visit our new site.</p></body></html>
"""

# A feed that declares UTF-8 in its XML declaration and its Content-Type but
# is encoded in windows-1252: "Caf\xe9" is not valid UTF-8.
LYING_ENCODING_RSS = (
    b'<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
    b"<title>Caf\xe9 Engineering</title><link>http://127.0.0.1/</link>"
    b"<item><title>Cr\xe8me br\xfbl\xe9e at scale</title>"
    b"<link>http://127.0.0.1/posts/2</link><guid>post-2</guid></item>"
    b"</channel></rss>\n"
)

CHUNK = 64 * 1024


@dataclass
class RecordedRequest:
    """One request the server received; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]


class FaultHandler(BaseHTTPRequestHandler):
    """Dispatch each request to the route registered for its path."""

    server_version = "FaultServer/1.0"

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    @property
    def fault_server(self) -> "FaultServer":
        return self.server.fault_server

    def dispatch(self):
        fault_server = self.fault_server
        path = urlsplit(self.path).path
        fault_server.record(self, path)
        route = fault_server.routes.get(path)
        with fault_server.track_in_flight():
            try:
                if route is None:
                    self.send(404, b"no such route\n", {"Content-Type": "text/plain"})
                else:
                    route(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading, which many tests expect

    def send(self, status: int, body: bytes = b"", headers: dict | None = None):
        """Send a whole response with a Content-Length."""
        self.send_head(status, {"Content-Length": str(len(body)), **(headers or {})})
        self.write(body)

    def send_head(self, status: int, headers: dict | None = None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def write(self, data: bytes):
        """Write body bytes and count them, so a test can see where a client stopped."""
        if self.command == "HEAD" or not data:
            return
        self.wfile.write(data)
        self.wfile.flush()
        with self.fault_server.lock:
            self.fault_server.bytes_sent[urlsplit(self.path).path] += len(data)

    def reset(self):
        """Close the connection with a TCP reset instead of a clean close."""
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.close_connection = True
        self.connection.close()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a burst of
    # concurrent clients, which then see connect timeouts that no route sent.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # Resets and closed pipes are what these routes are for; anything
        # else is a bug in a route and is printed as usual.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultServer:
    """An HTTP server in a background thread with routes that misbehave."""

    def __init__(self):
        self.routes: dict[str, Callable[[FaultHandler], None]] = {}
        self.requests: list[RecordedRequest] = []
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.httpd = QuietHTTPServer(("127.0.0.1", 0), FaultHandler)
        self.httpd.fault_server = self
        # A short poll interval makes shutdown, and so each test, quicker.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fault-server",
            daemon=True,
        )

    # -- lifecycle and bookkeeping -------------------------------------------

    def start(self) -> "FaultServer":
        self.thread.start()
        return self

    def close(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def record(self, handler: FaultHandler, path: str):
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self.lock:
            self.requests.append(RecordedRequest(handler.command, path, headers))

    @contextmanager
    def track_in_flight(self) -> Iterator[None]:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self.lock:
                self.in_flight -= 1

    def hits(self, path: str) -> int:
        """Return how many requests the route at ``path`` received."""
        return len(self.requests_for(path))

    def requests_for(self, path: str) -> list[RecordedRequest]:
        with self.lock:
            return [request for request in self.requests if request.path == path]

    def sleep(self, seconds: float):
        """Wait, but wake at once when the server shuts down."""
        self.stopping.wait(seconds)

    # -- routes --------------------------------------------------------------

    def route(self, path: str, handler: Callable[[FaultHandler], None]) -> str:
        """Register a handler that writes the whole response itself."""
        self.routes[path] = handler
        return self.url(path)

    def respond(
        self,
        path: str,
        status: int,
        body: bytes = b"",
        *,
        headers: dict | None = None,
    ) -> str:
        """Respond to every request with a fixed status, headers and body."""
        return self.route(path, lambda request: request.send(status, body, headers))

    def feed(
        self,
        path: str,
        body: bytes = SAMPLE_RSS,
        *,
        content_type: str = "application/rss+xml; charset=utf-8",
        etag: str | None = None,
        last_modified: str | None = None,
        compress: bool = False,
    ) -> str:
        """Serve a feed that returns 304 when the client's validators match.

        As RFC 9110 section 13.2.2 orders it, If-None-Match is checked when
        present and If-Modified-Since only otherwise.
        """
        validators = {}
        if etag:
            validators["ETag"] = etag
        if last_modified:
            validators["Last-Modified"] = last_modified

        def handle(request: FaultHandler):
            if is_not_modified(request.headers, etag, last_modified):
                request.send_head(304, validators)
                return
            headers = {"Content-Type": content_type, **validators}
            data = body
            if compress:
                data = gzip_bytes(body)
                headers["Content-Encoding"] = "gzip"
            request.send(200, data, headers)

        return self.route(path, handle)

    def html_page(self, path: str) -> str:
        """Serve an HTML page with status 200 where a feed was expected."""
        return self.respond(
            path, 200, HTML_PAGE, headers={"Content-Type": "text/html; charset=utf-8"}
        )

    def lying_encoding(self, path: str) -> str:
        """Serve windows-1252 bytes labelled as UTF-8 in the header and the XML."""
        return self.feed(
            path, LYING_ENCODING_RSS, content_type="application/rss+xml; charset=utf-8"
        )

    def redirect(self, path: str, status: int, location: str) -> str:
        """Redirect to ``location``, which may be relative."""
        return self.respond(path, status, headers={"Location": location})

    def retry_after(self, path: str, status: int, value: str) -> str:
        """Respond with 429 or 503 and a Retry-After header."""
        return self.respond(
            path, status, b"slow down\n", headers={"Retry-After": value}
        )

    def slow(self, path: str, delay: float, body: bytes = SAMPLE_RSS) -> str:
        """Wait ``delay`` seconds before responding with a feed."""

        def handle(request: FaultHandler):
            self.sleep(delay)
            request.send(200, body, {"Content-Type": "application/rss+xml"})

        return self.route(path, handle)

    def hang(self, path: str) -> str:
        """Read the request and never respond, until the server shuts down."""
        return self.route(path, lambda request: self.stopping.wait())

    def reset(self, path: str, *, after_headers: bool = False) -> str:
        """Reset the connection, at once or after sending the headers."""

        def handle(request: FaultHandler):
            if after_headers:
                request.send_head(
                    200,
                    {"Content-Type": "application/rss+xml", "Content-Length": "5000"},
                )
                request.write(SAMPLE_RSS[:100])
            request.reset()

        return self.route(path, handle)

    def truncated(self, path: str, body: bytes = SAMPLE_RSS) -> str:
        """Declare the whole body's length, send half of it and close."""

        def handle(request: FaultHandler):
            request.send_head(
                200,
                {
                    "Content-Type": "application/rss+xml",
                    "Content-Length": str(len(body)),
                },
            )
            request.write(body[: len(body) // 2])
            request.close_connection = True

        return self.route(path, handle)

    def trickle(self, path: str, interval: float = 0.05) -> str:
        """Send one byte every ``interval`` seconds, forever."""

        def handle(request: FaultHandler):
            request.send_head(200, {"Content-Type": "application/rss+xml"})
            request.write(b"<")
            while not self.stopping.is_set():
                self.sleep(interval)
                request.write(b" ")

        return self.route(path, handle)

    def huge(self, path: str, size: int, *, declare_length: bool = False) -> str:
        """Stream ``size`` bytes of XML comment padding, by default without a length."""
        piece = b"<!-- padding -->" * (CHUNK // 16)

        def handle(request: FaultHandler):
            headers = {"Content-Type": "application/rss+xml"}
            if declare_length:
                headers["Content-Length"] = str(size)
            request.send_head(200, headers)
            for start in range(0, size, CHUNK):
                if self.stopping.is_set():
                    return
                request.write(piece[: min(CHUNK, size - start)])

        return self.route(path, handle)

    def gzip_bomb(self, path: str, decoded_size: int) -> str:
        """Stream a gzip body that decodes to ``decoded_size`` zero bytes.

        A few kilobytes on the wire decode to megabytes, so only a client
        that counts decoded bytes stops in time.
        """

        def handle(request: FaultHandler):
            request.send_head(
                200,
                {"Content-Type": "application/rss+xml", "Content-Encoding": "gzip"},
            )
            for piece in gzip_zeros(decoded_size):
                if self.stopping.is_set():
                    return
                request.write(piece)

        return self.route(path, handle)


def is_not_modified(headers, etag: str | None, last_modified: str | None) -> bool:
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        return bool(etag) and (etag in tags or "*" in tags)
    if_modified_since = headers.get("If-Modified-Since")
    if if_modified_since and last_modified:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(
                if_modified_since
            )
        except (TypeError, ValueError):
            return False
    return False


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def gzip_zeros(size: int) -> Iterator[bytes]:
    """Yield a gzip stream of ``size`` zero bytes without compressing them all.

    After a full flush the compressor drops its history window, so every further
    megabyte of zeros compresses to the same block; the block is computed
    once and repeated, and the trailer's CRC-32 and length are computed here.
    """
    block_size = 1024 * 1024
    zeros = bytes(block_size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks = max(1, size // block_size)
    crc = zlib.crc32(zeros)
    for _ in range(blocks - 1):
        yield block
        crc = zlib.crc32(zeros, crc)
    # The final empty block, then our own trailer: the compressor's would
    # count only the two megabytes it saw.
    yield compressor.flush()[:-8] + struct.pack(
        "<II", crc, (blocks * block_size) % 2**32
    )


def http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


@pytest.fixture(name="fault_server")
def fault_server_fixture() -> Iterator[FaultServer]:
    """A started FaultServer on 127.0.0.1, shut down after the test."""
    server = FaultServer().start()
    yield server
    server.close()
