"""Shared plumbing for the channel tests: a loopback HTTP stand-in for a provider, and the
end-to-end helpers (write a channels TOML, start a dispatcher, enqueue one notification, read
its history and status).

What each provider answers stays in its test file: a stand-in subclasses `HTTPStandIn` and says
how a request is read (`parse`), which answer it gets (`answer`, before any delay) and, where the
provider checks something late or builds its answer from the request, `complete` (after it).
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
from notifications.ids import new_notification_id
from notifications.models import Notification, NotificationEvent
from outbox import store

from .conftest import tenant, wait_until

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def drop_proxy_variables(monkeypatch) -> None:
    """Loopback traffic only: no proxy from the environment may carry it elsewhere."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    """A loopback port with nothing behind it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    connection; otherwise `complete(request, reply)` may still change the reply, which is sent.
    Use it as a context manager: the server runs inside the `with`.
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

    def log_message(self, *args) -> None:  # quiet
        pass


# --- configuration ------------------------------------------------------------------------------


def build_from_toml(path: Path) -> dict:
    """The channels a channels TOML file builds (ChannelConfigurationError if it cannot)."""
    return build_channels(load_channels_file(path))


def one_channel_toml(name: str, backend: str, options: str) -> str:
    """A channels TOML with one channel `name` of `backend`, `options` being its options' lines."""
    return f'[channels.{name}]\nbackend = "{backend}"\n[channels.{name}.options]\n{options}\n'


# --- end to end: real dispatcher processes, the stand-in in this process ------------------------


def fast_retries(base: str, cap: str, max_attempts: str | None = None) -> dict:
    """Dispatcher environment for quick retries."""
    env = {"OUTBOX_RETRY_BASE_SECONDS": base, "OUTBOX_RETRY_CAP_SECONDS": cap}
    if max_attempts is not None:
        env["OUTBOX_MAX_ATTEMPTS"] = max_attempts
    return env


def start_dispatcher(start_dispatchers, channels_file, toml: str, env: dict, threads: int | None = None):
    """Write `toml` as the channels file and start one dispatcher process on it."""
    path = channels_file(toml)
    args = ("--processes", "1", *(("--threads", str(threads)) if threads else ()))
    return start_dispatchers(*args, channels_file=path, env=env)


def enqueue_one(channel: str, to: str, message: str, client: str = "tests", **fields) -> str:
    """Enqueue one notification for API client `client`; returns its id."""
    nid = new_notification_id()
    notification = store.NewNotification(id=nid, channel=channel, recipient=to, message=message, **fields)
    store.enqueue([notification], client_id=tenant(client).pk)
    return str(nid)


def history(nid: str) -> list[NotificationEvent]:
    return list(NotificationEvent.objects.filter(notification_id=nid).order_by("created_at", "id"))


def status_of(nid: str) -> str:
    return Notification.objects.get(pk=nid).status


def wait_for_status(nid: str, status: str, message: str, timeout: float = 20):
    return wait_until(lambda: status_of(nid) == status, timeout=timeout, message=message)


def wait_until_settled(ids, message: str, timeout: float = 30):
    """Wait until every notification of `ids` is sent or failed."""
    ids = list(ids)
    return wait_until(
        lambda: Notification.objects.filter(pk__in=ids, status__in=("sent", "failed")).count() == len(ids),
        timeout=timeout, message=message,
    )
