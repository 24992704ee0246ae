"""The admin pages render the history and the pending work (Django's test client, real DB)."""

from .conftest import enqueue


def test_notification_page_shows_its_history_and_outbox_shows_pending(admin_client):
    (nid,) = enqueue(1, channel="email-log")
    listing = admin_client.get("/admin/notifications/notification/")
    assert listing.status_code == 200 and "user0@example.com" in listing.content.decode()
    page = admin_client.get(f"/admin/notifications/notification/{nid}/change/")
    assert page.status_code == 200
    assert "queued" in page.content.decode()
    outbox = admin_client.get("/admin/outbox/outboxentry/")
    assert outbox.status_code == 200 and "email-log" in outbox.content.decode()
    assert admin_client.get(f"/admin/notifications/notification/?q={nid}").status_code == 200


def test_admin_requires_login(client):
    response = client.get("/admin/notifications/notification/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
