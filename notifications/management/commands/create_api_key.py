"""python manage.py create_api_key CLIENT_NAME: a new API key, printed once."""

from django.core.management.base import BaseCommand, CommandError

from notifications.auth import KEY_PREFIX, api_key_create, hash_key
from notifications.models import ApiClient, ApiKey


class Command(BaseCommand):
    help = "Create an API key for a client (created if new). The key is printed once and stored hashed."

    def add_arguments(self, parser):
        parser.add_argument("client_name")
        parser.add_argument("--key", help=f"use this key instead of a random one (must start with {KEY_PREFIX})")
        parser.add_argument("--quiet", action="store_true", help="print only the key")

    def handle(self, client_name, key=None, quiet=False, **options):
        if key is not None:
            if not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 20:
                raise CommandError(f"--key must start with {KEY_PREFIX} and have at least 20 more characters")
        existing = ApiKey.objects.select_related("client").filter(key_hash=hash_key(key)).first() if key else None
        if existing is not None and existing.client.name != client_name:
            raise CommandError("that key belongs to another client")
        client, created = ApiClient.objects.get_or_create(name=client_name)
        if existing is not None:
            if existing.revoked_at is not None:
                existing.revoked_at = None
                existing.save(update_fields=["revoked_at"])
            self.stdout.write(key if quiet else f"API key of {client_name} (already stored): {key}")
            return
        _, key = api_key_create(client=client, key=key)
        if quiet:
            self.stdout.write(key)
        else:
            self.stdout.write(f"{'Created client' if created else 'Client'} {client_name}; new API key (shown once):\n{key}")
