"""The one place the environment is read.

Every setting is ``PAGERBRIDGE_<NAME>`` in the environment or in a ``.env`` file in the working
directory. Secrets have no default: the commands that need one call :meth:`Settings.require`,
which fails at start with the variable's name instead of at the first PagerDuty call.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigurationError
from worker.vocabulary import DEFAULT_NAMESPACE

ENV_PREFIX = "PAGERBRIDGE_"
PLACEHOLDER = "change-me"  # what .env.example holds where a secret must go
#: The shortest ingress token accepted, in the settings and in the routes file: 32 characters
#: of ``secrets.token_urlsafe`` or ``openssl rand -hex`` carry 128 bits or more.
MIN_INGRESS_TOKEN_CHARS = 32
MAKE_A_TOKEN = "openssl rand -hex 32"  # noqa: S105  (a command, not a secret)


def ingress_token_problem(value: str, kind: str = "an ingress token") -> str | None:
    """Why ``value`` cannot be an ingress token (or an operator token: ``kind``), or ``None``."""
    if len(value) < MIN_INGRESS_TOKEN_CHARS:
        return (
            f"{kind} must be at least {MIN_INGRESS_TOKEN_CHARS} characters "
            f"(this one has {len(value)}); make one with `{MAKE_A_TOKEN}`"
        )
    return None


#: The seed page's incident title (CoScale's own PagerDuty configuration), so that switching to
#: the bridge changes nothing a responder sees.
SEED_TITLE_TEMPLATE = (
    "Alert {ACTION} for {MSG} {METRIC}{SUBJECT}{DIMENSIONS}at {TIME} ({DATE}) "
    "on application {APP_NAME}. {LINK}"
)


class Settings(BaseSettings):
    """pagerbridge's settings; names and defaults are the public contract (docs/design.md)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    redis_url: str = "redis://localhost:6379/0"
    namespace: str = Field(
        DEFAULT_NAMESPACE,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Celery queue name, prefix of every Redis key, and the bridge every "
        "database row belongs to; bridges may share a Redis and a database with different "
        "namespaces",
    )
    database_url: str = "sqlite:///pagerbridge.db"

    pagerduty_url: str = "https://api.pagerduty.com"
    pagerduty_token: SecretStr | None = None
    pagerduty_from: str | None = None
    pagerduty_service_id: str | None = None
    pagerduty_connect_timeout: float = Field(5.0, gt=0, description="seconds")
    pagerduty_read_timeout: float = Field(10.0, gt=0, description="seconds")

    # NoDecode: a comma-separated list, not the JSON pydantic-settings expects for lists.
    ingress_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    operator_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="comma-separated tokens that sign an operator in to the console (/ui); "
        "each at least 32 characters; unset: the console is off",
    )
    console_session_hours: float = Field(
        8.0, gt=0, le=24 * 7, description="hours a console sign-in lasts; then sign in again"
    )
    allowed_service_ids: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="comma-separated PagerDuty service ids the default route's callers may "
        "name; empty: any (PAGERBRIDGE_PAGERDUTY_SERVICE_ID is always allowed)",
    )
    forward_foreign_updates: bool = Field(
        False,
        description="forward the API contact's updates to incidents the bridge did not create "
        "(opened before the switch): meant for the days of a migration; only a REST route's "
        "token may, and only to an incident on one of that route's services",
    )
    foreign_updates_per_request: int = Field(
        25, ge=1, le=250, description="incidents the bridge did not create, per update request"
    )
    foreign_updates_per_minute: int = Field(
        60,
        ge=1,
        description="incidents the bridge did not create that one token may update per minute "
        "(per api process)",
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=1,
        description="failed authentications one client address may make per minute before its "
        "requests are answered 429 (per api process)",
    )
    pagerduty_webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="comma-separated secrets of the PagerDuty webhook subscriptions that post to "
        "/webhooks/pagerduty (two while one is rotated); empty: that endpoint refuses everything",
    )
    read_before_acknowledge: bool = Field(
        True,
        description="read an incident's status (one GET) before acknowledging it, so that an "
        "incident a responder resolved is never reopened; only for routes without PagerDuty "
        "webhook secrets, whose webhooks tell the bridge instead",
    )
    title_template: str = SEED_TITLE_TEMPLATE
    routes_file: str | None = Field(
        None,
        description="a TOML file of routes (routes.example.toml); unset: only the default route",
    )
    public_url: str = Field(
        "http://localhost:8080",
        description="how CoScale reaches the api; used in links the bridge hands out",
    )
    max_body_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="bytes: the largest request body the api reads; a larger one is answered 413 "
        "without being read (Content-Length checked first, then the bytes as they arrive)",
    )
    ingress_store_deadline: float = Field(
        1.0,
        gt=0,
        le=10,
        description="seconds the api waits for the database to store an accepted event; past "
        "it the event is kept on the queue alone (made durable there, or answered 503), so "
        "CoScale has its answer within about this plus a Redis round trip",
    )
    http_idle_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a connection may stay open without sending a request (before its "
        "first one, and between two); then it is closed",
    )
    http_request_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a request has to arrive whole once it has begun: its headers, "
        "then its body; a slower one is answered 408 (or closed, while the headers are "
        "incomplete)",
    )
    http_max_connections: int = Field(
        1000,
        gt=0,
        description="open connections the api serves at once (per api process); at it, the "
        "one waiting longest without a request is closed to make room, and when every one is "
        "serving a request a new one is answered 503; lowered at start to fit the process's "
        "open-file limit",
    )
    tls_certfile: str | None = Field(
        None,
        description="PEM certificate (chain) the api serves HTTPS with; unset: plain HTTP "
        "(behind a TLS-terminating proxy)",
    )
    tls_keyfile: str | None = Field(None, description="PEM private key of PAGERBRIDGE_TLS_CERTFILE")
    quarantine_max_rows: int = Field(
        1000,
        gt=0,
        description="rejected requests kept for `pagerbridge rejected` at most; the oldest go "
        "first",
    )
    quarantine_max_age_days: float = Field(
        14.0, gt=0, description="days a rejected request is kept for `pagerbridge rejected`"
    )

    pagerduty_rate_per_minute: float = Field(
        900.0,
        gt=0,
        description="calls per minute per PagerDuty token, all workers together "
        "(PagerDuty allows 960)",
    )
    # A batch's creates go out a few at once after a slow start (worker/delivery/policy.py). With
    # PagerDuty answering in 150 ms and a 900/min budget, two processes sending up to 4 each
    # delivered 15.8/s (all of it, the burst included); one at a time, 13.1-13.2/s (87-88%), and
    # four processes one at a time 15.0-15.3/s for 55% more CPU per alert (bench/run.py
    # --phases backlog,delivery --pagerduty-latency-ms 150 --rate-per-minute 900 --alerts 600).
    pagerduty_calls_in_flight: int = Field(
        4,
        ge=1,
        le=8,
        description="creates (Events API events, on such a route) each worker process sends to "
        "PagerDuty at once, each on its own connection, after a slow start, so a `worker` has up "
        "to this times its concurrency in flight per credential; 1 keeps each process's calls "
        "serial, as PagerDuty advises",
    )
    breaker_threshold: int = Field(
        5, gt=0, description="consecutive retryable failures that open the outage breaker"
    )
    breaker_probe_interval: float = Field(
        1.5, gt=0, description="seconds between probes while the breaker is open"
    )

    retry_min_backoff: float = Field(5.0, gt=0, description="seconds before the first retry")
    retry_max_backoff: float = Field(300.0, gt=0, description="cap of one retry wait, seconds")
    give_up_after: float = Field(48 * 3600.0, gt=0, description="seconds; then the alert fails")
    lease_seconds: float = Field(
        10.0,
        gt=0,
        description="life of a worker's claim on an alert, renewed while it works; a killed "
        "worker's alerts are taken over after this many seconds",
    )
    sweep_interval: float = Field(2.0, gt=0, description="seconds between sweeper runs")
    sweep_batch: int = Field(500, gt=0, description="alerts re-queued per sweeper run at most")
    # A resolve followed by a re-fire within a minute is one problem to the person paged: a
    # new page for it is noise, while a resolve a minute late costs nobody anything (nothing
    # is done on an all-clear). CoScale checks most metrics once a minute.
    flap_window: float = Field(
        60.0,
        ge=0,
        description="seconds a resolve is held before it is sent; a trigger within them keeps "
        "the incident open instead of paging again (0: no damping)",
    )
    retention_days: float = Field(
        30.0,
        gt=0,
        description="days a delivered, resolved alert and its timeline are kept after its last "
        "update; then the hourly prune deletes them",
    )

    # Two processes, each with up to pagerduty_calls_in_flight creates out at once, use a 900/min
    # budget whole at PagerDuty's latency (above) and, in an alert storm on two CPUs, deliver
    # faster than four sending one at a time (bench/README.md). A worker killed outright strands
    # what its processes hold leased; the worker that replaces it takes those back
    # (worker/delivery/leases.py).
    worker_concurrency: int = Field(2, gt=0, description="worker processes per `worker`")
    worker_max_memory_mb: int = Field(
        200,
        ge=0,
        description="a worker pool process whose resident memory passes this many MiB is "
        "replaced by a fresh one once its task ends (Celery's worker_max_memory_per_child); "
        "0: never",
    )
    # 20 ms: a lone alert waits 10 ms on average before it is applied (webhook to incident within
    # the latency the bench holds the bridge to), while a storm's messages still fill batches
    # of 100 (celery-batches' flush_every) without waiting for the timer.
    apply_batch_window: float = Field(
        0.02,
        gt=0,
        le=10,
        description="seconds: how long a `worker` gathers the events it takes into one batch "
        "before applying them; longer makes an alert storm's batches bigger, and every alert "
        "later (by half the window on average)",
    )
    api_workers: int = Field(1, gt=0, description="api processes per `api`")
    beat_schedule_path: str = Field(
        "", description="beat's schedule file; empty means a file in the temp directory"
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` lines, or `json`: one JSON object per line"
    )
    metrics_public: bool = Field(
        False, description="serve the api's /metrics without the ingress token"
    )
    worker_metrics_address: str = Field(
        "127.0.0.1",
        description="address each `worker` serves its metrics on; 0.0.0.0 for all (compose)",
    )
    worker_metrics_port: int = Field(
        9808,
        ge=0,
        le=65535,
        description="port on which each `worker` serves its Prometheus metrics; 0: none",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError(
                f"set both {ENV_PREFIX}TLS_CERTFILE and {ENV_PREFIX}TLS_KEYFILE, or neither"
            )
        return self

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator(
        "ingress_tokens",
        "operator_tokens",
        "allowed_service_ids",
        "pagerduty_webhook_secrets",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("ingress_tokens", "operator_tokens")
    @classmethod
    def _long_enough(
        cls, tokens: tuple[SecretStr, ...], info: ValidationInfo
    ) -> tuple[SecretStr, ...]:
        kind = "an operator token" if info.field_name == "operator_tokens" else "an ingress token"
        for token in tokens:
            value = token.get_secret_value()
            problem = None if value == PLACEHOLDER else ingress_token_problem(value, kind)
            if problem:  # the placeholder is require()'s to report, by name
                raise ValueError(problem)
        return tokens

    def require(self, *names: str) -> None:
        """Fail with the environment variable's name when a needed setting is unset."""
        missing = [
            f"{ENV_PREFIX}{name.upper()}" for name in names if getattr(self, name) in (None, "", ())
        ]
        if missing:
            raise ConfigurationError(
                f"missing required setting(s): {', '.join(missing)} "
                "(set them in the environment or in .env)"
            )
        placeholders = [
            f"{ENV_PREFIX}{name.upper()}" for name in names if _is_placeholder(getattr(self, name))
        ]
        if placeholders:
            raise ConfigurationError(
                f"setting(s) still hold the placeholder from .env.example: "
                f"{', '.join(placeholders)}; replace {PLACEHOLDER!r} with real values"
            )

    @property
    def ingress_token_values(self) -> tuple[str, ...]:
        return tuple(token.get_secret_value() for token in self.ingress_tokens)

    @property
    def operator_token_values(self) -> tuple[str, ...]:
        return tuple(token.get_secret_value() for token in self.operator_tokens)

    @property
    def pagerduty_webhook_secret_values(self) -> tuple[str, ...]:
        return tuple(secret.get_secret_value() for secret in self.pagerduty_webhook_secrets)


def _is_placeholder(value: object) -> bool:
    values = value if isinstance(value, tuple) else (value,)
    return any(
        (item.get_secret_value() if isinstance(item, SecretStr) else item) == PLACEHOLDER
        for item in values
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
