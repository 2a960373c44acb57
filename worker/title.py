"""Incident titles from CoScale's placeholders."""

from __future__ import annotations

import re
from collections.abc import Mapping

# PagerDuty's limit on an incident title is not published for the REST API; 1024 characters is
# the documented limit of the Events API summary and of the legacy incident description, so we
# keep to it. Longer titles are cut with an ellipsis rather than refused.
TITLE_LIMIT = 1024
DETAILS_LIMIT = 32_000

_PLACEHOLDER = re.compile(r"\{([A-Z_]+)\}")


def render_title(template: str, values: Mapping[str, str], *, limit: int = TITLE_LIMIT) -> str:
    """Fill CoScale placeholders (``{MSG}``, ``{ALERT_ID}``, ...) into ``template`` in one pass.

    One ``re.sub`` over the template only: a value is never scanned again, so a message that
    itself contains ``{MSG}`` or ``{0.__class__}`` appears literally (``str.format`` would
    interpret it). Names missing from ``values`` stay as written (callers pass every CoScale
    placeholder, empty when unknown, as CoScale renders it). The result is cut to ``limit``.
    """

    def fill(match: re.Match[str]) -> str:
        return values.get(match.group(1), match.group(0))

    return truncate(_PLACEHOLDER.sub(fill, template).strip(), limit)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
