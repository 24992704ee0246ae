"""Schemathesis: generated requests against the live schema, authenticated. No answer is a 5xx,
and every answer conforms to the schema (status codes, headers, bodies); requests that break
the schema are refused."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from notifications.auth import api_key_create
from notifications_project.wsgi import application
from tests.api_helpers import BATCH_URL, URL
from tests.helpers import make_api_client, tenant


@schemathesis.auth(refresh_interval=None)
class ApiKeyAuth:
    """Authenticates generated requests the way schemathesis knows about, so that its negative
    cases (a missing Authorization header) are really sent without a key."""

    def get(self, case, context) -> str:
        _, key = api_key_create(client=tenant("schemathesis"))
        return key

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def api_schema(db):
    # As Django's test client does: keep the test's connection (and its transaction) across
    # requests instead of closing it at each request's end.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/schema/", application)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow  # about 20 s: 40 generated requests per operation (23 operations)
@schema.parametrize()
# derandomize: the same generated cases on every run, so that CI is reproducible.
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_5xx_and_conform_to_the_schema(case):
    # All of schemathesis's checks but one: a request valid by the schema may still be refused
    # (400) for what JSON Schema cannot express: a recipient the channel rejects, an unknown
    # channel name, an opaque cursor that is not one of ours.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


# --- the schema's own examples ------------------------------------------------------------------


def request_examples(path: str, method: str = "post") -> dict[str, object]:
    """The request examples of `method` `path`, from the live schema, by name, in their order."""
    schema = make_api_client().get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200, schema.content
    operation = schema.json()["paths"][path][method]
    return {name: example["value"] for name, example in operation["requestBody"]["content"]["application/json"]["examples"].items()}


@pytest.mark.parametrize("path, accepted", [(URL, 202), (BATCH_URL, 202), ("/api/v1/webhook-endpoints", 201)])
def test_every_request_example_of_the_schema_is_accepted_as_it_is(db, path, accepted):
    examples = request_examples(path)
    assert examples
    if path == URL:  # the examples that carry times, which must stay within the API's limits
        assert any("send_at" in value and "expires_at" in value for value in examples.values()), examples
        assert any("expires_at" in value and "send_at" not in value for value in examples.values()), examples
    client = make_api_client()
    for name, value in examples.items():
        response = client.post(path, value, format="json")
        assert response.status_code == accepted, (name, value, response.content)


def test_the_template_examples_are_accepted_in_order(db):
    """The templates' examples, sent in order: each creation (201), then each change of the
    first template (200), then each preview of it (200)."""
    creations = request_examples("/api/v1/templates")
    changes = request_examples("/api/v1/templates/{name}", "put")
    previews = request_examples("/api/v1/templates/{name}/preview")
    assert len(creations) >= 2 and changes and len(previews) >= 2
    client = make_api_client()
    name = next(iter(creations.values()))["name"]
    steps = [*(("post", "/api/v1/templates", example, 201) for example in creations.items()),
             *(("put", f"/api/v1/templates/{name}", example, 200) for example in changes.items()),
             *(("post", f"/api/v1/templates/{name}/preview", example, 200) for example in previews.items())]
    for method, path, (example, value), answered in steps:
        response = getattr(client, method)(path, value, format="json")
        assert response.status_code == answered, (example, value, response.content)
    assert client.get(f"/api/v1/templates/{name}").json()["version"] == 1 + len(changes)
