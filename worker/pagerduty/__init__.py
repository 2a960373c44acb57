"""PagerDuty REST API v2: the client and its errors. Nothing outside this package sees httpx."""

from worker.pagerduty.client import Incident, NewIncident, PagerDutyClient
from worker.pagerduty.errors import (
    CredentialsError,
    DuplicateIncidentKeyError,
    PagerDutyError,
    PermanentError,
    RetryableError,
)

__all__ = [
    "CredentialsError",
    "DuplicateIncidentKeyError",
    "Incident",
    "NewIncident",
    "PagerDutyClient",
    "PagerDutyError",
    "PermanentError",
    "RetryableError",
]
