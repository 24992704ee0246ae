"""/healthz (the process is up) and /readyz (the database answers, migrations are applied)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from tests.api_helpers import assert_error
from tests.helpers import free_port


def test_healthz_answers_without_the_database(client):
    # No database fixture: pytest-django fails any query this test would make.
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_200_when_the_database_answers_and_migrations_are_applied(client):
    response = client.get("/readyz")  # no API key: probes are not part of the API
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_while_a_migration_is_not_applied(client):
    # Forget the latest applied migration of an app (inside the test's transaction, rolled
    # back afterwards), as when new code is deployed before `migrate` ran.
    latest = MigrationRecorder.Migration.objects.filter(app="outbox").order_by("-name").first()
    latest.delete()
    response = client.get("/readyz")
    error = assert_error(response, 503, "not_ready")
    assert f"outbox.{latest.name}" in error["message"]
    assert int(response["Retry-After"]) > 0


def test_readyz_is_503_while_the_database_is_unreachable(transactional_db, client):
    assert client.get("/readyz").status_code == 200
    settings_dict = connection.settings_dict
    saved = {key: settings_dict[key] for key in ("HOST", "PORT")}
    connection.close()
    settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))  # nothing listens there
    try:
        response = client.get("/readyz")
        assert_error(response, 503, "not_ready")
        assert int(response["Retry-After"]) > 0
        assert client.get("/healthz").status_code == 200  # liveness does not depend on it
    finally:
        connection.close()
        settings_dict.update(saved)
    assert client.get("/readyz").status_code == 200  # and it recovers with the database


def test_probes_answer_a_host_that_is_not_allowed(client, db):
    # A load balancer or Prometheus connects by IP address, which ALLOWED_HOSTS does not list.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path, HTTP_HOST="10.1.2.3:8000").status_code == 200, path
    assert client.get("/api/v1/channels", HTTP_HOST="10.1.2.3:8000").status_code == 400
