"""The message template of ingest_template_vs_plain, created once per run through the API.

An order-shipped email with a subject, a text and an HTML part and a few variables, as a shop
would send it: each templated POST (bench/ingest.py's "template" body) is rendered by the
intake into what the plain POSTs ("order" body) send written out, plus the HTML.
"""

from __future__ import annotations

import http.client
import json

NAME = "bench-order-shipped"
CHANNEL = "email"  # the run's email channel (bench/__main__.py's channels file)

VARIANTS = {
    "email": {
        "subject": "Your order {{ order_id }} has shipped",
        "text": "Hello {{ name }},\n\nyour order {{ order_id }} ({{ items }} items, {{ total }}) is on its way.\n"
                "Track it at {{ url }}.\n",
        "html": "<p>Hello {{ name }},</p>\n"
                "<p>your order <b>{{ order_id }}</b> ({{ items }} items, {{ total }}) is on its way.</p>\n"
                '<p><a href="{{ url }}">Track it</a></p>\n',
    },
}
SAMPLE_DATA = {"name": "User 1", "order_id": "A-1", "items": 2, "total": "1.50 EUR",
               "url": "https://shop.example.com/track/A-1"}


def create(*, port: int, api_key: str) -> str:
    """POST /api/v1/templates for the run's client (checked with its sample data); returns its name."""
    body = json.dumps({"name": NAME, "locale": "en", "variants": VARIANTS, "sample_data": SAMPLE_DATA})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/v1/templates", body=body,
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
        response = conn.getresponse()
        answer = response.read()
    finally:
        conn.close()
    if response.status != 201:
        raise RuntimeError(f"creating template {NAME!r} answered {response.status}: {answer[:300]!r}")
    return NAME
