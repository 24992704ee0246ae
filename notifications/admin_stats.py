"""The admin's statistics page: notifications.stats for all clients, as tables and a
deliveries-per-minute chart drawn here as SVG (no JavaScript, no CDN, no static files).

NotificationAdmin.get_urls serves it at /admin/notifications/notification/stats/, behind the
admin's login (staff) and the permission to view notifications.
"""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .models import Status
from .stats import notification_stats

WINDOW_TITLES = {"hour": "Last hour", "day": "Last day"}


def stats_view(model_admin, request) -> TemplateResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    stats = notification_stats()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Delivery statistics",
        "opts": model_admin.model._meta,
        "stats": stats,
        "statuses": Status.values,
        "windows": [_window_context(stats[name]) for name in ("hour", "day")],
    }
    return TemplateResponse(request, "admin/notifications/stats.html", context)


def _window_context(window: dict) -> dict:
    statuses = Status.values
    return {
        **window,
        "title": WINDOW_TITLES[window["name"]],
        "failed": window["by_status"].get(Status.FAILED, 0),
        "status_totals": [window["by_status"].get(status, 0) for status in statuses],
        "channel_rows": [
            {"channel": row["channel"], "total": row["total"], "counts": [row["by_status"].get(s, 0) for s in statuses]}
            for row in window["by_channel"]
        ],
        "chart": deliveries_chart_svg(window["deliveries_per_minute"], title=f"Deliveries per minute, {WINDOW_TITLES[window['name']].lower()}"),
        "peak": max((point["count"] for point in window["deliveries_per_minute"]), default=0),
    }


# --- the chart ----------------------------------------------------------------------------------

WIDTH, HEIGHT = 760, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 30
BARS_UP_TO = 120  # more points than this are drawn as a filled step line instead of bars


def deliveries_chart_svg(series: list[dict], *, title: str, width: int = WIDTH, height: int = HEIGHT) -> SafeString:
    """A bar chart (or, for long series, a filled step line) of [{"minute", "count"}, ...],
    oldest first: y from 0 to a round maximum, x labelled with UTC times. Every piece of text
    in it is escaped."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    n = len(series)
    peak = max((point["count"] for point in series), default=0)
    top = _round_up(peak)
    step = plot_w / max(n, 1)

    def y(count: float) -> float:
        return TOP + plot_h - plot_h * count / top

    total = sum(point["count"] for point in series)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="deliveries-chart" viewBox="0 0 {width} {height}" '
        f'width="100%" style="max-width:{width}px" role="img" aria-label="{escape(title)}: {total} in all, at most {peak} in a minute">',
        f"<title>{escape(title)}</title>",
    ]
    # Horizontal grid lines and y labels at 0, half and the top.
    for value in (0, top / 2, top):
        gy = y(value)
        label = f"{value:g}"
        parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" class="grid" stroke="#999" stroke-opacity="0.35" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" font-size="11" fill="currentColor">{escape(label)}</text>')

    if n and n <= BARS_UP_TO:
        gap = 1 if step > 3 else 0
        for i, point in enumerate(series):
            if not point["count"]:
                continue
            x, by = LEFT + i * step, y(point["count"])
            parts.append(
                f'<rect class="bar" x="{x:.2f}" y="{by:.2f}" width="{max(step - gap, 0.5):.2f}" height="{TOP + plot_h - by:.2f}" fill="#417690">'
                f'<title>{escape(_hhmm(point["minute"]))} UTC: {point["count"]}</title></rect>'
            )
    elif n:
        # A step outline: flat across each minute, closed along the axis and filled.
        d = [f"M{LEFT:.2f},{y(0):.2f}"]
        for i, point in enumerate(series):
            py = y(point["count"])
            d.append(f"L{LEFT + i * step:.2f},{py:.2f}L{LEFT + (i + 1) * step:.2f},{py:.2f}")
        d.append(f"L{LEFT + n * step:.2f},{y(0):.2f}Z")
        parts.append(f'<path class="area" d="{"".join(d)}" fill="#417690" fill-opacity="0.85" stroke="#417690" stroke-width="0.6"/>')

    # The axis and about six time labels.
    parts.append(f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="currentColor" stroke-width="1"/>')
    if n:
        ticks = sorted({round(k * (n - 1) / 5) for k in range(6)}) if n > 1 else [0]
        for i in ticks:
            tx = LEFT + (i + 0.5) * step
            anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
            parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{y(0):.1f}" y2="{y(0) + 4:.1f}" stroke="currentColor" stroke-width="1"/>')
            parts.append(
                f'<text x="{tx:.1f}" y="{height - 10}" text-anchor="{anchor}" font-size="11" fill="currentColor">'
                f'{escape(_hhmm(series[i]["minute"]))}</text>'
            )
    if not total:
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" font-size="13" '
            f'fill="currentColor" fill-opacity="0.6">No deliveries in this window</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - built above from numbers and escaped text


def _round_up(value: int) -> int:
    """A round top for the y axis: 1, 2, 5, 10, 20, 50, ... at least `value` (and at least 1)."""
    top = 1
    while top < value:
        for factor in (2, 5 / 2, 2):
            top = round(top * factor)
            if top >= value:
                break
    return top


def _hhmm(minute: datetime) -> str:
    return minute.strftime("%H:%M")
