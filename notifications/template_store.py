"""A client's message templates in the database: saving versions, finding the one to render.

The rules of a template's content and its rendering are notifications.message_templates';
here are the rows: a MessageTemplate per (client, name), a MessageTemplateVersion per save.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now

from channels.base import Channel
from channels.registry import all_channels
from channels.validation import has_line_break

from . import message_templates
from .errors import InvalidNotification, TemplateExists, TemplateNotFound
from .models import ApiClient, MessageTemplate, MessageTemplateVersion

# Used with fullmatch: with match, "$" also matches before a final newline ("en\n").
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
LOCALE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")  # BCP 47: en, de-AT, zh-Hant-TW


@dataclass(frozen=True)
class TemplateContent:
    """What a client saves: the default locale's variants, other locales' translations, and
    optional sample data that every variant must render with."""

    locale: str
    variants: dict[str, Any]
    translations: dict[str, Any]
    sample_data: dict[str, Any] | None = None


def check_content(content: TemplateContent) -> None:
    """Raise InvalidNotification naming the field of the first problem: a bad locale, a
    variant that does not parse, and, with sample data, one that does not render with it or
    renders past its channels' limits."""
    if not isinstance(content.locale, str) or not LOCALE.fullmatch(content.locale):
        raise InvalidNotification("locale", "Must be a language tag such as en, de or de-AT.")
    try:
        message_templates.check_variants(content.variants)
        if not isinstance(content.translations, dict):
            raise message_templates.TemplateProblem("translations", "must be an object of locales to variants")
        for locale, variants in content.translations.items():
            if not isinstance(locale, str) or not LOCALE.fullmatch(locale):
                raise message_templates.TemplateProblem(f"translations.{locale}", "is not a language tag")
            if locale == content.locale:  # it would hide `variants` when rendering
                raise message_templates.TemplateProblem(f"translations.{locale}", "is the default locale: its "
                                                                                  "variants go in variants")
            message_templates.check_variants(variants, f"translations.{locale}")
    except message_templates.TemplateProblem as exc:
        raise InvalidNotification(exc.where.split(".", 1)[0], str(exc)) from None
    if content.sample_data is not None:
        _check_sample(content)


def _check_sample(content: TemplateContent) -> None:
    """Every variant rendered with the sample, and checked by each configured channel it
    would be used for (its kind's limits)."""
    by_locale = {content.locale: content.variants, **content.translations}
    channels = all_channels()
    for locale, variants in by_locale.items():
        where = "variants" if locale == content.locale else f"translations.{locale}"
        for key, variant in variants.items():
            try:
                fields = message_templates.render_variant(variant, content.sample_data, where=f"{where}.{key}")
            except message_templates.TemplateProblem as exc:
                raise InvalidNotification("sample_data", str(exc)) from None
            for channel in channels.values():
                if key in (channel.name, channel.kind):
                    _check_by_channel(channel, fields, place=f"{where}.{key}")


def _check_by_channel(channel, fields: dict[str, str], *, place: str, error_field: str = "sample_data",
                      rendered_with: str = "the sample") -> None:
    """The channel's published limits (GET /api/v1/channels: message_max_chars, subject_max_chars)."""
    limits = channel.describe().get("limits") or {}
    for field, limit_key in (("text", "message_max_chars"), ("subject", "subject_max_chars")):
        limit = limits.get(limit_key)
        if limit is not None and len(fields[field]) > limit:
            raise InvalidNotification(error_field, f"{place}.{field} rendered with {rendered_with} is "
                                                   f"{len(fields[field]):,} characters; channel {channel.name!r} "
                                                   f"takes at most {limit:,}")


def template_create(*, client: ApiClient, name: str, content: TemplateContent) -> MessageTemplateVersion:
    """A new template, at version 1. Raises InvalidNotification or TemplateExists."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidNotification("name", "Must be 1 to 100 lower-case letters, digits, '.', '_' or '-', "
                                          "starting with a letter or digit.")
    check_content(content)
    try:
        with transaction.atomic():
            template = MessageTemplate.objects.create(client=client, name=name, current_version=1)
            return _save_version(template, 1, content)
    except IntegrityError:
        raise TemplateExists(f"A template named {name!r} exists already; PUT to change it.") from None


def template_update(*, client: ApiClient, name: str, content: TemplateContent) -> MessageTemplateVersion:
    """A new version of a template (an archived one comes back). Raises TemplateNotFound or
    InvalidNotification."""
    check_content(content)
    with transaction.atomic():
        template = MessageTemplate.objects.select_for_update().filter(client=client, name=name).first()
        if template is None:
            raise TemplateNotFound(f"No template {name!r}.")
        MessageTemplate.objects.filter(pk=template.pk).update(
            current_version=F("current_version") + 1, updated_at=Now(), archived_at=None)
        template.refresh_from_db()
        return _save_version(template, template.current_version, content)


def template_archive(*, client: ApiClient, name: str) -> None:
    """Archive a template: no new notification may use it; existing ones keep their content."""
    if not MessageTemplate.objects.filter(client=client, name=name, archived_at__isnull=True).update(archived_at=Now()):
        raise TemplateNotFound(f"No template {name!r}.")


# The version to render. The intake looks it up for every templated notification, so it is one
# statement written out: building it with the ORM cost more CPU than running it (1.5 ms a
# request, the most of what a template added to the intake). Index message_template_unique
# (client_id, name) finds the template, message_template_version_unique (template_id, version)
# its version: the one asked for, or the current one. The columns are _TEMPLATE_FIELDS, then
# _VERSION_FIELDS (a field added to a model later is left deferred: read when first used).
_TEMPLATE_FIELDS = ["id", "client_id", "name", "current_version", "created_at", "updated_at", "archived_at"]
_VERSION_FIELDS = ["id", "template_id", "version", "locale", "variants", "translations", "sample_data", "created_at"]
_VERSION_TO_RENDER = f"""
    SELECT {", ".join(f"t.{name}" for name in _TEMPLATE_FIELDS)}, {", ".join(f"v.{name}" for name in _VERSION_FIELDS)}
    FROM message_template t
    JOIN message_template_version v ON v.template_id = t.id AND v.version = COALESCE(%s::integer, t.current_version)
    WHERE t.client_id = %s AND t.name = %s AND t.archived_at IS NULL
"""


# The same lookup, the version's id only: what the intake asks first (template_version_get's
# `cached`), since a version never changes once written.
_VERSION_ID_TO_RENDER = """
    SELECT v.id
    FROM message_template t
    JOIN message_template_version v ON v.template_id = t.id AND v.version = COALESCE(%s::integer, t.current_version)
    WHERE t.client_id = %s AND t.name = %s AND t.archived_at IS NULL
"""
# Versions this process has built, by id (bounded: emptied when full).
_built_versions: dict[int, MessageTemplateVersion] = {}
_BUILT_VERSIONS_MAX = 1000


def template_version_get(*, client_id: int, name: str, version: int | None = None,
                         cached: bool = False) -> MessageTemplateVersion:
    """The version to render: `version`, or the current one; of a template not archived; with
    its template. One query. Raises TemplateNotFound.

    With `cached` (the intake), the query asks only which version it is, and a version this
    process has built before is returned as built then: its content never changes (a PUT makes
    a new version), though its template's current_version and archived_at are as they were
    then; the intake reads only the template's name. A version not seen before costs a second
    query. Building one cost more than the rest of a templated request's lookup.
    """
    in_range = version is None or 1 <= version <= 2**31 - 1  # a version column's range: past it, none (not a 500)
    row = None
    if in_range and cached:
        with connection.cursor() as cursor:
            cursor.execute(_VERSION_ID_TO_RENDER, [version, client_id, name])
            found_id = cursor.fetchone()
        built = _built_versions.get(found_id[0]) if found_id else None
        if built is not None:
            return built
        in_range = found_id is not None
    if in_range:
        with connection.cursor() as cursor:
            cursor.execute(_VERSION_TO_RENDER, [version, client_id, name])
            row = cursor.fetchone()
    if row is None:
        what = f"version {version} of template {name!r}" if version is not None else f"template {name!r}"
        raise TemplateNotFound(f"No {what} (or it is archived).")
    split = len(_TEMPLATE_FIELDS)
    template = MessageTemplate.from_db(connection.alias, _TEMPLATE_FIELDS, row[:split])
    values = [_json(value) if field in ("variants", "translations", "sample_data") else value
              for field, value in zip(_VERSION_FIELDS, row[split:])]
    found = MessageTemplateVersion.from_db(connection.alias, _VERSION_FIELDS, values)
    found.template = template
    if cached:
        if len(_built_versions) >= _BUILT_VERSIONS_MAX:
            _built_versions.clear()
        _built_versions[found.pk] = found
    return found


def _json(value: Any) -> Any:
    """A jsonb column read with a plain cursor: Django has psycopg hand it over as text."""
    return json.loads(value) if isinstance(value, str) else value


def _save_version(template: MessageTemplate, number: int, content: TemplateContent) -> MessageTemplateVersion:
    return MessageTemplateVersion.objects.create(
        template=template, version=number, locale=content.locale, variants=content.variants,
        translations=content.translations, sample_data=content.sample_data,
    )


class RequestRendering:
    """The templates one request renders (a batch renders up to 1,000): the versions, looked up
    once each, and one CPU budget for all its renders, so that a batch of costly templates
    cannot hold a worker for 1,000 times a render's limit."""

    CPU_SECONDS = 2.0

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int | None], MessageTemplateVersion] = {}
        self.cpu_left = self.CPU_SECONDS


def render_for(version: MessageTemplateVersion, *, channel: Channel, locale: str | None,
               data: dict[str, Any], rendering: RequestRendering | None = None) -> message_templates.Rendered:
    """A version rendered for a notification on `channel`, as the intake accepts it (within
    the request's CPU budget, with `rendering`). Raises InvalidNotification: "data" for a
    missing variable, "template" for anything else the template cannot do, and for an empty
    text or a subject with a line break."""
    where = f"template {version.template.name!r} v{version.version}"
    if rendering is not None and rendering.cpu_left <= 0:
        raise InvalidNotification("template", f"the request's templates take more than "
                                              f"{RequestRendering.CPU_SECONDS:g} s of CPU to render")
    started = time.thread_time()
    try:
        rendered = message_templates.render(
            variants=version.variants, translations=version.translations, default_locale=version.locale,
            locale=locale, channel=channel.name, kind=channel.kind, data=data,
            cpu_seconds=rendering.cpu_left if rendering is not None else message_templates.CPU_LIMIT_SECONDS)
    except message_templates.TemplateProblem as exc:
        field = "data" if "is undefined" in exc.message else "template"
        raise InvalidNotification(field, f"{where}: {exc}") from None
    finally:
        if rendering is not None:
            rendering.cpu_left -= time.thread_time() - started
    if not rendered.text.strip():
        raise InvalidNotification("template", f"{where} renders an empty text for channel {channel.name!r}")
    if has_line_break(rendered.subject):
        raise InvalidNotification("template", f"{where} renders a subject with a line break for channel {channel.name!r}")
    return rendered


def template_preview(*, version: MessageTemplateVersion, channel: Channel, locale: str | None,
                     data: dict[str, Any]) -> message_templates.Rendered:
    """What `version` renders for `channel` with `data`, checked as the intake checks it (also
    against the channel's limits); nothing is written or sent. The API's preview and the
    admin's call it. Raises InvalidNotification as render_for does."""
    rendered = render_for(version, channel=channel, locale=locale, data=data)
    _check_by_channel(channel, {"text": rendered.text, "subject": rendered.subject}, error_field="template",
                      place=f"template {version.template.name!r} v{version.version} {rendered.variant}",
                      rendered_with="this data")
    return rendered
