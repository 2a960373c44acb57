"""PagerDuty's webhook signatures, as pure functions.

PagerDuty signs each v3 webhook delivery with every secret of the subscription that is in use:
``X-PagerDuty-Signature: v1=<hex>,v1=<hex>`` (several while a secret is rotated), each the
HMAC-SHA256 of the raw body, hex-encoded (PagerDuty docs, "Verifying Signatures").
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

SIGNATURE_HEADER = "X-PagerDuty-Signature"
_SCHEME = "v1="


def sign(body: bytes, secret: str) -> str:
    """The ``v1=<hex>`` signature of ``body`` under ``secret``, as PagerDuty writes it."""
    return _SCHEME + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def presented_signatures(header: str | None) -> list[bytes]:
    """The ``v1`` digests of a signature header; entries of other schemes, and digests that
    are not hex, are left out."""
    if not header:
        return []
    digests = []
    for entry in header.split(","):
        entry = entry.strip()
        if not entry.startswith(_SCHEME):
            continue
        try:
            digests.append(bytes.fromhex(entry[len(_SCHEME) :]))
        except ValueError:
            continue
    return digests


def signature_matches(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """Whether any ``v1`` entry of ``header`` is ``body``'s signature under any of ``secrets``.

    Every pair is compared, in constant time each (``hmac.compare_digest``): how long the check
    takes says nothing about which secret or which entry came close.
    """
    presented = presented_signatures(header)
    matched = False
    for secret in secrets:
        if not secret:
            continue
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        for digest in presented:
            matched |= hmac.compare_digest(expected, digest)
    return matched
