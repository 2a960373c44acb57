"""``pagerbridge pagerduty subscribe`` / ``subscriptions``: PagerDuty's v3 webhook subscriptions
that tell the bridge what responders do (PagerDuty API: ``POST``/``GET /webhook_subscriptions``).
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import ConfigurationError
from worker.pagerduty import PagerDutyClient
from worker.pagerduty.client import WebhookSubscription
from worker.pipeline.message import DEFAULT_ROUTE
from worker.pipeline.responders import INCIDENT_EVENTS
from worker.routes_file import load_route_table
from worker.settings import ENV_PREFIX, Settings

WEBHOOK_PATH = "/webhooks/pagerduty"


@dataclass(frozen=True, slots=True)
class RouteAccount:
    """Where a route's incidents are: the REST API it uses and its service."""

    route: str
    api_url: str
    token: str
    from_email: str
    service_id: str

    def client(self, settings: Settings) -> PagerDutyClient:
        return PagerDutyClient(
            self.api_url,
            self.token,
            self.from_email,
            connect_timeout=settings.pagerduty_connect_timeout,
            read_timeout=settings.pagerduty_read_timeout,
        )


def route_account(settings: Settings, route: str | None) -> RouteAccount:
    """The default route's PAGERBRIDGE_PAGERDUTY_* settings, or a REST route of the routes file."""
    if route is None or route == DEFAULT_ROUTE:
        settings.require("pagerduty_token", "pagerduty_from", "pagerduty_service_id")
        assert settings.pagerduty_token is not None
        return RouteAccount(
            DEFAULT_ROUTE,
            settings.pagerduty_url.rstrip("/"),
            settings.pagerduty_token.get_secret_value(),
            str(settings.pagerduty_from),
            str(settings.pagerduty_service_id),
        )
    found = load_route_table(settings).by_name(route)
    if found is None:
        raise ConfigurationError(f"no route {route!r} in the routes file")
    if found.rest is None:
        raise ConfigurationError(
            f"route {route!r} uses the Events API: the bridge has no REST API token for it. "
            "Subscribe in PagerDuty's web UI (Integrations > Generic Webhooks (v3)) with the "
            "service its integration key belongs to"
        )
    return RouteAccount(
        found.name,
        str(found.rest.api_url).rstrip("/"),
        found.rest.api_token.get_secret_value(),
        found.rest.from_email,
        found.rest.service_id,
    )


def webhook_url(url: str, route: str) -> str:
    """The bridge's endpoint for ``route``: ``.../webhooks/pagerduty[/<route>]``."""
    base = url.rstrip("/")
    if not base.startswith(("https://", "http://")):
        raise ConfigurationError(f"--url {url!r}: an http(s) URL of the bridge's api is needed")
    if route != DEFAULT_ROUTE and not base.endswith(f"{WEBHOOK_PATH}/{route}"):
        base = base.removesuffix(WEBHOOK_PATH) + f"{WEBHOOK_PATH}/{route}"
    elif route == DEFAULT_ROUTE and not base.endswith(WEBHOOK_PATH):
        base += WEBHOOK_PATH
    return base


def subscribe(settings: Settings, url: str, route: str | None) -> WebhookSubscription:
    account = route_account(settings, route)
    with account.client(settings) as client:
        return client.create_webhook_subscription(
            webhook_url(url, account.route),
            service_id=account.service_id,
            events=tuple(INCIDENT_EVENTS),
            description=f"pagerbridge route {account.route}",
        )


def subscriptions(settings: Settings, route: str | None) -> list[WebhookSubscription]:
    account = route_account(settings, route)
    with account.client(settings) as client:
        return client.list_webhook_subscriptions()


def secret_line(route: str, secret: str) -> str:
    """The setting that makes the bridge accept the subscription's deliveries."""
    if route == DEFAULT_ROUTE:
        return f"{ENV_PREFIX}PAGERDUTY_WEBHOOK_SECRETS={secret}"
    return f'webhook_secrets = ["{secret}"]'
