"""Errors raised by the PagerDuty REST client.

Every failure of a PagerDuty call is one of these, whether the request never got an answer
(network error, timeout) or got a non-2xx answer. No httpx type ever leaves the package: the
client translates once, at the boundary, with ``raise ... from exc``.

The tree, by what the caller should do next::

    PagerDutyError                  status, message, code, errors
     ├── RetryableError             + retry_after (seconds or None): 408, 429, 5xx, network
     │                                errors, timeouts, anything unexpected — try again later
     ├── PermanentError             400, 402, 404, 413, other 4xx — the same request will fail
     │    │                           the same way; do not retry it
     │    └── DuplicateIncidentKeyError
     │                                400 "Open incident with matching dedup key already exists":
     │                                an earlier create went through; look the incident up
     └── CredentialsError           401, 403 — stop sending, it will not heal by itself

The errors are plain data: they hold only strings and numbers (never the request, the response,
the HTTP client or the API token), so they are safe to log, to ``repr`` and to pickle across a
Celery result backend.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CredentialsError",
    "DuplicateIncidentKeyError",
    "PagerDutyError",
    "PermanentError",
    "RetryableError",
]


def one_line(text: str) -> str:
    """Collapse every run of whitespace (newlines included) into one space."""
    return " ".join(text.split())


class PagerDutyError(Exception):
    """A PagerDuty call failed.

    Attributes:
        status: HTTP status of PagerDuty's answer; ``None`` when no answer arrived.
        message: PagerDuty's ``error.message`` (or a description of what went wrong).
        code: PagerDuty's numeric ``error.code`` (e.g. 2001), when the body had one.
        errors: PagerDuty's ``error.errors`` list, the detailed reasons.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        errors: Iterable[str] = (),
    ) -> None:
        # Only ``message`` goes to Exception.__init__: BaseException.__reduce__ rebuilds the
        # error as ``cls(*args)`` and then restores ``__dict__``, so pickling keeps every field.
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.errors: tuple[str, ...] = tuple(errors)

    def redact(self, secret: str) -> None:
        """Remove ``secret`` (a token, an integration key) from the error's text."""
        self.message = self.message.replace(secret, "[redacted]")
        self.errors = tuple(text.replace(secret, "[redacted]") for text in self.errors)
        self.args = (self.message,)

    def __str__(self) -> str:
        head = f"PagerDuty HTTP {self.status}" if self.status is not None else "PagerDuty"
        text = f"{head}: {self.message}"
        if self.code is not None:
            text += f" (code {self.code})"
        # PagerDuty often repeats the message in errors[]; only add what says something new.
        extra = [e for e in self.errors if e and e != self.message]
        if extra:
            text += " — " + "; ".join(extra)
        return one_line(text)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, errors={self.errors!r})"
        )


class RetryableError(PagerDutyError):
    """The call may succeed if made again later (408, 429, 5xx, network error, timeout).

    Attributes:
        retry_after: seconds to wait before the next attempt, as PagerDuty asked for it
            (``ratelimit-reset`` or ``Retry-After``); ``None`` when it did not say.
        rate_limit: the calls per minute PagerDuty allows this token (``ratelimit-limit`` on a
            429); ``None`` when it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        errors: Iterable[str] = (),
        retry_after: float | None = None,
        rate_limit: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, errors=errors)
        self.retry_after = retry_after
        self.rate_limit = rate_limit

    def __str__(self) -> str:
        text = super().__str__()
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g} s)"
        return text

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", retry_after={self.retry_after!r})"


class PermanentError(PagerDutyError):
    """The same request will fail the same way: do not send it again as is."""


class DuplicateIncidentKeyError(PermanentError):
    """A create was refused because an open incident already has this ``incident_key``.

    docs/pagerduty.md: PagerDuty answers 400 "Open incident with matching dedup key already exists
    on this service". After a lost response this means the earlier create went through: look the
    incident up by its key and adopt it instead of retrying.
    """


class CredentialsError(PagerDutyError):
    """401 or 403: the API token is wrong or lacks rights. Stop sending until an operator acts."""
