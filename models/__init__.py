"""SQLAlchemy 2.0 models and the engine/session factory."""

from models.alert import Alert, AlertLike, AlertRecord
from models.base import Base, utcnow
from models.db import make_engine, make_session_factory
from models.event import AlertEvent
from models.inbox import InboxEvent
from models.pagerduty_delivery import PagerDutyDelivery
from models.quarantine import QuarantinedRequest

__all__ = [
    "Alert",
    "AlertEvent",
    "AlertLike",
    "AlertRecord",
    "Base",
    "InboxEvent",
    "PagerDutyDelivery",
    "QuarantinedRequest",
    "make_engine",
    "make_session_factory",
    "utcnow",
]
