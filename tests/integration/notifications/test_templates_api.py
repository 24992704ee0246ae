"""The template API (notifications/template_views.py) and the templates' admin pages: a client
creates, reads, changes (a new version each time), lists, archives and previews its own
templates; content is checked when saved; a notification keeps what was rendered for it.
Django's test client, real database. (The intake's rendering: test_templates_intake.py; the
sandbox: tests/unit/notifications/test_message_templates.py.)"""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from notifications.models import MessageTemplate, MessageTemplateVersion
from tests.api_helpers import URL, assert_error, url_of
from tests.helpers import make_api_client, row_counts

TEMPLATES = "/api/v1/templates"

WELCOME = {
    "name": "welcome",
    "locale": "en",
    "variants": {
        "email": {"subject": "Welcome, {{ name }}",
                  "text": "Hello {{ name }},\nyour plan is {{ plan }}.",
                  "html": "<p>Hello {{ name }}, your plan is <b>{{ plan }}</b>.</p>"},
        "sms": {"text": "Welcome {{ name }}!"},
        "sms-log": {"text": "[log] Welcome {{ name }}!"},
    },
    "translations": {"de": {"email": {"subject": "Willkommen, {{ name }}", "text": "Hallo {{ name }}"}}},
    "sample_data": {"name": "Ann", "plan": "pro"},
}
CONTENT = {key: value for key, value in WELCOME.items() if key != "name"}
DATA = {"name": "Ann <3", "plan": "pro"}


def template_rows() -> tuple[int, int]:
    return MessageTemplate.objects.count(), MessageTemplateVersion.objects.count()


@pytest.fixture
def api(db):
    return make_api_client("shop")


@pytest.fixture
def welcome(api) -> dict:
    """The client "shop"'s template "welcome", version 1."""
    created = api.post(TEMPLATES, WELCOME, format="json")
    assert created.status_code == 201, created.content
    return created.json()


def preview(api, name: str = "welcome", **body):
    return api.post(f"{TEMPLATES}/{name}/preview", {"channel": "email-log", "data": DATA, **body}, format="json")


# --- create, read, change, list, archive ----------------------------------------------------------


def test_a_template_is_created_at_version_1_and_read_back(api):
    created = api.post(TEMPLATES, WELCOME, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert created["Location"].endswith(f"{TEMPLATES}/welcome")
    assert {key: body[key] for key in WELCOME} == WELCOME
    assert body["version"] == 1 and body["archived_at"] is None
    assert body["created_at"] and body["updated_at"]
    assert api.get(f"{TEMPLATES}/welcome").json() == body
    assert api.get(f"{TEMPLATES}/welcome/").json() == body  # with a trailing slash too
    assert [item["name"] for item in api.get(TEMPLATES).json()["results"]] == ["welcome"]


def test_locale_translations_and_sample_data_are_optional(api):
    created = api.post(TEMPLATES, {"name": "code", "variants": {"sms": {"text": "{{ code }}"}}}, format="json")
    assert created.status_code == 201, created.content
    assert (created.json()["locale"], created.json()["translations"], created.json()["sample_data"]) == ("en", {}, None)


def test_put_saves_version_2_and_every_version_stays_readable(api, welcome):
    changed = api.put(f"{TEMPLATES}/welcome", {**CONTENT, "variants": {"email": {"text": "v2 {{ name }}"}}},
                      format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["version"] == 2 and changed.json()["variants"] == {"email": {"text": "v2 {{ name }}"}}
    assert changed.json()["created_at"] == welcome["created_at"]
    assert api.get(f"{TEMPLATES}/welcome").json()["version"] == 2
    versions = api.get(f"{TEMPLATES}/welcome/versions").json()["results"]
    assert [(v["name"], v["version"]) for v in versions] == [("welcome", 1), ("welcome", 2)]  # oldest first
    assert versions[0]["variants"] == WELCOME["variants"] and versions[0]["sample_data"] == WELCOME["sample_data"]
    first = api.get(f"{TEMPLATES}/welcome/versions/1")
    assert first.status_code == 200 and first.json() == versions[0]
    assert_error(api.get(f"{TEMPLATES}/welcome/versions/3"), 404, "not_found")


def test_templates_are_listed_newest_first_in_pages(api):
    for name in ("a", "b", "c"):
        assert api.post(TEMPLATES, {"name": name, "variants": {"sms": {"text": name}}}, format="json").status_code == 201
    first = api.get(TEMPLATES, {"page_size": 2}).json()
    assert [item["name"] for item in first["results"]] == ["c", "b"]
    rest = api.get(first["next"]).json()
    assert [item["name"] for item in rest["results"]] == ["a"] and rest["next"] is None
    assert_error(api.get(TEMPLATES, {"archived": "maybe"}), 400, "invalid", fields=["archived"])
    assert_error(api.get(TEMPLATES, {"nme": "a"}), 400, "invalid", fields=["nme"])


def test_delete_archives_the_template_which_stays_readable_and_comes_back_with_put(api, welcome):
    assert api.delete(f"{TEMPLATES}/welcome").status_code == 204
    assert api.delete(f"{TEMPLATES}/welcome").status_code == 204  # archived already: the same answer
    assert api.get(TEMPLATES).json()["results"] == []
    archived = api.get(TEMPLATES, {"archived": "true"}).json()["results"]
    assert [item["name"] for item in archived] == ["welcome"] and archived[0]["archived_at"]
    assert api.get(f"{TEMPLATES}/welcome").json()["archived_at"] == archived[0]["archived_at"]
    assert api.get(f"{TEMPLATES}/welcome/versions/1").status_code == 200
    assert_error(preview(api), 404, "not_found")  # no new notification may use it, nor a preview
    back = api.put(f"{TEMPLATES}/welcome", CONTENT, format="json")
    assert back.status_code == 200 and back.json()["archived_at"] is None and back.json()["version"] == 2


# --- what is refused when saved ---------------------------------------------------------------------


def variants_with(text: str) -> dict:
    return {**CONTENT, "variants": {"email": {"subject": "Hi", "text": text}}}


@pytest.mark.parametrize("body, field, words", [
    (variants_with("Hello\n{{ name "), "variants", ["variants.email.text", "line 2"]),  # a syntax error names the line
    (variants_with("{% for x in items %}no end"), "variants", ["line 1"]),
    ({**CONTENT, "variants": {"email": {"text": "hi", "body": "hi"}}}, "variants", ["unknown field", "body"]),
    ({**CONTENT, "variants": {"email": {"subject": "no text"}}}, "variants", ["needs a text"]),
    ({**CONTENT, "variants": {}}, "variants", []),
    ({**CONTENT, "variants": {"email": {"text": 42}}}, "variants", ["must be a string"]),
    ({**CONTENT, "locale": "english!"}, "locale", ["language tag"]),
    ({**CONTENT, "locale": "en\n"}, "locale", []),
    ({**CONTENT, "translations": {"not a tag": {"email": {"text": "x"}}}}, "translations", ["not a language tag"]),
    ({**CONTENT, "translations": {"en": {"email": {"text": "x"}}}}, "translations", ["default locale"]),
    ({**CONTENT, "sample_data": {"plan": "pro"}}, "sample_data", ["'name' is undefined"]),  # names the variable
    ({**CONTENT, "variants": {"sms": {"text": "{{ filler }}"}}, "sample_data": {"filler": "x" * 1601}},
     "sample_data", ["1,601 characters", "1,600"]),  # an SMS over Twilio's limit, rendered with the sample
    (variants_with("hi {{ x.__class__ }}"), "variants", ["__class__"]),  # outside the sandbox: refused when saved
    (variants_with("{{ ''.__class__.__mro__[1].__subclasses__() }}"), "variants", ["is not allowed"]),
    (variants_with("{{ " + "(" * 100 + "1" + ")" * 100 + " }}"), "variants", ["nested too deeply"]),
    (variants_with("nul \u0000"), "variants", ["Null characters"]),
    ({**CONTENT, "sample_data": ["not", "an", "object"]}, "sample_data", []),
    ({**CONTENT, "subject": "Hi"}, "subject", ["Unknown field"]),  # unknown fields are named, not dropped
])
def test_content_that_cannot_be_saved_answers_400_naming_its_field_and_writes_nothing(api, welcome, body, field, words):
    before = template_rows()
    for response in (api.post(TEMPLATES, {"name": "other", **body}, format="json"),
                     api.put(f"{TEMPLATES}/welcome", body, format="json")):
        error = assert_error(response, 400, "invalid", fields=[field])
        for word in words:
            assert word in error["fields"][field][0], error
    assert template_rows() == before
    assert api.get(f"{TEMPLATES}/welcome").json()["version"] == 1


@pytest.mark.parametrize("name", ["Welcome", "", " welcome", "welcome\n", "a/b", "-x", "x" * 101, 7])
def test_a_name_that_cannot_be_a_templates_is_refused(api, name):
    assert_error(api.post(TEMPLATES, {**CONTENT, "name": name}, format="json"), 400, "invalid", fields=["name"])
    assert template_rows() == (0, 0)


def test_the_name_is_not_part_of_a_put(api, welcome):
    assert_error(api.put(f"{TEMPLATES}/welcome", WELCOME, format="json"), 400, "invalid", fields=["name"])


def test_a_taken_name_answers_409_but_another_client_may_use_it(api, welcome):
    error = assert_error(api.post(TEMPLATES, WELCOME, format="json"), 409, "conflict")
    assert "welcome" in error["message"]
    assert make_api_client("other").post(TEMPLATES, WELCOME, format="json").status_code == 201


# --- one client's templates ---------------------------------------------------------------------------


def test_another_clients_template_answers_404_to_everything_and_stays_as_it_was(api, welcome):
    other = make_api_client("other")
    assert other.get(TEMPLATES).json()["results"] == []
    for response in (other.get(f"{TEMPLATES}/welcome"), other.put(f"{TEMPLATES}/welcome", CONTENT, format="json"),
                     other.delete(f"{TEMPLATES}/welcome"), other.get(f"{TEMPLATES}/welcome/versions"),
                     other.get(f"{TEMPLATES}/welcome/versions/1"), preview(other)):
        assert_error(response, 404, "not_found")
    assert api.get(f"{TEMPLATES}/welcome").json() == welcome
    # Nor may its notifications use it.
    assert_error(other.post(URL, {"channel": "email-log", "to": "a@example.com", "template": "welcome", "data": DATA},
                            format="json"), 400, "invalid", fields=["template"])


@pytest.mark.parametrize("path", ["nope", "%00", "x" * 300, "We%20lcome", "welcome/versions/0", "welcome/versions/x"])
def test_unknown_templates_answer_404_in_the_error_format(api, welcome, path):
    assert_error(api.get(f"{TEMPLATES}/{path}"), 404, "not_found")


def test_the_template_api_needs_a_key(db):
    assert_error(APIClient().get(TEMPLATES), 401, "not_authenticated")


# --- preview --------------------------------------------------------------------------------------


def test_preview_renders_a_channels_variant_and_writes_and_sends_nothing(api, welcome):
    before_rows, before_templates = row_counts(), template_rows()
    with CaptureQueriesContext(connection) as queries:
        email = preview(api)
    assert email.status_code == 200, email.content
    assert email.json() == {
        "subject": "Welcome, Ann <3", "text": "Hello Ann <3,\nyour plan is pro.",
        "html": "<p>Hello Ann &lt;3, your plan is <b>pro</b>.</p>",  # escaped in the HTML only
        "locale": "en", "variant": "email", "template_version": 1,
    }
    # Reads only, but for the request's count against the client's rate limit (RATE_TAKE).
    reads = [q["sql"] for q in queries.captured_queries if "INSERT INTO api_rate_counter" not in q["sql"]]
    assert len(reads) == len(queries.captured_queries) - 1
    assert all(statement.lstrip().upper().startswith("SELECT") for statement in reads), queries
    assert (row_counts(), template_rows()) == (before_rows, before_templates)
    assert mail.outbox == []
    # The channel's name wins over its kind; locales fall back as at the intake.
    sms = preview(api, channel="sms-log").json()
    assert (sms["text"], sms["variant"], sms["html"], sms["subject"]) == ("[log] Welcome Ann <3!", "sms-log", "", "")
    german = preview(api, locale="de-AT").json()
    assert (german["subject"], german["locale"]) == ("Willkommen, Ann <3", "de")


def test_preview_renders_the_version_asked_for(api, welcome):
    api.put(f"{TEMPLATES}/welcome", {"variants": {"email": {"text": "v2 for {{ name }}"}}}, format="json")
    assert preview(api).json()["text"] == "v2 for Ann <3"
    first = preview(api, template_version=1).json()
    assert (first["text"], first["template_version"]) == ("Hello Ann <3,\nyour plan is pro.", 1)
    assert_error(preview(api, template_version=3), 404, "not_found")


@pytest.mark.parametrize("body, field, words", [
    ({"data": {"plan": "pro"}}, "data", ["'name' is undefined"]),  # a missing variable is named
    ({"channel": "pigeon"}, "channel", ["Unknown channel", "email-log"]),
    ({"channel": "status-webhooks"}, "channel", ["Unknown channel"]),
    ({"channel": "slack-log"}, "template", ["no variant", "slack"]),
    ({"channel": "sms", "data": {"name": "x" * 1600}}, "channel", []),  # a kind is not a channel
    ({"channel": "sms-log", "data": {"name": "x" * 1600}}, "template", ["1,600"]),  # over the SMS limit
    ({"data": {"name": "Ann\n", "plan": "pro"}}, "template", ["line break"]),
    ({"data": "not an object"}, "data", []),
    ({"data": {"name": "\u0000", "plan": "x"}}, "data", ["Null characters"]),
    ({"template_version": 0}, "template_version", []),
    ({"to": "ann@example.com"}, "to", ["Unknown field"]),
])
def test_preview_answers_400_like_the_intake(api, welcome, body, field, words):
    error = assert_error(preview(api, **body), 400, "invalid", fields=[field])
    for word in words:
        assert word in error["fields"][field][0], error


# --- notifications keep what was rendered ----------------------------------------------------------


def test_a_notification_keeps_its_v1_content_after_put_and_delete(api, welcome):
    accepted = api.post(URL, {"channel": "email-log", "to": "ann@example.com", "template": "welcome", "data": DATA},
                        format="json")
    assert accepted.status_code == 202, accepted.content
    nid = accepted.json()["id"]
    assert api.put(f"{TEMPLATES}/welcome", {"variants": {"email": {"subject": "New", "text": "New text"}}},
                   format="json").status_code == 200
    assert api.delete(f"{TEMPLATES}/welcome").status_code == 204
    kept = api.get(url_of(nid)).json()
    assert (kept["subject"], kept["message"], kept["template"], kept["template_version"]) == \
        ("Welcome, Ann <3", "Hello Ann <3,\nyour plan is pro.", "welcome", 1)
    assert kept["html"] == "<p>Hello Ann &lt;3, your plan is <b>pro</b>.</p>"
    # An archived template takes no new notification (at any version).
    before = row_counts()
    for version in ({}, {"template_version": 1}):
        error = assert_error(api.post(URL, {"channel": "email-log", "to": "ann@example.com", "template": "welcome",
                                            "data": DATA, **version}, format="json"), 400, "invalid", fields=["template"])
        assert "archived" in error["fields"]["template"][0]
    assert row_counts() == before


# --- the admin ------------------------------------------------------------------------------------


ADMIN = "/admin/notifications/messagetemplate"


def cells(html: str, css_class: str) -> list[str]:
    """The texts of the <td> elements with class `css_class`."""
    found = re.findall(rf'<td class="[^"]*\b{css_class}\b[^"]*">(.*?)</td>', html, flags=re.S)
    return [unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in found]


@pytest.fixture
def changed(api, welcome) -> MessageTemplate:
    """"welcome" at version 2: its SMS changed, its slack variant new."""
    assert api.put(f"{TEMPLATES}/welcome", {**CONTENT, "variants": {
        **WELCOME["variants"], "sms": {"text": "Hi {{ name }}!"}, "slack": {"text": "*{{ name }}*"}}},
        format="json").status_code == 200
    return MessageTemplate.objects.get(name="welcome")


def test_admin_lists_templates_with_client_version_and_archived(admin_client, changed):
    page = admin_client.get(f"{ADMIN}/")
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("welcome", "shop", '<td class="field-current_version">2</td>'):
        assert text in html
    assert 'alt="False"' in html  # not archived
    assert admin_client.get(f"{ADMIN}/", {"archived": "yes"}).content.decode().count("field-current_version") == 0


def test_admin_change_page_shows_the_content_the_versions_and_a_preview_form(admin_client, changed):
    page = admin_client.get(f"{ADMIN}/{changed.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="variants"' in html and "Hi {{ name }}!" in unescape(html)  # the current version's content
    assert 'id="versions-table"' in html and 'id="preview-form"' in html
    assert f"{ADMIN}/{changed.pk}/versions/" in html and f"{ADMIN}/{changed.pk}/preview/" in html
    assert 'name="_save"' in html


def test_admin_versions_page_shows_versions_side_by_side_marking_changes(admin_client, changed):
    page = admin_client.get(f"{ADMIN}/{changed.pk}/versions/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "v1" in html and "v2 (current)" in html
    rows = re.findall(r"<tr>\s*<td class=\"field-locale\">(.*?)</td>\s*<td class=\"field-variant\">(.*?)</td>\s*"
                      r"<td class=\"field-field\">(.*?)</td>(.*?)</tr>", html, flags=re.S)
    by_key = {(locale, variant, field): cells(rest, "field-v1") + cells(rest, "field-v2")
              for locale, variant, field, rest in rows}
    assert by_key[("en", "sms", "text")] == ["Welcome {{ name }}!", "Hi {{ name }}!"]
    assert by_key[("en", "slack", "text")] == ["(none)", "*{{ name }}*"]
    assert by_key[("de", "email", "subject")] == ["Willkommen, {{ name }}"] * 2
    assert len(cells(html, "changed")) == 2  # the SMS text and the new slack text


def test_admin_preview_renders_escaped_html_in_a_sandboxed_frame(admin_client, changed):
    form = admin_client.get(f"{ADMIN}/{changed.pk}/preview/")
    assert form.status_code == 200 and 'id="preview-form"' in form.content.decode()
    before = (row_counts(), template_rows())
    page = admin_client.post(f"{ADMIN}/{changed.pk}/preview/", {
        "channel": "email-log", "version": "1", "locale": "", "data_json": json.dumps({"name": "<i>Ann</i>", "plan": "pro"})})
    assert page.status_code == 200
    html = page.content.decode()
    assert "<i>Ann</i>" not in html  # every rendered part is shown escaped
    assert unescape(re.search(r'<pre id="preview-subject">(.*?)</pre>', html, re.S).group(1)) == "Welcome, <i>Ann</i>"
    source = unescape(re.search(r'<pre id="preview-html">(.*?)</pre>', html, re.S).group(1))
    assert source == "<p>Hello &lt;i&gt;Ann&lt;/i&gt;, your plan is <b>pro</b>.</p>"
    frame = re.search(r'<iframe sandbox="" [^>]*srcdoc="([^"]*)"', html)
    assert frame and unescape(frame.group(1)).endswith(source) and "Content-Security-Policy" in unescape(frame.group(1))
    assert (row_counts(), template_rows()) == before and mail.outbox == []
    # What the API refuses, the admin shows.
    refused = admin_client.post(f"{ADMIN}/{changed.pk}/preview/", {
        "channel": "email-log", "version": "2", "locale": "", "data_json": "{}"})
    assert "&#x27;name&#x27; is undefined" in refused.content.decode()


def test_saving_the_admin_change_page_makes_a_new_version(admin_client, changed):
    url = f"{ADMIN}/{changed.pk}/change/"
    content = {"locale": "en", "variants": json.dumps({"email": {"subject": "Hi {{ name }}", "text": "Admin's {{ name }}"}}),
               "translations": "{}", "sample_data": json.dumps({"name": "Ann"}), "_save": "Save"}
    saved = admin_client.post(url, content)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    newest = MessageTemplateVersion.objects.get(template=changed, version=3)
    assert newest.variants == {"email": {"subject": "Hi {{ name }}", "text": "Admin's {{ name }}"}}
    assert MessageTemplate.objects.get(pk=changed.pk).current_version == 3
    assert MessageTemplateVersion.objects.filter(template=changed).count() == 3  # the earlier ones stay
    # The same content again: nothing changed, no version.
    assert admin_client.post(url, content).status_code == 302
    assert MessageTemplate.objects.get(pk=changed.pk).current_version == 3
    # Content the API would refuse is refused here too, with its message, and saves nothing.
    refused = admin_client.post(url, {**content, "variants": json.dumps({"email": {"text": "{{ x.__class__ }}"}})})
    assert refused.status_code == 200 and "__class__" in unescape(refused.content.decode())
    refused = admin_client.post(url, {**content, "sample_data": json.dumps({"nobody": 1})})
    assert refused.status_code == 200 and "is undefined" in unescape(refused.content.decode())
    assert MessageTemplate.objects.get(pk=changed.pk).current_version == 3


def test_admin_template_pages_need_a_staff_login(client, changed):
    for path in ("", f"{changed.pk}/change/", f"{changed.pk}/versions/", f"{changed.pk}/preview/"):
        page = client.get(f"{ADMIN}/{path}")
        assert page.status_code == 302 and "/admin/login/" in page["Location"], path
