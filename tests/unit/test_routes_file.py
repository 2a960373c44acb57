"""The routes file: loading, validation messages, secrets, look-ups and rules."""

from __future__ import annotations

import copy
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.errors import ConfigurationError
from worker.routes_file import (
    FALLBACK_SOURCE,
    EventsBackend,
    RestBackend,
    Route,
    RouteTable,
    load_routes,
    parse_routes,
)
from worker.settings import SEED_TITLE_TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[2]

# Distinctive secrets, so a test can prove none of them leaks into a message or a repr.
WEB_TOKEN = "ingress-web-SECRET-0001-0123456789"
DB_TOKEN = "ingress-db-SECRET-00002-0123456789"
SHARED_TOKEN = "ingress-shared-SECRET-03-012345678"
API_TOKEN = "rest-api-SECRET-token-9"
ROUTING_KEY = "R0UTINGKEYSECRET0000000000000001"
SECRETS = (WEB_TOKEN, DB_TOKEN, SHARED_TOKEN, API_TOKEN, ROUTING_KEY)

VALID = textwrap.dedent(
    f"""\
    [[route]]
    name = "web-team"
    tokens = ["{WEB_TOKEN}", "{SHARED_TOKEN}"]
    backend = "rest"

    [route.rest]
    api_token = "{API_TOKEN}"
    from_email = "bridge@example.com"
    service_id = "PWEB123"

    [[route]]
    name = "db-team"
    tokens = ["{DB_TOKEN}", "{SHARED_TOKEN}"]
    backend = "events"

    [route.events]
    routing_key = "{ROUTING_KEY}"
    """
)


def raw_routes() -> dict[str, Any]:
    """VALID as decoded TOML, for tests that change one thing."""
    import tomllib

    return tomllib.loads(VALID)


def problems_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as refused:
        parse_routes(raw, source="routes.toml")
    message = str(refused.value)
    for secret in SECRETS:
        assert secret not in message
    return message


@pytest.fixture
def table(tmp_path: Path) -> RouteTable:
    path = tmp_path / "routes.toml"
    path.write_text(VALID)
    return load_routes(path)


# ---- a valid file --------------------------------------------------------------------------------


def test_valid_file_loads_with_defaults(table: RouteTable) -> None:
    # Then both routes, in file order, with the backend their table configures
    assert table.names == ("web-team", "db-team")
    assert len(table) == 2
    web, db = table
    assert isinstance(web.config, RestBackend)
    assert isinstance(db.config, EventsBackend)
    # And the defaults routes.example.toml documents
    assert web.config.api_url == "https://api.pagerduty.com"
    assert web.config.title_template == SEED_TITLE_TEMPLATE
    assert web.config.urgency_for({}) is None  # the service decides
    assert db.config.events_url == "https://events.pagerduty.com/v2/enqueue"
    assert db.config.rate_per_minute == 120
    assert db.config.summary_template == SEED_TITLE_TEMPLATE
    assert db.config.severity_for({}) == "error"
    assert db.config.custom_details == (
        "alert_id", "message", "metric", "subject", "dimensions", "app", "link", "date", "time",
        "host", "timestamp",
    )  # fmt: skip


def test_example_file_at_the_repository_root_loads() -> None:
    table = load_routes(REPO_ROOT / "routes.example.toml")
    assert [(route.name, route.backend) for route in table] == [
        ("web-team", "rest"),
        ("db-team", "events"),
    ]
    web, db = table
    assert isinstance(web.config, RestBackend) and isinstance(db.config, EventsBackend)
    assert web.config.urgency_for({"message": "Site DOWN"}) == "high"
    assert web.config.urgency_for({"message": "slow"}) == "low"
    assert db.config.severity_for({"message": "replica down"}) == "critical"
    assert db.config.severity_for({"metric": "Disk Usage"}) == "warning"
    assert db.config.severity_for({"message": "downtime"}) == "error"  # \b: a word, not a part


def test_rules_may_be_written_as_their_default_alone() -> None:
    raw = raw_routes()
    raw["route"][0]["rest"]["urgency"] = "high"
    raw["route"][1]["events"]["severity"] = "warning"
    web, db = parse_routes(raw)
    assert isinstance(web.config, RestBackend) and isinstance(db.config, EventsBackend)
    assert web.config.urgency_for({}) == "high"
    assert db.config.severity_for({"message": "anything"}) == "warning"


def test_a_token_may_serve_several_routes(table: RouteTable) -> None:
    web, db = table
    assert table.token_allowed(web, SHARED_TOKEN)
    assert table.token_allowed(db, SHARED_TOKEN)


def test_two_events_routes_may_share_an_integration_key() -> None:
    raw = raw_routes()
    second = copy.deepcopy(raw["route"][1])
    second["name"] = "db-team-eu"
    raw["route"].append(second)
    assert parse_routes(raw).names == ("web-team", "db-team", "db-team-eu")


# ---- look-ups ------------------------------------------------------------------------------------


def test_by_name(table: RouteTable) -> None:
    db = table.by_name("db-team")
    assert db is not None and db.name == "db-team"
    assert table.by_name("nope") is None
    assert table.by_name("DB-TEAM") is None  # names are exact


def test_for_service_id_finds_rest_routes_only(table: RouteTable) -> None:
    route = table.for_service_id("PWEB123")
    assert route is not None and route.name == "web-team"
    assert table.for_service_id("POTHER1") is None


@pytest.mark.parametrize(
    ("route_name", "presented", "allowed"),
    [
        ("web-team", WEB_TOKEN, True),
        ("web-team", SHARED_TOKEN, True),
        ("web-team", DB_TOKEN, False),  # another route's token
        ("web-team", WEB_TOKEN[:-1], False),  # a prefix
        ("web-team", WEB_TOKEN + "x", False),
        ("web-team", "", False),
        ("web-team", None, False),
        ("db-team", DB_TOKEN, True),
    ],
)
def test_token_allowed(
    table: RouteTable, route_name: str, presented: str | None, allowed: bool
) -> None:
    route = table.by_name(route_name)
    assert route is not None
    assert table.token_allowed(route, presented) is allowed


def test_token_check_compares_every_token(
    table: RouteTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Constant time: every token of the route is compared, whichever one matched
    import hmac

    compared: list[bytes] = []
    compare_digest = hmac.compare_digest

    def spy(given: bytes, valid: bytes) -> bool:
        compared.append(valid)
        return compare_digest(given, valid)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    web = table.by_name("web-team")
    assert web is not None
    assert table.token_allowed(web, WEB_TOKEN)
    assert compared == [WEB_TOKEN.encode(), SHARED_TOKEN.encode()]


# ---- secrets -------------------------------------------------------------------------------------


def test_secrets_are_not_in_repr_or_str(table: RouteTable) -> None:
    text = f"{table!r} {table!s} " + " ".join(f"{r!r} {r!s} {r.config!r}" for r in table)
    text += " " + str([route.model_dump() for route in table])
    for secret in SECRETS:
        assert secret not in text
    assert "**********" in text


def test_secrets_are_not_in_errors_about_them() -> None:
    # Given every secret wrong in a way that names its field
    raw = raw_routes()
    raw["route"][0]["tokens"] = [WEB_TOKEN + " ", "short-SECRET"]
    raw["route"][0]["rest"]["api_token"] = API_TOKEN + "\n"
    raw["route"][1]["events"]["routing_key"] = ROUTING_KEY + "-"
    # Then the errors name the fields, never the values (problems_of checks SECRETS)
    message = problems_of(raw)
    assert "short-SECRET" not in message
    assert "route 'web-team': tokens[0]: must be non-empty printable ASCII" in message
    assert "route 'web-team': tokens[1]: an ingress token must be at least 32 characters" in message
    assert "route 'web-team': rest.api_token: must be non-empty printable ASCII" in message
    assert "route 'db-team': events.routing_key: must be 32 letters or digits" in message


# ---- each validation error names the file, the route and the field -----------------------------

Change = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Change:
    """A change setting ``route[i].a.b`` (path "0.a.b") to value; None deletes the key."""

    def change(raw: dict[str, Any]) -> None:
        index, *keys = path.split(".")
        target = raw["route"][int(index)]
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        if value is None:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value

    return change


WEB, DB = "route 'web-team'", "route 'db-team'"


@pytest.mark.parametrize(
    ("change", "where", "expected"),
    [
        (_set("0.name", "Web Team"), "route 'Web Team': name", "'Web Team' is not a slug"),
        (_set("0.name", "default"), "route 'default': name", "'default' is reserved"),
        (_set("0.name", "-web"), "route '-web': name", "'-web' is not a slug"),
        (_set("0.tokens", []), f"{WEB}: tokens", "at least one ingress token is required"),
        (_set("0.tokens", [WEB_TOKEN] * 2), f"{WEB}: tokens", "the same token is listed twice"),
        (_set("0.tokens", ["change-me"]), f"{WEB}: tokens[0]", "still holds the placeholder"),
        (_set("0.backend", "email"), f"{WEB}: backend", "Input should be 'rest' or 'events'"),
        (_set("0.rest", None), f"{WEB}: rest", "required: backend = 'rest' is configured by"),
        (
            _set("0.events", {"routing_key": ROUTING_KEY}),
            f"{WEB}: events",
            "not used with backend = 'rest'",
        ),
        (_set("0.rest.api_token", None), f"{WEB}: rest.api_token", "required"),
        (_set("0.rest.from_email", "bridge"), f"{WEB}: rest.from_email", "must be the email"),
        (_set("0.rest.service_id", "P WEB"), f"{WEB}: rest.service_id", "must be a PagerDuty"),
        (_set("0.rest.api_url", "api.pagerduty.com"), f"{WEB}: rest.api_url", "must be an http"),
        (
            _set("0.rest.title_template", "{MSG} on {HOST}"),
            f"{WEB}: rest.title_template",
            "unknown placeholder(s) {HOST}; CoScale's are {ACTION}",
        ),
        (
            _set("0.rest.title_template", "{msg}"),
            f"{WEB}: rest.title_template",
            "unknown placeholder(s) {msg}",
        ),
        (
            _set("0.rest.urgency", "urgent"),
            f"{WEB}: rest.urgency.default",
            "Input should be 'high' or 'low'",
        ),
        (_set("0.rest.colour", "red"), f"{WEB}: rest.colour", "unknown key"),
        (_set("0.colour", "red"), f"{WEB}: colour", "unknown key"),
        (_set("1.events.routing_key", None), f"{DB}: events.routing_key", "required"),
        (
            _set("1.events.routing_key", "a" * 31),
            f"{DB}: events.routing_key",
            "must be 32 letters or digits",
        ),
        (
            _set("1.events.rate_per_minute", 0),
            f"{DB}: events.rate_per_minute",
            "Input should be greater than 0",
        ),
        (_set("1.events.events_url", "ftp://x"), f"{DB}: events.events_url", "must be an http"),
        (
            _set("1.events.severity", "fatal"),
            f"{DB}: events.severity.default",
            "Input should be 'critical', 'error', 'warning' or 'info'",
        ),
        (
            _set("1.events.source", "{HOSTNAME}"),
            f"{DB}: events.source",
            "unknown placeholder(s) {HOSTNAME}",
        ),
        (_set("1.events.class", "{Metric}"), f"{DB}: events.class", "unknown placeholder(s)"),
        (
            _set("1.events.custom_details", ["message", "severity"]),
            f"{DB}: events.custom_details[1]",
            "unknown CoScale field 'severity'; known: alert_id, message,",
        ),
        (_set("1.events.links", [{"text": "x"}]), f"{DB}: events.links[0].href", "required"),
        (
            _set("1.events.links", [{"href": "{URL}"}]),
            f"{DB}: events.links[0].href",
            "unknown placeholder(s) {URL}",
        ),
        (_set("1.events.class_", "x"), f"{DB}: events.class_", "unknown key"),
    ],
)
def test_each_error_names_file_route_and_field(change: Change, where: str, expected: str) -> None:
    raw = raw_routes()
    change(raw)
    message = problems_of(raw)
    assert message.startswith("routes.toml: ")
    assert f"{where}: {expected}" in message


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            {"field": "msg", "equals": "x", "severity": "info"},
            "when[0].field: unknown CoScale field 'msg'",
        ),
        (
            {"field": "message", "severity": "info"},
            "when[0]: give exactly one of equals, contains, matches",
        ),
        (
            {"field": "message", "equals": "a", "contains": "b", "severity": "info"},
            "when[0]: give exactly one of equals, contains, matches (non-empty); got equals, "
            "contains",
        ),
        ({"field": "message", "equals": "", "severity": "info"}, "when[0]: give exactly one"),
        ({"field": "message", "matches": "", "severity": "info"}, "when[0]: give exactly one"),
        (
            {"field": "message", "matches": "(", "severity": "info"},
            "when[0].matches: Input should be a valid regular expression",
        ),
        (
            {"field": "message", "equals": "x", "severity": "high"},
            "when[0].severity: Input should be 'critical'",
        ),
        ({"field": "message", "equals": "x"}, "when[0].severity: required"),
        (
            {"field": "message", "equals": "x", "severity": "info", "then": "y"},
            "when[0].then: unknown key",
        ),
    ],
)
def test_rule_case_errors_name_the_case(case: dict[str, Any], expected: str) -> None:
    raw = raw_routes()
    raw["route"][1]["events"]["severity"] = {"when": [case]}
    assert f"route 'db-team': events.severity.{expected}" in problems_of(raw)


def test_a_route_without_a_name_is_named_by_its_position() -> None:
    raw = raw_routes()
    del raw["route"][1]["name"]
    raw["route"][1]["events"]["routing_key"] = "bad"
    message = problems_of(raw)
    assert "[[route]] #2: name: required" in message
    assert "[[route]] #2: events.routing_key: must be 32 letters or digits" in message


def test_every_problem_is_listed_one_per_line() -> None:
    raw = raw_routes()
    raw["route"][0]["rest"]["from_email"] = "nobody"
    raw["route"][1]["events"]["source"] = "{X}"
    message = problems_of(raw)
    assert message.splitlines() == [
        "routes.toml: 2 problems:",
        "  route 'web-team': rest.from_email: must be the email address of a user on the "
        "PagerDuty account",
        "  route 'db-team': events.source: unknown placeholder(s) {X}; CoScale's are {ACTION}, "
        "{ALERT_ID}, {APP_NAME}, {DATE}, {DIMENSIONS}, {LINK}, {METRIC}, {MSG}, {SHORTHOST}, "
        "{SUBJECT}, {TIME}, {TIMESTAMP} (upper case)",
    ]


def test_a_single_problem_is_one_line() -> None:
    raw = raw_routes()
    raw["route"][0]["rest"]["from_email"] = "nobody"
    assert problems_of(raw) == (
        "routes.toml: route 'web-team': rest.from_email: must be the email address of a user on "
        "the PagerDuty account"
    )


# ---- rules across routes -------------------------------------------------------------------------


def test_route_names_are_unique() -> None:
    raw = raw_routes()
    raw["route"][1]["name"] = "web-team"
    assert problems_of(raw) == (
        "routes.toml: route 'web-team' ([[route]] #2): name: already used by [[route]] #1"
    )


def test_rest_service_ids_are_unique() -> None:
    # The PagerDuty-shaped API picks the route by service ID: two would be ambiguous
    raw = raw_routes()
    second = copy.deepcopy(raw["route"][0])
    second["name"] = "web-team-2"
    raw["route"].append(second)
    message = problems_of(raw)
    assert "route 'web-team-2': rest.service_id: already used by route 'web-team'" in message


def test_one_integration_key_has_one_rate() -> None:
    raw = raw_routes()
    second = copy.deepcopy(raw["route"][1])
    second["name"] = "db-team-2"
    second["events"]["rate_per_minute"] = 60
    raw["route"].append(second)
    message = problems_of(raw)
    assert "route 'db-team-2': events.rate_per_minute: differs from route 'db-team'" in message


# ---- the file itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no routes: add [[route]] tables"),
        ("route = []", "no routes: add [[route]] tables"),
        ('[[routes]]\nname = "x"', "no routes: add [[route]] tables"),
        ('route = "x"', "route: Input should be a valid tuple"),
        ("[[route]\nname=", "not valid TOML: "),
    ],
)
def test_file_level_problems_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "my-routes.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as refused:
        load_routes(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert expected in str(refused.value)


def test_unknown_top_level_keys_are_refused() -> None:
    raw = raw_routes()
    raw["defaults"] = {"severity": "info"}
    assert "defaults: unknown key (the file holds [[route]] tables only)" in problems_of(raw)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigurationError, match=re.escape(f"{path}: cannot read the routes file")):
        load_routes(path)


def test_toml_errors_do_not_echo_the_line(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(VALID.replace(f'"{ROUTING_KEY}"', f"{ROUTING_KEY}"))  # unquoted: not TOML
    with pytest.raises(ConfigurationError) as refused:
        load_routes(path)
    assert "not valid TOML" in str(refused.value)
    assert ROUTING_KEY not in str(refused.value)


# ---- rules and rendering -------------------------------------------------------------------------


def events_backend(**settings: Any) -> EventsBackend:
    return EventsBackend.model_validate({"routing_key": ROUTING_KEY, **settings})


def test_first_matching_case_wins() -> None:
    backend = events_backend(
        severity={
            "default": "info",
            "when": [
                {"field": "message", "equals": "CPU HIGH", "severity": "warning"},
                {"field": "message", "contains": "high", "severity": "error"},
                {"field": "metric", "matches": r"^disk\b", "severity": "critical"},
            ],
        }
    )
    assert backend.severity_for({"message": "cpu high"}) == "warning"  # equals ignores case
    assert backend.severity_for({"message": "memory HIGH"}) == "error"  # contains ignores case
    assert backend.severity_for({"metric": "disk usage"}) == "critical"
    assert backend.severity_for({"metric": "Disk usage"}) == "info"  # a regex keeps case
    assert backend.severity_for({"metric": "my disk"}) == "info"  # anchored
    assert backend.severity_for({}) == "info"  # a missing field is empty


def test_a_case_can_match_an_empty_field() -> None:
    backend = events_backend(
        severity={"when": [{"field": "host", "matches": "^$", "severity": "warning"}]}
    )
    assert backend.severity_for({"message": "x"}) == "warning"
    assert backend.severity_for({"host": "web-1"}) == "error"


def test_rest_backend_title_and_urgency() -> None:
    backend = RestBackend.model_validate(
        {
            "api_token": API_TOKEN,
            "from_email": "bridge@example.com",
            "service_id": "PWEB123",
            "title_template": "{ACTION}: {MSG} on {SUBJECT}",
            "urgency": {"when": [{"field": "subject", "contains": "prod", "urgency": "high"}]},
        }
    )
    fields = {"message": "CPU high", "subject": "web-prod-1"}
    assert backend.title(fields) == "triggered: CPU high on web-prod-1"
    assert backend.urgency_for(fields) == "high"
    assert backend.urgency_for({"subject": "web-dev-1"}) is None


FIELDS = {
    "alert_id": "42",
    "action": "triggered",
    "message": "Disk 90% full",
    "metric": "Disk usage",
    "subject": "db-1",
    "dimensions": "",
    "app": "shop",
    "link": "https://app.coscale.com/alert/42",
    "host": "db-1",
}


def test_events_trigger_with_defaults() -> None:
    event = events_backend(summary_template="{MSG} on {SUBJECT}").build("trigger", "k-1", FIELDS)
    assert event == {
        "event_action": "trigger",
        "dedup_key": "k-1",
        "payload": {
            "summary": "Disk 90% full on db-1",
            "source": "db-1",
            "severity": "error",
            "group": "shop",
            "class": "Disk usage",
            "custom_details": {
                "alert_id": "42",
                "message": "Disk 90% full",
                "metric": "Disk usage",
                "subject": "db-1",
                "app": "shop",
                "link": "https://app.coscale.com/alert/42",
                "host": "db-1",
            },
        },
        "links": [{"href": "https://app.coscale.com/alert/42", "text": "Open in CoScale"}],
    }
    assert "routing_key" not in event


def test_events_trigger_with_everything_configured() -> None:
    backend = events_backend(
        source="{SHORTHOST}.example.com",
        component="{METRIC}",
        group="",
        **{"class": ""},
        custom_details=["message"],
        links=[{"href": "{LINK}", "text": "{APP_NAME} in CoScale"}, {"href": "https://wiki/db"}],
    )
    event = backend.build("trigger", "k-1", FIELDS)
    payload = event["payload"]
    assert payload["summary"].startswith("Alert triggered for Disk 90% full")  # the seed
    assert payload["source"] == "db-1.example.com"
    assert payload["component"] == "Disk usage"
    assert "group" not in payload and "class" not in payload  # rendered empty: not sent
    assert payload["custom_details"] == {"message": "Disk 90% full"}
    assert event["links"] == [
        {"href": "https://app.coscale.com/alert/42", "text": "shop in CoScale"},
        {"href": "https://wiki/db"},
    ]


def test_events_trigger_without_the_fields_its_templates_use() -> None:
    # Given an alert with no subject and no link
    event = events_backend(custom_details=[]).build("trigger", "k-1", {"message": "m"})
    # Then the source falls back, no link is sent, and no custom_details either
    assert event["payload"]["source"] == FALLBACK_SOURCE
    assert "links" not in event
    assert "custom_details" not in event["payload"]


@pytest.mark.parametrize("action", ["acknowledge", "resolve"])
def test_events_follow_ups_carry_the_key_alone(action: Any) -> None:
    assert events_backend().build(action, "k-1", FIELDS) == {
        "event_action": action,
        "dedup_key": "k-1",
    }


def test_values_are_not_interpreted_as_templates() -> None:
    event = events_backend(source="{MSG}").build("trigger", "k-1", {"message": "{LINK} {0}"})
    assert event["payload"]["source"] == "{LINK} {0}"


def test_routes_are_frozen(table: RouteTable) -> None:
    route = table.by_name("web-team")
    assert isinstance(route, Route)
    with pytest.raises(ValidationError):
        route.name = "other"  # type: ignore[misc]
