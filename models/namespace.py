"""Which bridge a session works for: every alert, inbox and quarantine row has a namespace
(``PAGERBRIDGE_NAMESPACE``), and every statement on those tables is confined to one.

The namespace travels with the session factory (``sessionmaker(info=...)``, copied into each
session's ``info``), so that a bridge's process cannot build a session for another bridge's
rows by forgetting an argument.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from worker.vocabulary import DEFAULT_NAMESPACE

NAMESPACE_INFO = "pagerbridge.namespace"


def namespace_of(session: Session) -> str:
    """The namespace of the bridge ``session`` works for (the default for a session made
    without one, as a bare ``sessionmaker`` gives)."""
    return str(session.info.get(NAMESPACE_INFO, DEFAULT_NAMESPACE))
