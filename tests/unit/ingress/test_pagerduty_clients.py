"""PagerDuty's own Python clients, pointed at the bridge over HTTPS, doing what a PagerDuty user
does: create with and without an incident_key, the duplicate refused, read back, list by key,
bulk acknowledge and resolve, a single PUT, updates carrying PagerDuty's fields (with a status and
without), a reopen and an invalid body refused.

The api runs in-process under uvicorn with a loopback certificate from a trustme CA: the
``pagerduty`` client takes only an ``https://`` base URL.
"""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Alert, utcnow
from tests.fakes import ListQueue
from worker.ingress.app import create_app
from worker.ingress.incidents import DUPLICATE_KEY
from worker.pipeline.inbox import DurableEventQueue
from worker.pipeline.intake import apply_event
from worker.settings import Settings

TOKEN = "pagerduty-client-token-0123456789abcdef"
SERVICE = {"id": "PSVC001", "type": "service_reference"}
PRIORITY = {"id": "PPRIO01", "type": "priority_reference"}


@dataclass
class Bridge:
    url: str
    ca: trustme.CA
    ca_file: Path
    queue: ListQueue
    sessions: sessionmaker[Session]

    def apply_queued(self) -> None:
        """What the worker would do with the accepted events: fold them into the mapping."""
        events, self.queue.events[:] = list(self.queue.events), []
        for event in events:
            apply_event(self.sessions, event, utcnow())


@pytest.fixture
def bridge(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> Iterator[Bridge]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("cert.pem", "key.pem", "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    queue = ListQueue()
    app = create_app(
        Settings(ingress_tokens=TOKEN, pagerduty_service_id="PSVC001"),  # type: ignore[arg-type]
        queue=DurableEventQueue(queue, sqlite_sessions),
        sessions=sqlite_sessions,
        redis_ping=lambda: None,
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            ssl_certfile=str(cert_file),
            ssl_keyfile=str(key_file),
            log_level="warning",
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    started = threading.Event()
    while thread.is_alive() and not started.wait(0.05):
        if server.started:
            started.set()
    assert server.started, "uvicorn did not start"
    try:
        yield Bridge(f"https://127.0.0.1:{port}", ca, ca_file, queue, sqlite_sessions)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"
        listener.close()


def user_session(client: Any, bridge: Bridge, error: type[Exception]) -> None:
    """The script a PagerDuty user runs, with either client (their APIs are the same here)."""
    keyed = client.rpost(
        "incidents",
        json={"type": "incident", "title": "disk full", "service": SERVICE, "incident_key": "d1"},
    )
    assert keyed["incident_key"] == "d1" and keyed["status"] == "triggered"
    with pytest.raises(error) as refused:
        client.rpost(
            "incidents",
            json={"type": "incident", "title": "again", "service": SERVICE, "incident_key": "d1"},
        )
    answer = refused.value.response  # type: ignore[attr-defined]
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == 2001
    assert answer.json()["error"]["errors"] == [DUPLICATE_KEY]
    unkeyed = client.rpost(
        "incidents",
        json={"type": "incident", "title": "cpu", "service": SERVICE, "urgency": "low"},
    )
    assert unkeyed["id"] != keyed["id"] and unkeyed["incident_key"]

    assert client.rget(f"incidents/{keyed['id']}")["title"] == "disk full"
    bridge.apply_queued()
    listed = client.list_all("incidents", params={"incident_key": "d1"})
    assert [incident["id"] for incident in listed] == [keyed["id"]]
    assert len(client.list_all("incidents", params={"statuses[]": ["triggered"]})) == 2

    both = [keyed["id"], unkeyed["id"]]
    acked = client.rput(
        "incidents",
        json=[{"id": i, "type": "incident_reference", "status": "acknowledged"} for i in both],
    )
    assert {(i["id"], i["status"]) for i in acked} == {(i, "acknowledged") for i in both}
    # A reassignment and an escalation, no status: the fields go on as PagerDuty takes them.
    escalated = client.rput(
        f"incidents/{unkeyed['id']}",
        json={"type": "incident_reference", "escalation_level": 2, "priority": PRIORITY},
    )
    assert escalated["priority"] == PRIORITY and escalated["id"] == unkeyed["id"]
    resolved = client.rput(
        "incidents",
        json=[
            {"id": i, "type": "incident_reference", "status": "resolved", "resolution": "freed"}
            for i in both[:1]
        ],
    )
    assert resolved[0]["status"] == "resolved"
    with pytest.raises(error) as reopen:
        client.rput(
            f"incidents/{keyed['id']}", json={"type": "incident_reference", "status": "triggered"}
        )
    refusal = reopen.value.response  # type: ignore[attr-defined]
    assert (refusal.status_code, refusal.json()["error"]["code"]) == (400, 2001)
    assert "reopening" in refusal.json()["error"]["errors"][0]
    single = client.rput(
        f"incidents/{unkeyed['id']}", json={"type": "incident_reference", "status": "resolved"}
    )
    assert single["status"] == "resolved"
    bridge.apply_queued()
    after = client.rget(f"incidents/{keyed['id']}")
    assert after["bridge"]["desired_status"] == "resolved"
    with bridge.sessions() as session:
        waiting = dict(session.execute(select(Alert.source_alert_id, Alert.update_fields)).all())
    assert waiting == {
        keyed["id"]: {"resolution": "freed"},
        unkeyed["id"]: {"escalation_level": 2, "priority": PRIORITY},
    }

    with pytest.raises(error) as invalid:
        client.rpost("incidents", json={"type": "banana", "title": "x", "service": SERVICE})
    bad = invalid.value.response  # type: ignore[attr-defined]
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "Invalid Input Provided"
    with pytest.raises(error) as missing:
        client.rget("incidents/PBAAAAAAAAAAAAAAAA")
    assert missing.value.response.status_code == 404  # type: ignore[attr-defined]


def test_pdpyras_works_against_the_bridge(bridge: Bridge) -> None:
    with warnings.catch_warnings():
        # pdpyras says at import that it is deprecated in favour of "pagerduty" (tested below).
        warnings.simplefilter("ignore", UserWarning)
        import pdpyras

    session = pdpyras.APISession(TOKEN, default_from="oncall@example.com")
    session.url = bridge.url
    session.verify = str(bridge.ca_file)
    # requests lets REQUESTS_CA_BUNDLE from the environment win over Session.verify
    # (psf/requests#3829): the environment is not read, so the CA given here is the one used.
    session.trust_env = False
    session.max_network_attempts = 0
    # No keep-alive: the server's shutdown then has no idle connection of requests' pool to
    # wait out.
    session.headers["Connection"] = "close"
    try:
        user_session(session, bridge, pdpyras.PDClientError)
    finally:
        session.close()


def test_the_pagerduty_client_works_against_the_bridge(bridge: Bridge) -> None:
    import pagerduty

    context = ssl.create_default_context()
    bridge.ca.configure_trust(context)
    client = pagerduty.RestApiV2Client(
        TOKEN, default_from="oncall@example.com", base_url=bridge.url, verify=context
    )
    try:
        user_session(client, bridge, pagerduty.Error)
    finally:
        client.close()
