"""Log lines: plain text or JSON lines, and never a token.

Every pagerbridge process (api, worker and its pool processes, beat) logs through one handler on
the root logger, set up by :func:`configure_logging`:

- ``PAGERBRIDGE_LOG_FORMAT=text``: ``<time> <LEVEL> <logger> <message>``;
- ``PAGERBRIDGE_LOG_FORMAT=json``: one JSON object per line with ``time`` (ISO 8601, UTC),
  ``level``, ``logger``, ``message``, every field passed with ``extra=`` (the delivery lines
  carry ``alert``, ``incident``, ``outcome``), and ``exception`` when there is a traceback.

The handler's :class:`RedactSecrets` filter replaces the PagerDuty token and every ingress token
with ``[redacted]`` in every record, whoever logged it. The PagerDuty client already keeps the
token out of its errors (``worker/pagerduty/client.py``); this is the second line of defence, for
what no one thought of: a library's exception, a repr, a debug line.

Celery: a receiver of its ``setup_logging`` signal stops Celery from installing its own handlers
(Celery's documented way to keep an application's logging), so the worker, its forked pool
processes and beat all log through this handler.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from celery.signals import setup_logging

from worker.settings import Settings, get_settings

REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
HANDLER_NAME = "pagerbridge"

# What every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached with ``extra=``."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # a field named like a base key never hides it
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (a datetime, an enum) is still shown.
        return json.dumps(entry, default=str, ensure_ascii=False)


class RedactSecrets(logging.Filter):
    """Replace each secret with ``[redacted]`` in a record's message, extra fields, traceback
    and stack. Put on a handler, it sees every record the handler writes, from any logger."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first: a token that contains another is redacted whole.
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed logging call: the handler reports it, as without us
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in extra_fields(record).items():
            text = value if isinstance(value, str) else repr(value)
            if self.redact(text) != text:
                setattr(record, key, self.redact(text if isinstance(value, str) else str(value)))
        if record.exc_info and not record.exc_text:
            # Rendered here (as any formatter would) so that the traceback's text is redacted
            # too; formatters use exc_text when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def quoted(value: object) -> str:
    """``value`` as a JSON string for a text log line: quotes, spaces and control characters
    escaped, so a value from a request cannot forge ``key=value`` fields or whole lines."""
    return json.dumps(str(value), ensure_ascii=True)


def secrets_of(settings: Settings) -> list[str]:
    """The secrets no log line may show: PagerDuty's token, the ingress and operator tokens,
    the webhook secrets, and every route's tokens, API token, integration key and webhook
    secrets."""
    from worker.errors import ConfigurationError
    from worker.routes_file import load_route_table

    found = [
        *settings.ingress_token_values,
        *settings.operator_token_values,
        *settings.pagerduty_webhook_secret_values,
    ]
    if settings.pagerduty_token is not None:
        found.append(settings.pagerduty_token.get_secret_value())
    try:
        routes = load_route_table(settings)
    except ConfigurationError:
        return found  # the command that needs the routes reports the file's problems
    for route in routes:
        found += [token.get_secret_value() for token in route.tokens]
        found += [secret.get_secret_value() for secret in route.webhook_secrets]
        if route.rest is not None:
            found.append(route.rest.api_token.get_secret_value())
        if route.events is not None:
            found.append(route.events.routing_key.get_secret_value())
    return found


def log_handler(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """The handler of ``settings``' format that redacts ``settings``' tokens."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    return handler


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Log through one handler on the root logger, replacing the one an earlier call put there
    (other handlers, such as pytest's, are left alone)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(log_handler(settings, stream))
    root.setLevel(settings.log_level.upper())
    # One INFO line per HTTP request would double the log volume of a storm; our own delivery
    # lines already say what was sent and what PagerDuty answered.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def is_configured() -> bool:
    return any(h.get_name() == HANDLER_NAME for h in logging.getLogger().handlers)


def _keep_our_logging(**_: Any) -> None:
    """Celery asks who sets up logging: we do (``pagerbridge worker`` and ``beat`` already did;
    a worker started with the ``celery`` command gets it here)."""
    if not is_configured():
        configure_logging(get_settings())


setup_logging.connect(_keep_our_logging, weak=False)
