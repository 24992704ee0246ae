"""Notification ids: UUIDv7 (RFC 9562), time-ordered so that new rows land at the right edge
of the primary-key index instead of on random pages, as UUIDv4 would."""

import os
import time
import uuid


def new_notification_id() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, the version, 74 random bits, the variant."""
    millis = time.time_ns() // 1_000_000
    random = int.from_bytes(os.urandom(10), "big")  # one system call for both parts
    rand_a = (random >> 64) & 0x0FFF  # 12 bits
    rand_b = random & ((1 << 62) - 1)  # 62 bits
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
