""":class:`SimulatorControl`, the typed client of a running simulator's ``/_simulator`` control
API (state, counters, reset, faults, a responder acting on incidents, webhook deliveries).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Protocol, cast

import httpx


class _ControlResponse(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


class _ControlHttpClient(Protocol):
    """What :class:`SimulatorControl` needs of an HTTP client. A Protocol rather than
    ``httpx.Client`` so that Starlette's ``TestClient`` fits whichever httpx it is built on."""

    def request(self, method: str, url: str, *, json: Any = None) -> _ControlResponse: ...

    def close(self) -> None: ...


class SimulatorControlError(Exception):
    """The control API could not be reached or answered with an unexpected status."""


class SimulatorControl:
    """Typed client for the ``/_simulator`` control API of a running simulator.

    ``client`` lets a test pass another client, e.g. Starlette's ``TestClient``; a client passed
    in is not closed by :meth:`close`. httpx errors are translated into
    :class:`SimulatorControlError`, so callers outside this package never see an httpx type.
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 5.0, client: _ControlHttpClient | None = None
    ) -> None:
        """``base_url``: e.g. ``http://127.0.0.1:8089``; ``timeout_s``: per request, in seconds."""
        self._base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client: _ControlHttpClient = (
            client if client is not None else httpx.Client(timeout=timeout_s)
        )

    def state(self) -> dict[str, Any]:
        """The simulator's counters, incidents and alerts; see :meth:`SimulatedPagerDuty.state`."""
        response = self._request("GET", "/_simulator/state", expected=200)
        return cast(dict[str, Any], response.json())

    def counts(self) -> dict[str, Any]:
        """The counters alone, cheap to poll; see :meth:`SimulatedPagerDuty.counts`."""
        response = self._request("GET", "/_simulator/counts", expected=200)
        return cast(dict[str, Any], response.json())

    def reset(self) -> None:
        """Forget every incident, alert and counter; the fault settings stay as they are."""
        self._request("POST", "/_simulator/reset", expected=204)

    def faults(self) -> dict[str, Any]:
        """The current fault settings, every field (see :class:`FaultSettings`)."""
        response = self._request("GET", "/_simulator/faults", expected=200)
        return cast(dict[str, Any], response.json())

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` (names of :class:`FaultSettings`) into the fault settings; return
        the result. A bad name or value raises :class:`SimulatorControlError` naming it."""
        response = self._request("POST", "/_simulator/faults", expected=200, json=fields)
        return cast(dict[str, Any], response.json())

    def clear_faults(self) -> None:
        """Turn every fault off."""
        self._request("POST", "/_simulator/faults/clear", expected=200)

    def respond(
        self, incident_id: str, action: str, responder: str = "Simulated Responder"
    ) -> dict[str, Any]:
        """Act on an incident as a person in PagerDuty's UI (acknowledge, unacknowledge,
        resolve, reopen); the incident after it."""
        response = self._request(
            "POST",
            "/_simulator/responder",
            expected=200,
            json={"incident_id": incident_id, "action": action, "responder": responder},
        )
        return cast(dict[str, Any], response.json()["incident"])

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every webhook delivery made: url, body, headers, status of its last attempt."""
        response = self._request("GET", "/_simulator/webhooks", expected=200)
        return cast(list[dict[str, Any]], response.json()["deliveries"])

    def wait_until_ready(self, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
        """Poll the health endpoint until it answers; raise :class:`SimulatorControlError` after
        ``timeout_s`` seconds. For tests that start the simulator in another process."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._request("GET", "/_simulator/health", expected=200)
                return
            except SimulatorControlError:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(interval_s)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self, method: str, path: str, *, expected: int, json: Any = None
    ) -> _ControlResponse:
        url = self._base_url + path
        try:
            response = self._client.request(method, url, json=json)
        except httpx.HTTPError as exc:
            raise SimulatorControlError(f"{method} {url} failed: {exc}") from exc
        if response.status_code != expected:
            raise SimulatorControlError(
                f"{method} {url} answered {response.status_code}, expected {expected}: "
                f"{response.text[:200]}"
            )
        return response
