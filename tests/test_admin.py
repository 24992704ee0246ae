"""The admin pages render the history and the pending work (Django's test client, real DB)."""

from notifications.ids import new_notification_id
from outbox import store


def test_notification_page_shows_its_history_and_outbox_shows_pending(admin_client):
    nid = new_notification_id()
    store.enqueue([store.NewNotification(id=nid, channel="email-log", recipient="a@example.com", message="hi")])
    listing = admin_client.get("/admin/notifications/notification/")
    assert listing.status_code == 200 and "a@example.com" in listing.content.decode()
    page = admin_client.get(f"/admin/notifications/notification/{nid}/change/")
    assert page.status_code == 200
    assert "queued" in page.content.decode()
    outbox = admin_client.get("/admin/outbox/outboxentry/")
    assert outbox.status_code == 200 and "email-log" in outbox.content.decode()
    assert admin_client.get(f"/admin/notifications/notification/?q={nid}").status_code == 200


def test_admin_requires_login(client):
    response = client.get("/admin/notifications/notification/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
