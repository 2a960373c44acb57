"""The routes file: where each CoScale notification scheme's alerts go.

One ``[[route]]`` table per route, in TOML (read with the standard library's ``tomllib``)::

    [[route]]
    name = "db-team"                     # POST /webhooks/coscale/db-team
    tokens = ["<ingress token>"]         # who may use it
    backend = "events"                   # "rest" or "events": which table below is read

    [route.events]
    routing_key = "<32-character integration key>"
    severity = { default = "error", when = [
        { field = "message", contains = "critical", severity = "critical" },
    ] }

``routes.example.toml`` at the repository root shows every key. The file is validated whole at
start: :func:`load_routes` raises one :class:`~worker.errors.ConfigurationError` listing every
problem, each naming the file, the route (by name, or ``[[route]] #N`` when it has none) and
the field, e.g. ``routes.toml: route 'db-team': events.routing_key: must be 32 letters or
digits``. Secrets (ingress tokens, API tokens, routing keys) are ``SecretStr``: never in a
``repr``, a ``str`` or an error message.

Rules (severity for Events, urgency for REST) are a default plus an ordered list of cases;
the first case whose condition holds on a CoScale field wins. CoScale's webhook carries no
severity or priority of its own (docs/coscale.md lists every placeholder), so a case matches the
text of a field: ``equals`` or ``contains`` (both case-insensitive) or ``matches`` (a Python
regular expression, searched). Fields are named as in the Webhook Format (``message``,
``metric``, ``subject``, ...); templates use CoScale's placeholders (``{MSG}``, ``{METRIC}``,
...), and a placeholder CoScale does not have is refused at start rather than sent literally.

An ingress token may be listed on several routes: a token says who may call, the URL says which
route, and one CoScale account commonly feeds several notification schemes.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from worker.coscale import (
    FIELD_PLACEHOLDERS,
    incident_title,
    is_web_link,
    placeholder_values,
)
from worker.delivery.gate import token_id
from worker.errors import ConfigurationError
from worker.ingress.auth import token_is_valid
from worker.pagerduty.events import (
    EVENTS_URL,
    MAX_SUMMARY_CHARS,
    EventAction,
    Severity,
    build_event,
    is_routing_key,
)
from worker.settings import PLACEHOLDER, SEED_TITLE_TEMPLATE, Settings, ingress_token_problem
from worker.title import render_title

__all__ = [
    "DEFAULT_ROUTE_NAME",
    "FALLBACK_SOURCE",
    "Condition",
    "EventsBackend",
    "LinkTemplate",
    "RestBackend",
    "Route",
    "RouteTable",
    "SeverityCase",
    "SeverityRule",
    "UrgencyCase",
    "UrgencyRule",
    "load_routes",
    "parse_routes",
]

#: The name of the route made from the ``PAGERBRIDGE_PAGERDUTY_*`` settings (``POST
#: /webhooks/coscale`` without a route), kept free so logs and metrics can call it that.
DEFAULT_ROUTE_NAME = "default"
REST_API_URL = "https://api.pagerduty.com"
#: docs/pagerduty.md: "About 120 events per minute per integration key".
EVENTS_RATE_PER_MINUTE = 120.0
#: What PagerDuty gets as the source when the source template renders empty: the Events API
#: requires a non-empty ``payload.source``.
FALLBACK_SOURCE = "coscale"

ROUTE_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_SLUG = re.compile(ROUTE_NAME_PATTERN)
# Wider than title.py's placeholder pattern on purpose: "{msg}" would be sent literally there,
# so it is caught here as an unknown placeholder.
_ANY_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
KNOWN_PLACEHOLDERS = frozenset({*FIELD_PLACEHOLDERS.values(), "ACTION"})
COSCALE_FIELDS: tuple[str, ...] = tuple(FIELD_PLACEHOLDERS)
_SERVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# -- field types ------------------------------------------------------------------------------


def _check_template(template: str) -> str:
    unknown = sorted(
        {
            f"{{{name}}}"
            for name in _ANY_PLACEHOLDER.findall(template)
            if name not in KNOWN_PLACEHOLDERS
        }
    )
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in sorted(KNOWN_PLACEHOLDERS))
        raise ValueError(
            f"unknown placeholder(s) {', '.join(unknown)}; CoScale's are {known} (upper case)"
        )
    return template


def _check_field(name: str) -> str:
    if name not in FIELD_PLACEHOLDERS:
        raise ValueError(f"unknown CoScale field {name!r}; known: {', '.join(COSCALE_FIELDS)}")
    return name


def _check_slug(name: str) -> str:
    if not _SLUG.match(name):
        raise ValueError(
            f"{name!r} is not a slug: 1 to 64 lower-case letters, digits and '-', starting and "
            "ending with a letter or digit (it is the last part of /webhooks/coscale/{name})"
        )
    if name == DEFAULT_ROUTE_NAME:
        raise ValueError(
            f"{DEFAULT_ROUTE_NAME!r} is reserved for the route of the PAGERBRIDGE_PAGERDUTY_* "
            "settings (POST /webhooks/coscale)"
        )
    return name


def _header_safe(value: str) -> bool:
    """Printable ASCII without surrounding whitespace: it can go in an HTTP header as is."""
    return bool(value) and value == value.strip() and all(" " <= ch <= "~" for ch in value)


def _check_secret_text(secret: SecretStr) -> SecretStr:
    value = secret.get_secret_value()
    if not _header_safe(value):
        raise ValueError("must be non-empty printable ASCII without leading or trailing whitespace")
    if value == PLACEHOLDER:
        raise ValueError(f"still holds the placeholder {PLACEHOLDER!r}; put the real value")
    return secret


def _check_ingress_token(secret: SecretStr) -> SecretStr:
    _check_secret_text(secret)
    problem = ingress_token_problem(secret.get_secret_value())
    if problem:
        raise ValueError(problem)
    return secret


def _check_routing_key(secret: SecretStr) -> SecretStr:
    if not is_routing_key(secret.get_secret_value()):
        raise ValueError(
            "must be 32 letters or digits: the Integration Key of an Events API v2 integration "
            "(not a REST API token)"
        )
    return secret


def _check_email(value: str) -> str:
    if not _header_safe(value) or "@" not in value:
        raise ValueError("must be the email address of a user on the PagerDuty account")
    return value


def _check_service_id(value: str) -> str:
    if not _SERVICE_ID.match(value):
        raise ValueError("must be a PagerDuty service ID such as 'PXFL9LI'")
    return value


def _check_http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s?#]+", value) or any(ch.isspace() for ch in value):
        raise ValueError("must be an http(s) URL with a host")
    return value


def _check_token_list(tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    # A custom check rather than min_length: pydantic's counts the tokens that passed, so one
    # bad token alone would also be reported as "no token".
    if not tokens:
        raise ValueError("at least one ingress token is required")
    values = [token.get_secret_value() for token in tokens]
    if len(set(values)) != len(values):
        raise ValueError("the same token is listed twice")
    return tokens


Template = Annotated[str, AfterValidator(_check_template)]
CoScaleField = Annotated[str, AfterValidator(_check_field)]
WebhookSecret = Annotated[SecretStr, AfterValidator(_check_secret_text)]
IngressToken = Annotated[SecretStr, AfterValidator(_check_ingress_token)]
ApiToken = Annotated[SecretStr, AfterValidator(_check_secret_text)]
RoutingKey = Annotated[SecretStr, AfterValidator(_check_routing_key)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
Urgency = Literal["high", "low"]


class _Model(BaseModel):
    """Frozen, and unknown keys are errors: a typo in the file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- rules ------------------------------------------------------------------------------------


class Condition(_Model):
    """A test on one CoScale field: exactly one of ``equals``, ``contains``, ``matches``.

    ``equals`` and ``contains`` ignore case; ``matches`` is a Python regular expression,
    searched anywhere in the value (anchor it with ``^``/``$`` to match the whole). A field
    the event does not carry is the empty string, as CoScale renders it.
    """

    field: CoScaleField
    equals: str | None = None
    contains: str | None = None
    matches: re.Pattern[str] | None = None

    @model_validator(mode="after")
    def _exactly_one_test(self) -> Condition:
        tests = {
            "equals": self.equals,
            "contains": self.contains,
            "matches": None if self.matches is None else self.matches.pattern,
        }
        given = [name for name, value in tests.items() if value]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of equals, contains, matches (non-empty)"
                + (f"; got {', '.join(given)}" if given else "")
            )
        return self

    def holds(self, fields: Mapping[str, str | None]) -> bool:
        value = fields.get(self.field) or ""
        if self.equals is not None:
            return value.casefold() == self.equals.casefold()
        if self.contains is not None:
            return self.contains.casefold() in value.casefold()
        assert self.matches is not None  # guaranteed by _exactly_one_test
        return self.matches.search(value) is not None


class SeverityCase(Condition):
    severity: Severity


class UrgencyCase(Condition):
    urgency: Urgency


def _default_only(value: object) -> object:
    """A rule may be written as its default alone: ``severity = "warning"``."""
    return {"default": value} if isinstance(value, str) else value


class SeverityRule(_Model):
    """The Events API severity of an alert: the first case that holds, else ``default``.

    ``error`` by default: with PagerDuty's "urgency based on severity" it pages (high urgency)
    as the REST backend's incidents do, without claiming every alert is critical.
    """

    default: Severity = "error"
    when: tuple[SeverityCase, ...] = ()

    def severity_for(self, fields: Mapping[str, str | None]) -> Severity:
        return next((case.severity for case in self.when if case.holds(fields)), self.default)


class UrgencyRule(_Model):
    """The REST incident urgency: the first case that holds, else ``default``; no default
    (the usual) leaves the urgency to the PagerDuty service's own setting."""

    default: Urgency | None = None
    when: tuple[UrgencyCase, ...] = ()

    def urgency_for(self, fields: Mapping[str, str | None]) -> Urgency | None:
        return next((case.urgency for case in self.when if case.holds(fields)), self.default)


# -- backends ---------------------------------------------------------------------------------


class RestBackend(_Model):
    """Create and update incidents with the REST API v2 (what the bridge did before routes)."""

    api_token: ApiToken
    from_email: Annotated[str, AfterValidator(_check_email)]
    service_id: Annotated[str, AfterValidator(_check_service_id)]
    api_url: HttpUrl = REST_API_URL
    title_template: Template = SEED_TITLE_TEMPLATE
    urgency: Annotated[UrgencyRule, BeforeValidator(_default_only)] = UrgencyRule()

    def title(self, fields: Mapping[str, str | None]) -> str:
        return incident_title(self.title_template, fields)

    def urgency_for(self, fields: Mapping[str, str | None]) -> Urgency | None:
        return self.urgency.urgency_for(fields)


class LinkTemplate(_Model):
    """One entry of an event's ``links``; not sent when ``href`` renders empty."""

    href: Template
    text: Template = ""


class EventsBackend(_Model):
    """Send alert events to an Events API v2 integration (``POST /v2/enqueue``).

    Templates render with CoScale's placeholders; ``component``, ``group`` and ``class`` are
    not sent when they render empty, ``source`` becomes ``FALLBACK_SOURCE``. ``custom_details``
    names the CoScale fields sent there (default: all; ``[]``: none); a field without a value
    is left out.
    """

    routing_key: RoutingKey
    events_url: HttpUrl = EVENTS_URL
    summary_template: Template = SEED_TITLE_TEMPLATE
    severity: Annotated[SeverityRule, BeforeValidator(_default_only)] = SeverityRule()
    source: Template = "{SUBJECT}"
    component: Template = ""
    group: Template = "{APP_NAME}"
    class_: Template = Field("{METRIC}", alias="class")
    custom_details: tuple[CoScaleField, ...] = COSCALE_FIELDS
    links: tuple[LinkTemplate, ...] = (LinkTemplate(href="{LINK}", text="Open in CoScale"),)
    rate_per_minute: float = Field(EVENTS_RATE_PER_MINUTE, gt=0)

    def severity_for(self, fields: Mapping[str, str | None]) -> Severity:
        return self.severity.severity_for(fields)

    def build(
        self,
        action: EventAction,
        dedup_key: str,
        fields: Mapping[str, str | None],
        *,
        timestamp: datetime | None = None,
    ) -> dict[str, Any]:
        """The event for ``action`` on the alert ``dedup_key``, ready for
        :meth:`~worker.pagerduty.events.EventsClient.send`. An acknowledge or resolve carries
        only the key: PagerDuty reads no payload on those."""
        if action != "trigger":
            return build_event(action, dedup_key)
        values = placeholder_values(fields)

        def render(template: str) -> str:
            return render_title(template, values, limit=MAX_SUMMARY_CHARS)

        links = [
            {"href": href, "text": render(link.text)}
            for link in self.links
            if (href := render(link.href)) and is_web_link(href)
        ]
        return build_event(
            "trigger",
            dedup_key,
            summary=incident_title(self.summary_template, fields),
            severity=self.severity_for(fields),
            source=render(self.source) or FALLBACK_SOURCE,
            component=render(self.component) or None,
            group=render(self.group) or None,
            class_=render(self.class_) or None,
            custom_details={
                name: value for name in self.custom_details if (value := fields.get(name))
            },
            links=links,
            timestamp=timestamp,
        )


# -- routes -----------------------------------------------------------------------------------


class Route(_Model):
    """One route: who may use it (``tokens``) and where its alerts go (``backend``).

    ``backend`` says which of the ``rest`` / ``events`` tables configures it; exactly that one
    must be present. :attr:`config` is the one in use.
    """

    name: Annotated[str, AfterValidator(_check_slug)]
    tokens: Annotated[tuple[IngressToken, ...], AfterValidator(_check_token_list)]
    backend: Literal["rest", "events"]
    rest: RestBackend | None = None
    events: EventsBackend | None = None
    # The secrets of the PagerDuty webhook subscriptions posting to /webhooks/pagerduty/<name>
    # (two while one is rotated); none: that endpoint refuses everything for this route.
    webhook_secrets: tuple[WebhookSecret, ...] = ()

    @property
    def webhook_secret_values(self) -> tuple[str, ...]:
        return tuple(secret.get_secret_value() for secret in self.webhook_secrets)

    @model_validator(mode="before")
    @classmethod
    def _one_backend(cls, data: Any) -> Any:
        # Before the fields: a missing or extra table explains itself better than the
        # "required" errors of every key of a table that should not be there.
        backend = data.get("backend") if isinstance(data, dict) else None
        if backend not in ("rest", "events"):
            return data  # the Literal's own error names the choices
        other = "events" if backend == "rest" else "rest"
        if data.get(backend) is None:
            raise ValueError(
                f"{backend}: required: backend = {backend!r} is configured by a "
                f"[route.{backend}] table"
            )
        if data.get(other) is not None:
            raise ValueError(
                f"{other}: not used with backend = {backend!r}; remove the [route.{other}] "
                "table (or change backend)"
            )
        return data

    @property
    def config(self) -> RestBackend | EventsBackend:
        config = self.rest if self.backend == "rest" else self.events
        assert config is not None  # guaranteed by _one_backend
        return config


class _RoutesFile(_Model):
    route: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The routes of one file, in file order, with the look-ups the ingress needs."""

    routes: tuple[Route, ...]
    source: str = "<routes>"  # the file they came from, for messages

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(route.name for route in self.routes)

    def by_name(self, name: str) -> Route | None:
        """The route of ``POST /webhooks/coscale/{name}``; ``None`` if there is none."""
        return next((route for route in self.routes if route.name == name), None)

    def for_service_id(self, service_id: str) -> Route | None:
        """The REST route with this PagerDuty service ID (the PagerDuty-shaped API's
        ``incident.service.id``); ``None`` if there is none. At most one exists: the loader
        refuses two REST routes with the same service ID."""
        return next(
            (
                route
                for route in self.routes
                if route.rest is not None and route.rest.service_id == service_id
            ),
            None,
        )

    @staticmethod
    def token_allowed(route: Route, presented: str | None) -> bool:
        """Whether ``presented`` is one of ``route``'s tokens, in constant time: every token of
        the route is compared, whichever matched (the ingress's own check)."""
        return token_is_valid(presented, tuple(t.get_secret_value() for t in route.tokens))


# -- loading ----------------------------------------------------------------------------------


def load_routes(path: str | Path) -> RouteTable:
    """Read and validate the routes file at ``path``.

    Raises:
        ConfigurationError: the file cannot be read, is not TOML, or breaks a rule. The message
            lists every problem on its own line, each naming the file, the route and the field;
            it never contains a secret.
    """
    shown = str(path)
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except OSError as exc:
        raise ConfigurationError(
            f"{shown}: cannot read the routes file: {exc.strerror or type(exc).__name__}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib names the line and column, never the text around them.
        raise ConfigurationError(f"{shown}: not valid TOML: {exc}") from exc
    return parse_routes(raw, source=shown)


def parse_routes(raw: Mapping[str, Any], *, source: str = "<routes>") -> RouteTable:
    """Validate a routes file already decoded from TOML; see :func:`load_routes`."""
    if not raw.get("route"):
        raise _configuration_error(source, ["no routes: add [[route]] tables"])
    try:
        routes = _RoutesFile.model_validate(raw).route
    except ValidationError as exc:
        problems = [_describe(error, raw) for error in exc.errors(include_input=False)]
        raise _configuration_error(source, problems) from None
    problems = _cross_route_problems(routes)
    if problems:
        raise _configuration_error(source, problems)
    return RouteTable(routes, source)


def _cross_route_problems(routes: Sequence[Route]) -> list[str]:
    """What only the routes together can break: unique names, one REST route per service ID
    (the PagerDuty-shaped API picks the route by it), and one rate per integration key (the
    gate's bucket is per key)."""
    problems: list[str] = []
    seen_names: dict[str, int] = {}
    service_ids: dict[str, Route] = {}
    events_rates: dict[str, Route] = {}
    for index, route in enumerate(routes):
        label = f"route {route.name!r}"
        if route.name in seen_names:
            problems.append(
                f"{label} ([[route]] #{index + 1}): name: already used by [[route]] "
                f"#{seen_names[route.name] + 1}"
            )
            continue
        seen_names[route.name] = index
        if route.rest is not None:
            first = service_ids.setdefault(route.rest.service_id, route)
            if first is not route:
                problems.append(
                    f"{label}: rest.service_id: already used by route {first.name!r}; the "
                    "PagerDuty-shaped API picks the route by service ID, so it must be unique"
                )
        if route.events is not None:
            key = route.events.routing_key.get_secret_value()
            first = events_rates.setdefault(key, route)
            rate = route.events.rate_per_minute
            if first.events is not None and first.events.rate_per_minute != rate:
                problems.append(
                    f"{label}: events.rate_per_minute: differs from route {first.name!r}, "
                    "which has the same routing key (the limit is per integration key)"
                )
    return problems


def _configuration_error(source: str, problems: Sequence[str]) -> ConfigurationError:
    if len(problems) == 1:
        return ConfigurationError(f"{source}: {problems[0]}")
    lines = "\n".join(f"  {problem}" for problem in problems)
    return ConfigurationError(f"{source}: {len(problems)} problems:\n{lines}")


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
}


def _describe(error: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    """One pydantic error as ``route 'name': field.path: message``; no input value in it."""
    loc: tuple[str | int, ...] = tuple(error["loc"])
    message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        message += " (the file holds [[route]] tables only)"
    if len(loc) >= 2 and loc[0] == "route" and isinstance(loc[1], int):
        where = _route_label(raw, loc[1])
        path = _path(loc[2:])
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"
    path = _path(loc)
    return f"{path}: {message}" if path else message


def _route_label(raw: Mapping[str, Any], index: int) -> str:
    tables = raw.get("route")
    table = tables[index] if isinstance(tables, list) and index < len(tables) else None
    name = table.get("name") if isinstance(table, dict) else None
    if isinstance(name, str) and name.strip():
        return f"route {name!r}"
    return f"[[route]] #{index + 1}"


def _path(loc: Sequence[str | int]) -> str:
    """``("events", "severity", "when", 0, "field")`` → ``events.severity.when[0].field``;
    pydantic's own names for a failed type check inside a field (``function-after[...]``,
    ``str``) are dropped."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif "[" in part or part in ("str", "function-after", "function-before"):
            continue
        else:
            text += f".{part}" if text else part
    return text


def load_route_table(settings: Settings) -> RouteTable:
    """The routes of ``PAGERBRIDGE_ROUTES_FILE``; none when it is unset."""
    if not settings.routes_file:
        return RouteTable(())
    return load_routes(settings.routes_file)


def credential_key(route: Route) -> str:
    """The secret the route's gate is keyed by. An integration key is prefixed so that it can
    never share a gate with a REST API token that happens to be the same string."""
    if route.rest is not None:
        return route.rest.api_token.get_secret_value()
    assert route.events is not None
    return "events:" + route.events.routing_key.get_secret_value()


def credential_id(route: Route) -> str:
    """A name for the route's credential that is safe to store and show (a hash prefix)."""
    return token_id(credential_key(route))
