"""The admin statistics page's chart (notifications/admin_stats.py), drawn as SVG on the server."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from notifications.admin_stats import deliveries_chart_svg

SVG = "{http://www.w3.org/2000/svg}"


def test_chart_svg_is_well_formed_and_scaled():
    start = datetime(2030, 1, 1, 11, 1, tzinfo=timezone.utc)
    series = [{"minute": start + timedelta(minutes=i), "count": (7 if i == 10 else 0)} for i in range(60)]
    svg = ET.fromstring(deliveries_chart_svg(series, title="Deliveries <per> minute"))
    assert svg.find(f"{SVG}title").text == "Deliveries <per> minute"  # escaped in the markup, read back as text
    (bar,) = svg.findall(f"{SVG}rect")
    assert bar.find(f"{SVG}title").text == "11:11 UTC: 7"
    labels = [t.text for t in svg.findall(f"{SVG}text")]
    assert {"0", "5", "10"} <= set(labels)  # y axis up to the next round number
    assert "11:01" in labels and "12:00" in labels
    day = [{"minute": start + timedelta(minutes=i), "count": i % 3} for i in range(1440)]
    svg = ET.fromstring(deliveries_chart_svg(day, title="day"))
    assert len(svg.findall(f"{SVG}path")) == 1 and not svg.findall(f"{SVG}rect")
