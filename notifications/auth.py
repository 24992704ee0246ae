"""API keys: `Authorization: Bearer <key>`. Keys are stored as SHA-256 hashes, never in clear."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from rest_framework import authentication, exceptions

from .models import ApiClient, ApiKey

KEY_PREFIX = "ntf_"


def generate_key() -> str:
    """A new random key: 'ntf_' and 192 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_create(*, client: ApiClient, key: str | None = None) -> tuple[ApiKey, str]:
    """Store a key for `client` (a new random one unless given); returns it in clear, once."""
    key = key or generate_key()
    api_key = ApiKey.objects.create(client=client, prefix=key[:12], key_hash=hash_key(key))
    return api_key, key


class _KeyCache:
    """Recently seen key hashes -> client, so that a request costs no authentication query.

    A revoked key stops working in this process at once, and in other processes within
    NOTIFY_API_KEY_CACHE_SECONDS.
    """

    def __init__(self, max_entries: int = 10_000):
        self._entries: dict[str, tuple[ApiClient, float]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, key_hash: str) -> ApiClient | None:
        entry = self._entries.get(key_hash)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        return None

    def put(self, key_hash: str, client: ApiClient) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key_hash] = (client, time.monotonic() + settings.NOTIFY_API_KEY_CACHE_SECONDS)

    def clear(self, *args, **kwargs) -> None:
        with self._lock:
            self._entries.clear()


key_cache = _KeyCache()
post_save.connect(key_cache.clear, sender=ApiKey)
post_delete.connect(key_cache.clear, sender=ApiKey)
post_delete.connect(key_cache.clear, sender=ApiClient)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """Authenticates a request by its bearer key; request.user is then the ApiClient."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header:
            return None  # answered 401 by the permission check
        if header[0].lower() != b"bearer" or len(header) != 2:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <API key>'.")
        try:
            key = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        key_hash = hash_key(key)
        client = key_cache.get(key_hash)
        if client is None:
            api_key = (
                ApiKey.objects.select_related("client")
                .filter(key_hash=key_hash, revoked_at__isnull=True)
                .first()
            )
            if api_key is None:
                raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
            client = api_key.client
            key_cache.put(key_hash, client)
        return client, None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
