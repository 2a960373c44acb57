"""Incident titles from CoScale's placeholders."""

from __future__ import annotations

import functools
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

    parts = _parts(template)
    filled = list(parts)
    for index in range(1, len(parts), 2):  # every other part is a placeholder's name
        name = parts[index]
        filled[index] = values.get(name, f"{{{name}}}")
    return truncate("".join(filled).strip(), limit)


@functools.lru_cache(maxsize=64)
def _parts(template: str) -> tuple[str, ...]:
    """``template`` split once: text, placeholder name, text, ... (a bridge has a few templates
    and fills one per webhook: each is split once, then only filled)."""
    return tuple(_PLACEHOLDER.split(template))


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
