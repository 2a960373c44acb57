"""Ingress tokens: ``Authorization: Token token=<t>`` (as the seed sends to PagerDuty) or
``Authorization: Bearer <t>``."""

from __future__ import annotations

import hmac
import re

_TOKEN_FORMS = (
    re.compile(r'^\s*Token\s+token="?([^"\s]+)"?\s*$', re.IGNORECASE),
    re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE),
)

WWW_AUTHENTICATE = 'Token realm="pagerbridge", Bearer realm="pagerbridge"'


def presented_token(authorization: str | None) -> str | None:
    """The token in an Authorization header, or ``None`` when there is none."""
    if not authorization:
        return None
    for form in _TOKEN_FORMS:
        match = form.match(authorization)
        if match:
            return match.group(1)
    return None


def token_is_valid(presented: str | None, valid: tuple[str, ...]) -> bool:
    """Constant-time check against every valid token (rotation keeps several valid).

    Every candidate is compared, whatever matched, so the time taken says nothing about which
    token, or how much of it, was right.
    """
    if presented is None:
        return False
    given = presented.encode()
    matched = False
    for token in valid:
        matched |= hmac.compare_digest(given, token.encode())
    return matched
