"""A loopback HTTP proxy whose every upstream connection passes the URL guard.

yt-dlp and OpenCV/ffmpeg connect on their own: they resolve names again, follow redirects and
meta refreshes, and fetch playlists, segments, keys and init sections. Pointed at this proxy
(yt-dlp's `proxy` option, ffmpeg's `http_proxy`), each of those connections is made here
instead, to the address the guard approved when it resolved the name (no second lookup), so
nothing they fetch reaches a private, loopback or metadata address the operator did not allow.

It runs inside the capture task's process, for one capture, on 127.0.0.1 with a free port.
Plain HTTP requests come in absolute form and go out one per connection (`Connection: close`);
HTTPS comes as `CONNECT`, checked the same way and then tunnelled untouched (certificates stay
the client's business). What a client learns of a refused or failed connection is a bare 403 or
502: never which internal host or port answered. Standard library only (threads and sockets).
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import threading
from typing import Any
from urllib.parse import urlsplit

from actors.net.guard import BlockedAddress, Unresolvable, UrlGuard

MAX_HEAD = 64 * 1024  # request or response head
MAX_BODY = 8 * 1024 * 1024  # a request body (yt-dlp posts small JSON)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "te", "trailer", "upgrade", "expect"}
REFUSED_MESSAGE = ("refused: the stream led to an address tools may not reach (private, "
                   "loopback, link-local or metadata); an operator can allow it with "
                   "LLMCAM_ALLOW_HOSTS")


class _ClientGone(Exception):
    """The client closed its connection or sent something this proxy does not speak."""


def _read_head(sock: socket.socket, buffer: bytearray) -> bytes:
    """Bytes up to the blank line that ends an HTTP head; the rest stays in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise _ClientGone("head too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise _ClientGone("closed")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    return head


def _split_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise _ClientGone("malformed header")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _without_hop_by_hop(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    named = {h.strip().lower() for name, value in headers if name.lower() == "connection"
             for h in value.split(",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP | named]


def _join_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first, *(f"{n}: {v}" for n, v in headers), "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


class GuardedProxy:
    """`with GuardedProxy(guard) as proxy:` run yt-dlp or ffmpeg with `proxy.url`.

    `refused` counts connections the guard stopped, so the task can tell the model why a
    capture failed without the libraries' own error text (which names hosts and ports)."""

    def __init__(self, guard: UrlGuard, timeout: float = 10.0) -> None:
        self.guard = guard
        self.timeout = timeout
        self.refused = 0
        self.failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler,
                                                       bind_and_activate=True)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GuardedProxy:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2}, daemon=True,
                                        name="guarded-proxy")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # one client connection ----------------------------------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(self.timeout)
        buffer = bytearray()
        try:
            first, headers = _split_head(_read_head(client, buffer))
            method, target, version = first.split(" ", 2)
            if method.upper() == "CONNECT":
                self._tunnel(client, target, buffer)
            else:
                self._forward(client, method, target, version, headers, buffer)
        except (_ClientGone, ValueError, OSError):
            pass
        finally:
            client.close()

    def _connect(self, client: socket.socket, host: str, port: int) -> socket.socket | None:
        """A socket to an address the guard approved for host, or None (the client has had its
        403 or 502 then)."""
        try:
            addresses = self.guard.resolve(host, port)
        except Unresolvable:
            addresses = []
        except BlockedAddress:
            with self._lock:
                self.refused += 1
            self._answer(client, 403, "Forbidden", "refused: address not allowed\n")
            return None
        for address in addresses:
            try:
                upstream = socket.create_connection((str(address), port), self.timeout)
            except OSError:
                continue
            upstream.settimeout(self.timeout)
            return upstream
        with self._lock:
            self.failed += 1
        self._answer(client, 502, "Bad Gateway", "the server did not answer\n")
        return None

    @staticmethod
    def _answer(client: socket.socket, status: int, reason: str, body: str) -> None:
        data = body.encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        client.sendall(head.encode("latin-1") + data)

    def _tunnel(self, client: socket.socket, target: str, buffer: bytearray) -> None:
        parts = urlsplit("//" + target)
        if not parts.hostname or not parts.port:
            self._answer(client, 400, "Bad Request", "CONNECT needs host:port\n")
            return
        upstream = self._connect(client, parts.hostname, parts.port)
        if upstream is None:
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if buffer:
                upstream.sendall(bytes(buffer))
            self._relay(client, upstream, both_ways=True)

    def _forward(self, client: socket.socket, method: str, target: str, version: str,
                 headers: list[tuple[str, str]], buffer: bytearray) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            self._answer(client, 400, "Bad Request", "only absolute http:// URLs\n")
            return
        fields = {n.lower(): v for n, v in headers}
        if "chunked" in fields.get("transfer-encoding", "").lower():
            self._answer(client, 501, "Not Implemented", "chunked request bodies\n")
            return
        length = int(fields.get("content-length") or 0)
        if not 0 <= length <= MAX_BODY:
            self._answer(client, 413, "Content Too Large", "request body too large\n")
            return
        if length and fields.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(buffer) < length:
            chunk = client.recv(65536)
            if not chunk:
                raise _ClientGone("closed")
            buffer += chunk
        body = bytes(buffer[:length])
        upstream = self._connect(client, parts.hostname, parts.port or 80)
        if upstream is None:
            return
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        with upstream:
            upstream.sendall(_join_head(f"{method} {path} {version}",
                                        _without_hop_by_hop(headers)) + body)
            pending = bytearray()
            status, response = _split_head(_read_head(upstream, pending))
            client.sendall(_join_head(status, _without_hop_by_hop(response)) + bytes(pending))
            self._relay(client, upstream, both_ways=False)

    def _relay(self, client: socket.socket, upstream: socket.socket, both_ways: bool) -> None:
        """Copy upstream -> client (and client -> upstream for a tunnel) until one side closes
        or nothing moves for the timeout. A plain request's client has sent all it may: what it
        sends later is dropped (one request per connection)."""
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream if both_ways else None)
            selector.register(upstream, selectors.EVENT_READ, client)
            while True:
                events = selector.select(self.timeout * 3)
                if not events:
                    return
                for key, _ in events:
                    source: Any = key.fileobj
                    data = source.recv(65536)
                    if not data:
                        return
                    if key.data is not None:
                        key.data.sendall(data)
