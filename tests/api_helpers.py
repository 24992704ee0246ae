"""The API's URLs and its one error format, for the API tests (not a test module: nothing here
is collected). Generic helpers are in tests/helpers.py."""

from __future__ import annotations

URL = "/api/v1/notifications"
BATCH_URL = "/api/v1/notifications/batch"


def url_of(notification_id, action: str = "") -> str:
    return f"{URL}/{notification_id}" + (f"/{action}" if action else "")


def assert_error(response, status: int, code: str | None = None, fields=()) -> dict:
    """The one error format, {"error": {"code", "message", "fields"?}}; returns the error."""
    assert response.status_code == status, getattr(response, "content", response)
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) <= {"code", "message", "fields"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if "fields" in error:
        assert isinstance(error["fields"], dict)
        for messages in error["fields"].values():
            assert isinstance(messages, list) and all(isinstance(m, str) and m for m in messages)
    for name in fields:
        assert name in error.get("fields", {}), error
    return error
