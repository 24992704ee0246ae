"""Reading the channels file (TOML) into the NOTIFICATION_CHANNELS setting.

    [channels.sms]
    backend = "channels.backends.fake.FakeChannel"
    [channels.sms.options]
    api_key = "${PROVIDER_API_KEY}"    # taken from the environment

Each `[channels.NAME]` table names a backend (a dotted path to a `Channel` subclass) and its
options, and may set the fleet's policy for it (channels.policy: rate_limit,
recipient_rate_limit, circuit_breaker, fallback). `${VAR}` in any string option is replaced by the environment variable VAR, so secrets
stay in the environment. A variable that is not set is recorded under "MISSING_ENV", and the
registry and `manage.py check` report it by channel and name instead of failing at first send.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from .errors import ChannelConfigurationError
from .policy import POLICY_KEYS

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_channels_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Parse a channels file into {name: {"BACKEND", "OPTIONS", "MISSING_ENV"}}."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ChannelConfigurationError(f"channels file {path} does not exist (NOTIFY_CHANNELS_FILE)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ChannelConfigurationError(f"channels file {path} is not valid TOML: {exc}") from None

    tables = document.get("channels")
    if not isinstance(tables, dict) or not tables:
        raise ChannelConfigurationError(f"channels file {path} defines no [channels.NAME] table")

    channels = {}
    for name, table in tables.items():
        if not isinstance(table, dict) or not isinstance(table.get("backend"), str):
            raise ChannelConfigurationError(f"channel {name!r} in {path} needs a backend = \"dotted.path\"")
        unknown = set(table) - {"backend", "options", *POLICY_KEYS}
        if unknown:
            raise ChannelConfigurationError(
                f"channel {name!r} in {path} has unknown keys {sorted(unknown)}; put backend settings under options"
            )
        missing: list[str] = []
        options = _expand(table.get("options", {}), missing)
        channels[name] = {"BACKEND": table["backend"], "OPTIONS": options, "MISSING_ENV": missing,
                          **{key.upper(): table[key] for key in POLICY_KEYS if key in table}}
    return channels


def _expand(value: Any, missing: list[str]) -> Any:
    """Replace ${VAR} in strings, recursively; collect the names of unset variables."""
    if isinstance(value, str):

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                missing.append(name)
                return ""
            return os.environ[name]

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, dict):
        return {key: _expand(item, missing) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, missing) for item in value]
    return value
