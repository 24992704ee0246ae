"""Loopback stand-ins for the providers, in the test process: an HTTP server that a provider's
stand-in subclasses, a hostile server, and the channels TOML helpers. One module per provider
(email, slack, twilio_sms, webhook) says what that provider answers; the unit tests send through
a channel to them, the integration tests through a dispatcher process.

A stand-in subclasses `HTTPStandIn` and says how a request is read (`parse`), which answer it
gets (`answer`, before any delay) and, where the provider checks something late or builds its
answer from the request, `complete` (after it); `answered` runs once the answer is sent (a
provider that calls back about what it accepted).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from channels.config import load_channels_file
from channels.registry import build_channels

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def drop_proxy_variables(monkeypatch) -> None:
    """Loopback traffic only: no proxy from the environment may carry it elsewhere."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def failure(channel, message, kind):
    """The `kind` error that sending `message` through `channel` raises."""
    with pytest.raises(kind) as caught:
        channel.deliver(message)
    return caught.value


# --- the stand-in -------------------------------------------------------------------------------


@dataclass
class Reply:
    """One answer of a stand-in."""

    status: int = 200
    body: Any = None  # dict/list (sent as JSON), str (sent as text), bytes, or None (no body)
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # answer this late
    drop: bool = False  # close the connection without answering


class HTTPStandIn:
    """An HTTP server on 127.0.0.1, in a thread of the test process, answering POSTs.

    Every request is read by `parse(path, headers, raw)` and recorded in `requests`; `answer`
    chooses its Reply; a late answer waits (cut short at teardown); a dropped one closes the
    connection; otherwise `complete(request, reply)` may still change the reply, which is sent,
    and then `answered(request, reply)` runs. Use it as a context manager: the server runs
    inside the `with`.
    """

    protocol_version = "HTTP/1.0"
    json_content_type = "application/json"
    text_content_type = "text/html"

    def __init__(self) -> None:
        self.requests: list = []
        self._lock = threading.Lock()
        self.release = threading.Event()  # cuts late answers short at teardown
        handler = type("Handler", (_Handler,), {"protocol_version": self.protocol_version})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.standin = self
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # what a provider's stand-in says

    def parse(self, path: str, headers, raw: bytes):
        raise NotImplementedError

    def answer(self, request) -> Reply:
        raise NotImplementedError

    def complete(self, request, reply: Reply) -> Reply:
        return reply

    def answered(self, request, reply: Reply) -> None:
        """After `reply` was sent (not after a dropped connection)."""

    # the plumbing

    def record(self, request) -> None:
        with self._lock:
            self.requests.append(request)

    def encode(self, body) -> tuple[bytes, str]:
        if isinstance(body, bytes):
            return body, self.json_content_type
        if isinstance(body, str):
            return body.encode(), self.text_content_type
        return (b"" if body is None else json.dumps(body).encode()), self.json_content_type

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class ScriptedStandIn(HTTPStandIn):
    """A stand-in whose answers are scripted per key (a recipient, a channel); what is not
    scripted gets `default_reply()`."""

    def __init__(self) -> None:
        super().__init__()
        self._scripts: dict[str, list[Reply]] = {}

    def script_key(self, request) -> str:
        raise NotImplementedError

    def default_reply(self) -> Reply:
        return Reply()

    def script(self, key: str, *answers: Reply) -> None:
        with self._lock:
            self._scripts.setdefault(key, []).extend(answers)

    def answer(self, request) -> Reply:
        with self._lock:
            queue = self._scripts.get(self.script_key(request), [])
            return queue.pop(0) if queue else self.default_reply()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up on a slow answer: expected here


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        standin: HTTPStandIn = self.server.standin
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = standin.parse(self.path, self.headers, raw)
        standin.record(request)
        reply = standin.answer(request)
        if reply.delay:
            standin.release.wait(reply.delay)
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        reply = standin.complete(request, reply)
        payload, content_type = standin.encode(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        standin.answered(request, reply)

    def log_message(self, *args) -> None:  # quiet
        pass


# --- a hostile provider --------------------------------------------------------------------------


HOSTILE_ANSWERS = ("drip", "endless_body", "big_body", "silent", "huge_headers")


class HostileServer:
    """A loopback server that reads each request and then answers as a broken or hostile
    provider would, below HTTP's rules where need be:

    - "drip": a status line, then one header line every `drip_seconds`, forever;
    - "endless_body": `status` and headers, then a body that never ends (as fast as it goes);
    - "big_body": `status` with a 10 MB body (Content-Length given);
    - "silent": nothing at all, the connection held open;
    - "huge_headers": `status` with a 1 MB header;
    - "raw": `status` with `body` (bytes: NUL, lone surrogates, invalid JSON, ...).

    Every connection is counted (`connections`); all are cut at exit.
    """

    def __init__(self, answer: str, *, status: int = 200, body: bytes = b"", drip_seconds: float = 0.5,
                 content_type: str = "application/json"):
        self.answer, self.status, self.body = answer, status, body
        self.drip_seconds, self.content_type = drip_seconds, content_type
        self.connections = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for sock in list(self._sockets):
            try:
                sock.close()
            except OSError:
                pass
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            self._sockets.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk

    def _handle(self, conn: socket.socket) -> None:
        status_line = f"HTTP/1.1 {self.status} Whatever\r\n".encode()
        try:
            self._read_request(conn)
            if self.answer == "silent":
                self._stop.wait()
            elif self.answer == "drip":
                conn.sendall(status_line)
                while not self._stop.wait(self.drip_seconds):
                    conn.sendall(b"X-Drip: 1\r\n")
            elif self.answer == "endless_body":
                conn.sendall(status_line + f"Content-Type: {self.content_type}\r\n\r\n".encode())
                chunk = b"x" * 65536
                while not self._stop.is_set():
                    conn.sendall(chunk)
            elif self.answer == "big_body":
                size = 10 * 1024 * 1024
                conn.sendall(status_line + f"Content-Type: {self.content_type}\r\nContent-Length: {size}\r\n\r\n".encode())
                chunk = b"x" * 65536
                for _ in range(size // len(chunk)):
                    conn.sendall(chunk)
            elif self.answer == "huge_headers":
                conn.sendall(status_line + b"X-Huge: " + b"h" * (1024 * 1024) + b"\r\nContent-Length: 0\r\n\r\n")
            else:  # raw
                conn.sendall(status_line + f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
                             f"Connection: close\r\n\r\n".encode() + self.body)
        except OSError:
            pass  # the client gave up: the point of most of these answers
        finally:
            try:
                conn.close()
            except OSError:
                pass


# --- configuration ------------------------------------------------------------------------------


def build_from_toml(path: Path) -> dict:
    """The channels a channels TOML file builds (ChannelConfigurationError if it cannot)."""
    return build_channels(load_channels_file(path))


def one_channel_toml(name: str, backend: str, options: str) -> str:
    """A channels TOML with one channel `name` of `backend`, `options` being its options' lines."""
    return f'[channels.{name}]\nbackend = "{backend}"\n[channels.{name}.options]\n{options}\n'
