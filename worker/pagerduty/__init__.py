"""PagerDuty REST API v2: the client and its errors. Nothing outside this package sees httpx."""

from worker.pagerduty.client import (
    AlreadyInState,
    Incident,
    IncidentUpdate,
    NewIncident,
    PagerDutyClient,
)
from worker.pagerduty.errors import (
    CredentialsError,
    DuplicateIncidentKeyError,
    PagerDutyError,
    PermanentError,
    RetryableError,
)

__all__ = [
    "AlreadyInState",
    "CredentialsError",
    "DuplicateIncidentKeyError",
    "Incident",
    "IncidentUpdate",
    "NewIncident",
    "PagerDutyClient",
    "PagerDutyError",
    "PermanentError",
    "RetryableError",
]
