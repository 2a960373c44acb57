"""The operator console in a real headless browser: Debian's chromium, driven by Playwright,
against a running bridge (simulator, api, worker, beat).

Nothing is downloaded: Playwright launches ``/usr/bin/chromium`` (``apt-get install chromium``;
``.ci/run`` installs it), never a browser of its own. With ``PAGERBRIDGE_UPDATE_SCREENSHOTS=1``
the test also writes the screenshots under docs/ that the README shows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from models import Alert
from tests.conftest import service_missing
from tests.integration.conftest import (
    INGRESS_TOKEN,
    Bridge,
    fresh_database,
    running_bridge,
    wait_for,
)
from worker.vocabulary import DeliveryState

pytestmark = pytest.mark.integration

OPERATOR_TOKEN = "integration-operator-token-0123456789ab"
CHROMIUM = os.environ.get("PAGERBRIDGE_TEST_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
HOSTILE = "<script>alert(1)</script>"
# Milliseconds Playwright waits for what a page should come to show: deliveries and the
# overview's refresh take a few seconds on a loaded machine.
SHOWS_WITHIN = 30_000
# The elements that reach past the screen's right edge, outside a scrolling region.
WIDER_THAN_THE_SCREEN = """
[...document.querySelectorAll("body *")]
  .filter((e) => !e.closest(".scroll") && e.getBoundingClientRect().right > window.innerWidth + 1)
  .map((e) => e.tagName + "." + e.className + ": " + (e.textContent || "").slice(0, 40))
"""


@pytest.fixture(scope="module")
def console_bridge(
    redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    """A bridge of its own: a short give-up age, so that a refused delivery fails quickly, and a
    breaker that does not open first (it would park the alert instead)."""
    with (
        fresh_database() as database_url,
        running_bridge(
            database_url,
            redis_url,
            f"{namespace}-console",
            tmp_path_factory.mktemp("console-logs"),
            settings=lambda _simulator: {
                "PAGERBRIDGE_OPERATOR_TOKENS": OPERATOR_TOKEN,
                "PAGERBRIDGE_GIVE_UP_AFTER": "3",
                "PAGERBRIDGE_BREAKER_THRESHOLD": "1000",
            },
        ) as bridge,
    ):
        yield bridge
        redis.Redis.from_url(redis_url).delete(f"{namespace}-console")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        service_missing(f"Playwright ({exc}): pip install -e '.[test]'")
        raise AssertionError("unreachable") from exc
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        service_missing(f"chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs
    yield opened
    context.close()


def send_webhook(bridge: Bridge, alert_id: str, message: str = "CPU > 90%") -> None:
    answer = httpx.post(
        f"{bridge.api_url}/webhooks/coscale",
        json={"alert_id": alert_id, "action": "triggered", "message": message, "app": "shop"},
        headers={"Authorization": f"Token token={INGRESS_TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text


def state_of(bridge: Bridge, alert_id: str) -> DeliveryState | None:
    with bridge.sessions() as session:
        return session.scalars(
            select(Alert.delivery_state).where(Alert.source_alert_id == alert_id)
        ).first()


def screenshot(page: Any, name: str) -> None:
    if os.environ.get("PAGERBRIDGE_UPDATE_SCREENSHOTS") == "1":
        page.screenshot(path=str(DOCS / name), full_page=True)


def test_an_operator_follows_an_alert_from_webhook_to_replay(
    page: Any, console_bridge: Bridge
) -> None:
    from playwright.sync_api import expect

    bridge = console_bridge
    ui = f"{bridge.api_url}/ui"

    # A wrong token (an ingress token) is refused; the operator token signs in, by keyboard.
    page.goto(ui)
    expect(page).to_have_url(f"{ui}/sign-in")
    page.get_by_label("Operator token").fill(INGRESS_TOKEN)
    with page.expect_response(f"{ui}/sign-in") as refused:
        page.keyboard.press("Enter")
    assert refused.value.status == 401
    expect(page.get_by_role("alert")).to_have_text("That is not an operator token.")
    page.get_by_label("Operator token").fill(OPERATOR_TOKEN)
    page.keyboard.press("Enter")
    expect(page).to_have_url(ui)
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()

    # A webhook's alert appears on the overview by itself, without a reload.
    page.evaluate("window.loadedOnce = true")
    send_webhook(bridge, "console-e2e-1")
    expect(page.get_by_role("link", name="console-e2e-1").first).to_be_visible(timeout=SHOWS_WITHIN)
    assert page.evaluate("window.loadedOnce") is True

    # Its timeline: the event received, with its fields, and PagerDuty's answer.
    wait_for(lambda: state_of(bridge, "console-e2e-1") is DeliveryState.DELIVERED, what="delivery")
    page.get_by_role("link", name="console-e2e-1").first.click()
    expect(page).to_have_url(f"{ui}/alerts/console-e2e-1?source=coscale")
    expect(page.get_by_text("Event received")).to_be_visible()
    expect(page.get_by_text("CPU > 90%", exact=True)).to_be_visible()
    expect(page.get_by_text("PagerDuty call").first).to_be_visible()
    expect(page.locator(".state-delivered").first).to_be_visible()

    # A message holding a script shows as text, and runs nothing.
    send_webhook(bridge, "console-e2e-xss", HOSTILE)
    wait_for(lambda: state_of(bridge, "console-e2e-xss") is not None, what="the alert")
    page.goto(f"{ui}/alerts/console-e2e-xss")
    expect(page.get_by_text(HOSTILE, exact=True).first).to_be_visible()
    assert page.dialogs == []

    # PagerDuty refuses a delivery until it fails; a replay from the page delivers it.
    bridge.simulator.set_faults(down=True)
    try:
        send_webhook(bridge, "console-e2e-down")
        wait_for(
            lambda: state_of(bridge, "console-e2e-down") is DeliveryState.FAILED,
            timeout=60,
            what="the refused delivery to fail",
        )
    finally:
        bridge.simulator.clear_faults()
    page.goto(f"{ui}/failed")
    row = page.get_by_role("row").filter(has_text="console-e2e-down")
    row.get_by_role("button", name="Replay").click()
    expect(page.get_by_text("Put alert console-e2e-down")).to_be_visible()
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_role("status")).to_contain_text("1 alert(s) put back into delivery")
    wait_for(
        lambda: state_of(bridge, "console-e2e-down") is DeliveryState.DELIVERED,
        timeout=60,
        what="the replayed alert to be delivered",
    )
    page.goto(f"{ui}/alerts/console-e2e-down")
    expect(page.get_by_text("replayed by an operator")).to_be_visible()
    expect(page.locator("tbody .state-delivered")).to_be_visible()
    screenshot(page, "console-alert.png")

    # A POST without the session's CSRF token is refused, signed in as the browser is.
    forged = page.request.post(f"{ui}/replay", form={"alert_id": "console-e2e-1"})
    assert forged.status == 403

    # The overview reads at a phone's width: nothing wider than the screen but its tables,
    # which scroll within their own region.
    page.goto(ui)
    expect(page.get_by_role("link", name="console-e2e-down").first).to_be_visible()
    screenshot(page, "console-overview.png")
    page.set_viewport_size({"width": 390, "height": 844})
    too_wide = page.evaluate(WIDER_THAN_THE_SCREEN)
    assert too_wide == [], too_wide
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # Signing out ends the session.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{ui}/sign-in")
    page.goto(ui)
    expect(page).to_have_url(f"{ui}/sign-in")
