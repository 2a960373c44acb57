from hypothesis import given
from hypothesis import strategies as st

from worker.coscale import incident_details, incident_title
from worker.settings import SEED_TITLE_TEMPLATE
from worker.title import TITLE_LIMIT, render_title, truncate


def test_seed_template_renders_like_coscale() -> None:
    title = incident_title(
        SEED_TITLE_TEMPLATE,
        {
            "message": "CPU > 90%",
            "metric": "cpu ",
            "subject": "web-1 ",
            "time": "10:00",
            "date": "2026-11-27",
            "app": "shop",
            "link": "https://app.coscale.com/a/1",
        },
    )
    assert title == (
        "Alert triggered for CPU > 90% cpu web-1 at 10:00 (2026-11-27) on application shop. "
        "https://app.coscale.com/a/1"
    )


def test_values_are_never_interpreted_again() -> None:
    # Given values that look like placeholders or format fields
    values = {"message": "{MSG} {0.__class__} {APP_NAME} %s {{", "app": "{LINK}"}
    # When rendered
    title = incident_title("{MSG} | {APP_NAME}", values)
    # Then they appear literally, in one pass
    assert title == "{MSG} {0.__class__} {APP_NAME} %s {{ | {LINK}"


def test_unknown_braces_in_template_stay_literal() -> None:
    assert render_title("{NOT_A_PLACEHOLDER} {MSG} {lower}", {"MSG": "x"}) == (
        "{NOT_A_PLACEHOLDER} x {lower}"
    )


def test_missing_fields_render_empty() -> None:
    assert incident_title("[{MSG}][{METRIC}]", {}) == "[][]"


def test_action_in_title_is_the_incident_opening_trigger() -> None:
    assert incident_title("Alert {ACTION}", {"action": "acknowledged"}) == "Alert triggered"


def test_title_truncated_to_pagerduty_limit() -> None:
    title = incident_title("{MSG}", {"message": "x" * 5000})
    assert len(title) == TITLE_LIMIT
    assert title.endswith("…")


def test_html_stays_text() -> None:
    assert incident_title("{MSG}", {"message": "<b>down</b>"}) == "<b>down</b>"


def test_details_list_present_fields() -> None:
    details = incident_details({"message": "disk full", "host": "db1", "alert_id": "7"})
    assert details.splitlines() == ["Message: disk full", "Host: db1", "CoScale alert id: 7"]


# -- properties ---------------------------------------------------------------------------------

_NAMES = st.sampled_from(["MSG", "METRIC", "SUBJECT", "APP_NAME", "LINK", "ACTION", "ALERT_ID"])
_LITERAL = st.text(alphabet=st.characters(exclude_characters="{}"), max_size=20)
# Values may hold anything, placeholders and format fields included.
_VALUE = st.text(max_size=300) | st.sampled_from(["{MSG}", "{0}", "%s", "{{MSG}}", "<b>x</b>"])


@given(
    parts=st.lists(st.tuples(_LITERAL, _NAMES), max_size=8),
    tail=_LITERAL,
    values=st.dictionaries(_NAMES, _VALUE),
)
def test_property_every_placeholder_is_filled_once_and_the_title_fits(
    parts: list[tuple[str, str]], tail: str, values: dict[str, str]
) -> None:
    # Given a template built from literal text and placeholders, and any values
    template = "".join(f"{literal}{{{name}}}" for literal, name in parts) + tail
    # When rendered
    title = render_title(template, values)
    # Then it is the template with each placeholder replaced by its value once (never read
    # again, whatever the value holds), cut to PagerDuty's limit
    expected = (
        "".join(literal + values.get(name, "{" + name + "}") for literal, name in parts) + tail
    )
    assert title == truncate(expected.strip(), TITLE_LIMIT)
    assert len(title) <= TITLE_LIMIT
