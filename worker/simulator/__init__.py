"""A PagerDuty simulator: the subset of the REST API v2 that the bridge uses, and the Events API
v2 (``POST /v2/enqueue``), over real HTTP.

Used by integration tests, benchmarks and ``pagerbridge run --simulate``; started on its own with
``pagerbridge simulate --port N`` (which calls :func:`~worker.simulator.server.serve`).

Layers, top to bottom:

- :mod:`~worker.simulator.rest` and :mod:`~worker.simulator.events_api` — PagerDuty's rules, pure:
  constants, status rules, validation, and the refusals (:class:`SimulatedError`, which carries
  the HTTP status and PagerDuty's error envelope; :class:`InvalidEventError`, the Events API's
  400).
- :mod:`~worker.simulator.state` — :class:`SimulatedPagerDuty`, in-memory incidents and the
  Events API's alerts, no HTTP. Its methods take decoded JSON and return plain data, or raise one
  of those refusals. A ``threading.Lock`` guards the state, so tests may inspect it from their own
  thread while uvicorn serves requests. Alerts live apart from the incidents (the simulator does
  not turn alerts into incidents).
- :mod:`~worker.simulator.faults` and :mod:`~worker.simulator.fault_plan` — every PagerDuty call
  passes through a :class:`FaultPlan`, the extension point for fault injection.
  :class:`ConfigurableFaults`, the plan every app gets unless another is passed, injects the faults
  a :class:`FaultSettings` describes: down, flaky, lost responses, latency, hangs, per-credential
  rate limits (the API token for REST, the routing key for Events), 401 per token.
- :mod:`~worker.simulator.server` — :func:`create_app`, a plain Starlette app that checks the
  headers PagerDuty checks, decodes JSON and translates the refusals into PagerDuty's shapes, and
  :func:`serve`. It also serves a control API under ``/_simulator`` (not PagerDuty's):
  ``GET /_simulator/state``, ``GET /_simulator/counts`` (the counters alone, cheap to poll),
  ``POST /_simulator/reset``, ``GET /_simulator/health``, and ``GET``/``POST /_simulator/faults``
  and ``POST /_simulator/faults/clear`` to read and change the faults at run time.
- :mod:`~worker.simulator.control` — :class:`SimulatorControl`, the control API's typed client.
- :mod:`~worker.simulator.webhooks` — v3 webhook subscriptions and signed deliveries.

PagerDuty's behaviour comes from ``docs/pagerduty.md``. Where PagerDuty documents
nothing, the docstring at that point says which choice the simulator made.
"""

from worker.simulator.control import SimulatorControl, SimulatorControlError
from worker.simulator.events_api import (
    EVENT_ACTIONS,
    EVENT_SEVERITIES,
    EVENTS_ROUTE,
    INVALID_ROUTING_KEY_ERROR,
    MAX_EVENT_BYTES,
    EventAction,
    EventOutcome,
    InvalidEventError,
    event_outcome,
)
from worker.simulator.fault_plan import ConfigurableFaults, FaultPlan, PagerDutyCall
from worker.simulator.faults import FAULT_KINDS, FaultKind, FaultSettings, FaultSettingsError
from worker.simulator.rest import (
    DUPLICATE_INCIDENT_KEY_ERROR,
    PAGERDUTY_ACCEPT,
    IncidentStatus,
    SimulatedError,
    StatusChange,
    next_status,
)
from worker.simulator.server import create_app, serve
from worker.simulator.state import SimulatedPagerDuty

__all__ = [
    "DUPLICATE_INCIDENT_KEY_ERROR",
    "EVENTS_ROUTE",
    "EVENT_ACTIONS",
    "EVENT_SEVERITIES",
    "FAULT_KINDS",
    "INVALID_ROUTING_KEY_ERROR",
    "MAX_EVENT_BYTES",
    "PAGERDUTY_ACCEPT",
    "ConfigurableFaults",
    "EventAction",
    "EventOutcome",
    "FaultKind",
    "FaultPlan",
    "FaultSettings",
    "FaultSettingsError",
    "IncidentStatus",
    "InvalidEventError",
    "PagerDutyCall",
    "SimulatedError",
    "SimulatedPagerDuty",
    "SimulatorControl",
    "SimulatorControlError",
    "StatusChange",
    "create_app",
    "event_outcome",
    "next_status",
    "serve",
]
