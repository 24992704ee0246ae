"""Loopback stand-ins of the self-hostable services that Apprise speaks to, as the Apprise
channel (channels/backends/apprise.py) reaches them: one HTTP server in the test process that
answers as each service does at its own paths.

- ntfy (`ntfy://127.0.0.1:PORT/{to}`): `POST /` with JSON {"topic", "title", "message"};
  200 {"id", "time", "event": "message", "topic", ...}; errors as ntfy gives them,
  {"code": 40301, "http": 403, "error": "forbidden", "link": ...} (code = HTTP status x 100 + n).
  With `ntfy_credentials`, basic auth is checked: 401 {"code": 40101, ...} otherwise.
- Mattermost (`mmost://127.0.0.1:PORT/TOKEN`): `POST /hooks/TOKEN` with JSON {"text",
  "channel", ...}; 200 "ok"; an unknown token 400 {"id": "web.incoming_webhook.invalid.app_error",
  "status_code": 400, ...} as Mattermost answers it.
- Apprise's JSON (`json://user:pass@127.0.0.1:PORT/PATH`): `POST /PATH` with JSON {"version",
  "title", "message", "type", ...}; 200.

Answers are scripted per key (an ntfy topic, a Mattermost token, a JSON path), as in
ScriptedStandIn.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass

from tests.provider_standins import Reply, ScriptedStandIn

MATTERMOST_TOKEN = "3ccdd113474722377935511fc85d3dd4"  # a Mattermost incoming webhook's id (32 hex)
NTFY_USER, NTFY_PASSWORD = "notify", "ntfy-pass-7d2b91e4"


@dataclass
class Received:
    """One request a service stand-in received."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def service(self) -> str:
        if self.path.startswith("/hooks/"):
            return "mattermost"
        return "ntfy" if self.path.split("?")[0] == "/" else "json"

    @property
    def key(self) -> str:
        """What answers are scripted by: an ntfy topic, a Mattermost token, a JSON path."""
        if self.service == "ntfy":
            try:
                return str(self.json().get("topic"))
            except ValueError:
                return ""
        if self.service == "mattermost":
            return self.path.split("?")[0].removeprefix("/hooks/")
        return self.path.split("?")[0]

    def basic_auth(self) -> tuple[str, str] | None:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user, password


def ntfy_error(status: int, code: int, error: str) -> Reply:
    """An error answer as an ntfy server gives it."""
    return Reply(status, {"code": code, "http": status, "error": error, "link": "https://ntfy.sh/docs/publish/"})


def mattermost_error(status: int, message: str) -> Reply:
    """An error answer as a Mattermost server gives it."""
    return Reply(status, {"id": "web.incoming_webhook.invalid.app_error", "message": message,
                          "detailed_error": "", "request_id": uuid.uuid4().hex, "status_code": status})


class AppriseServices(ScriptedStandIn):
    """ntfy, Mattermost and Apprise's JSON on one loopback server (see the module docstring).
    `ntfy_credentials` (user, password), if set, are required of ntfy requests."""

    protocol_version = "HTTP/1.1"

    def __init__(self, ntfy_credentials: tuple[str, str] | None = None):
        super().__init__()
        self.ntfy_credentials = ntfy_credentials
        self.host = f"127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        return self.requests

    def parse(self, path, headers, raw) -> Received:
        return Received(path, {k.lower(): v for k, v in headers.items()}, raw)

    def script_key(self, request: Received) -> str:
        return request.key

    def answer(self, request: Received) -> Reply:
        if request.service == "ntfy" and self.ntfy_credentials and request.basic_auth() != self.ntfy_credentials:
            return ntfy_error(401, 40101, "unauthorized")
        if request.service == "mattermost" and request.key != MATTERMOST_TOKEN:
            return mattermost_error(400, "Invalid webhook.")
        return super().answer(request)

    def complete(self, request: Received, reply: Reply) -> Reply:
        if reply.status == 200 and reply.body is None:  # the service's own success answer
            if request.service == "ntfy":
                body = request.json()
                return Reply(200, {"id": uuid.uuid4().hex[:12], "time": 1767225600, "event": "message",
                                   "topic": body.get("topic"), "title": body.get("title"), "message": body.get("message")})
            if request.service == "mattermost":
                return Reply(200, "ok")
            return Reply(200, {"ok": True})
        return reply
