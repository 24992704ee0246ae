"""The admin pages render the history and the pending work, and their actions need the change
permission; a new API key is shown once, on its own page (Django's test client, real DB)."""

import logging
import re
from html.parser import HTMLParser

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.test import Client

from notifications.auth import api_key_create, hash_key
from notifications.models import ApiKey, Notification, NotificationEvent, Status
from outbox.models import OutboxEntry
from tests.helpers import enqueue, status_of, tenant


class _Rows(HTMLParser):
    """The table rows inside the element whose id is `within`, each as {field: text} of its
    cells of class "field-<field>" (as the admin's change lists and tabular inlines write them)."""

    def __init__(self, within: str):
        super().__init__()
        self.within, self.depth = within, 0  # depth: open <div>/<table> elements inside `within`
        self.rows: list[dict[str, str]] = []
        self._row: dict[str, str] | None = None
        self._field: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth:
            self.depth += tag in ("div", "table")
        elif attrs.get("id") == self.within:
            self.depth = 1
        if not self.depth:
            return
        if tag == "tr":
            self._row = {}
        elif tag in ("td", "th") and self._row is not None:
            fields = [c[len("field-"):] for c in (attrs.get("class") or "").split() if c.startswith("field-")]
            self._field, self._text = (fields[0] if fields else None), []

    def handle_data(self, data):
        if self._field is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if not self.depth:
            return
        if tag in ("td", "th") and self._field is not None:
            self._row[self._field] = " ".join("".join(self._text).split())
            self._field = None
        elif tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None
        elif tag in ("div", "table"):
            self.depth -= 1


def rows(response, within: str) -> list[dict[str, str]]:
    """The rows of the table inside the element `within` of an admin page ("result_list": a
    change list; "events-group": a notification's history)."""
    assert response.status_code == 200
    parser = _Rows(within)
    parser.feed(response.content.decode())
    return parser.rows


def test_notification_page_shows_its_history_and_outbox_shows_pending(admin_client):
    nid, *others = enqueue(3, channel="email-log")
    listing = rows(admin_client.get("/admin/notifications/notification/"), "result_list")
    assert sorted(row["id"] for row in listing) == sorted([nid, *others])
    assert {row["recipient"] for row in listing} == {"user0@example.com", "user1@example.com", "user2@example.com"}
    # The notification's page: its history, one row per event (here the "queued" one).
    history = rows(admin_client.get(f"/admin/notifications/notification/{nid}/change/"), "events-group")
    assert [(row["status"], row["attempt"]) for row in history] == [("Queued", "0")]
    # The outbox: each pending row, with its notification and channel.
    outbox = rows(admin_client.get("/admin/outbox/outboxentry/"), "result_list")
    assert sorted((row["notification_id"], row["channel"]) for row in outbox) == sorted(
        (pk, "email-log") for pk in [nid, *others])
    # Searching by id finds that notification, and only it.
    found = rows(admin_client.get(f"/admin/notifications/notification/?q={nid}"), "result_list")
    assert [row["id"] for row in found] == [nid]


def test_admin_requires_login(client):
    response = client.get("/admin/notifications/notification/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# --- actions and permissions -----------------------------------------------------------------

NOTIFICATIONS = "/admin/notifications/notification/"
API_CLIENTS = "/admin/notifications/apiclient/"
KEY = re.compile(r"ntf_[A-Za-z0-9_-]{32}")


@pytest.fixture
def staff(db, django_user_model):
    """A logged-in test client of a staff user with only the given permissions ("change_apiclient")."""

    def login(*codenames: str) -> Client:
        user = django_user_model.objects.create_user(f"staff-{'-'.join(codenames)}", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="notifications", codename__in=codenames))
        assert user.user_permissions.count() == len(codenames)
        client = Client()
        client.force_login(user)
        return client

    return login


def run_action(client: Client, changelist: str, action: str, *pks):
    return client.post(changelist, {"action": action, "index": 0, ACTION_CHECKBOX_NAME: [str(pk) for pk in pks]})


def failed_notification() -> str:
    """A notification whose sending failed for good (resendable): no outbox row left."""
    (nid,) = enqueue(1)
    Notification.objects.filter(pk=nid).update(status=Status.FAILED)
    OutboxEntry.objects.filter(notification_id=nid).delete()
    return nid


def test_view_only_users_are_not_offered_the_actions(staff):
    viewer = staff("view_notification", "view_apiclient")
    editor = staff("change_notification", "change_apiclient")
    tenant()  # the admin offers no actions on an empty list
    offered = {}
    for name, client in [("viewer", viewer), ("editor", editor)]:
        pages = [client.get(NOTIFICATIONS), client.get(API_CLIENTS)]
        assert [page.status_code for page in pages] == [200, 200]
        offered[name] = {action for action in ["resend_selected", "cancel_selected", "create_key", "revoke_keys"]
                         if any(f'value="{action}"' in page.content.decode() for page in pages)}
    assert offered == {"viewer": set(), "editor": {"resend_selected", "cancel_selected", "create_key", "revoke_keys"}}


def test_forged_actions_of_a_view_only_user_change_nothing(staff):
    viewer = staff("view_notification", "view_apiclient")
    failed, (queued,) = failed_notification(), enqueue(1)
    client = tenant("forged")
    api_key, _ = api_key_create(client=client)
    events = NotificationEvent.objects.count()

    run_action(viewer, NOTIFICATIONS, "resend_selected", failed)
    run_action(viewer, NOTIFICATIONS, "cancel_selected", queued)
    run_action(viewer, API_CLIENTS, "revoke_keys", client.pk)
    answer = run_action(viewer, API_CLIENTS, "create_key", client.pk)

    assert (status_of(failed), status_of(queued)) == (Status.FAILED, Status.QUEUED)
    assert NotificationEvent.objects.count() == events
    assert list(ApiKey.objects.filter(client=client).values_list("pk", "revoked_at")) == [(api_key.pk, None)]
    assert not KEY.search(answer.content.decode())


def test_a_user_with_change_permission_resends_and_cancels(staff):
    editor = staff("change_notification")
    failed, (queued,) = failed_notification(), enqueue(1)
    assert run_action(editor, NOTIFICATIONS, "resend_selected", failed).status_code == 302
    assert run_action(editor, NOTIFICATIONS, "cancel_selected", queued).status_code == 302
    assert (status_of(failed), status_of(queued)) == (Status.QUEUED, Status.CANCELLED)
    assert OutboxEntry.objects.filter(notification_id=failed).exists()


def test_what_an_action_refuses_is_shown_with_the_services_message(staff):
    editor = staff("change_notification")
    (queued,) = enqueue(1)
    failed = failed_notification()

    def shown(action: str, *pks) -> list[tuple[str, str]]:
        page = editor.post(NOTIFICATIONS, {"action": action, "index": 0, ACTION_CHECKBOX_NAME: list(pks)}, follow=True)
        return [(m.level_tag, str(m)) for m in get_messages(page.wsgi_request)]

    assert shown("cancel_selected", queued, failed) == [
        ("success", "1 notification(s) cancelled."),
        ("warning", f"Notification {failed} is failed; only scheduled, queued, retrying notifications can be cancelled."),
    ]
    assert shown("resend_selected", queued) == [
        ("warning", f"Notification {queued} is cancelled; only sent, delivered, undelivered or failed notifications can be resent."),
    ]
    assert (status_of(queued), status_of(failed)) == (Status.CANCELLED, Status.FAILED)


def test_a_user_with_change_permission_revokes_keys(staff):
    editor = staff("change_apiclient")
    client = tenant("revoked")
    api_key, key = api_key_create(client=client)
    assert run_action(editor, API_CLIENTS, "revoke_keys", client.pk).status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert Client().get("/api/v1/channels", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


def test_a_new_key_is_shown_once_on_its_own_page_and_nowhere_else(staff, caplog):
    caplog.set_level(logging.DEBUG)
    editor = staff("change_apiclient")
    client = tenant("new key")

    response = run_action(editor, API_CLIENTS, "create_key", client.pk)

    assert response.status_code == 200
    page = response.content.decode()
    (key,) = KEY.findall(page)
    assert "no-store" in response["Cache-Control"]
    assert f'href="{API_CLIENTS}"' in page and "New API keys" in page
    (api_key,) = ApiKey.objects.filter(client=client)
    assert api_key.key_hash == hash_key(key) and key not in api_key.prefix + api_key.key_hash
    # Not in a cookie, a message (cookie or session storage), the session or a log record.
    assert key not in str(response.cookies)
    assert not [m for m in get_messages(response.wsgi_request) if key in str(m)]
    assert all(key not in str(s.session_data) for s in Session.objects.all())
    assert not [r for r in caplog.records if key in r.getMessage()]
    # Shown once: the next page does not show it again.
    assert key not in editor.get(API_CLIENTS).content.decode()
    assert key not in editor.get(f"{API_CLIENTS}{client.pk}/change/").content.decode()
    # And it works.
    api = Client().get("/api/v1/channels", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert api.status_code == 200, api.content
