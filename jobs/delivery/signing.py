"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver checks with
a few lines of hmac (docs/webhooks.md shows them).

The secret is written ``whsec_<base64>``; the key is the decoded bytes. A message is signed as
``HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")``, sent base64-encoded after
``v1,`` in ``webhook-signature``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64  # the specification's range


def webhook_key(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; ValueError (one sentence) for anything else."""
    text = secret.strip()
    encoded = text.removeprefix(PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not text.startswith(PREFIX) or not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"a webhook secret is {PREFIX} then the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} "
            f"random bytes (make one with: python -c \"import base64, os; print('{PREFIX}' + "
            'base64.b64encode(os.urandom(32)).decode())")'
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }
