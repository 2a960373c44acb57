"""Reading request bodies: strict JSON first, and CoScale's unescaped placeholders repaired only
where one reading is meant (worker/ingress/json_body.py)."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.ingress.json_body import (
    READ_BUDGET,
    WORK_BASE,
    WORK_PER_CHARACTER,
    MalformedBody,
    RepairWork,
    Unreadable,
    is_json_media_type,
    parse_json_body,
    read_unescaped,
)

# The README's suggested Format, as CoScale fills it: by pasting, without escaping.
FORMAT = (
    '{"alert_id": "{ALERT_ID}", "action": "{ACTION}", "message": "{MSG}", "metric": "{METRIC}",\n'
    ' "subject": "{SUBJECT}", "dimensions": "{DIMENSIONS}", "app": "{APP_NAME}", "link": "{LINK}",'
    '\n "date": "{DATE}", "time": "{TIME}", "host": "{SHORTHOST}"}'
)
PLACEHOLDERS = {
    "ALERT_ID": "alert_id",
    "ACTION": "action",
    "MSG": "message",
    "METRIC": "metric",
    "SUBJECT": "subject",
    "DIMENSIONS": "dimensions",
    "APP_NAME": "app",
    "LINK": "link",
    "DATE": "date",
    "TIME": "time",
    "SHORTHOST": "host",
}
PLAIN = {"ALERT_ID": "42", "ACTION": "triggered", "APP_NAME": "shop", "DATE": "2026-11-27"}


def coscale_body(**values: str) -> bytes:
    """The Format with ``values`` pasted in, as CoScale does (absent placeholders empty)."""
    filled = {name: "" for name in PLACEHOLDERS} | PLAIN | values
    return re.sub(r"\{([A-Z_]+)\}", lambda m: filled[m.group(1)], FORMAT).encode()


def intended(**values: str) -> dict[str, str]:
    filled = {name: "" for name in PLACEHOLDERS} | PLAIN | values
    return {PLACEHOLDERS[name]: value for name, value in filled.items()}


def test_valid_json_is_read_as_it_is_and_not_marked_repaired() -> None:
    parsed = parse_json_body(b'{"alert_id": "1", "message": "a \\"quoted\\" word"}')
    assert parsed.document == {"alert_id": "1", "message": 'a "quoted" word'}
    assert parsed.repaired is False


@pytest.mark.parametrize(
    "message",
    [
        'disk "full" on /',
        'he said "hi", then left',
        "C:\\data\\logs",
        "line one\nline two\r\n\tindented",
        'ends with a quote "',
        '"',
        '""""',
        "trailing backslash \\",
        "\\",
        'a lone " and a \\ and a\nnewline',
        '{"nested": "json-looking"}',
        "[1, 2] {}\n: ,",
    ],
)
def test_unescaped_values_are_read_as_coscale_meant_them(message: str) -> None:
    # Given a body CoScale built with a value holding a quote, a backslash or a newline
    body = coscale_body(MSG=message, METRIC="cpu")
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)

    # When it is read
    parsed = parse_json_body(body)

    # Then every field is what CoScale meant, and the body is marked repaired
    assert parsed.repaired is True
    assert parsed.document == intended(MSG=message, METRIC="cpu")


def test_the_api_contacts_nested_body_is_repaired_too() -> None:
    body = (
        b'{"incident": {"type": "incident", "title": "CPU "high" on web-1",'
        b' "service": {"id": "P1"}}}'
    )
    parsed = parse_json_body(body)
    assert parsed.repaired is True
    assert parsed.document["incident"]["title"] == 'CPU "high" on web-1'
    assert parsed.document["incident"]["service"] == {"id": "P1"}


@pytest.mark.parametrize(
    ("body", "line", "column"),
    [
        (b'{"alert_id": "1", "action": "triggered"', 1, 40),  # cut short: nothing is closed
        (b'{"alert_id": 1,\n "action": triggered}', 2, 12),  # a bare word: not a string
        (b"{'alert_id': '1'}", 1, 2),  # Python, not JSON
        (b'{"alert_id": "1"} and more', 1, 19),
        (b"hello", 1, 1),
        (b'["a" "b"]', 1, 6),  # a missing comma is not a quote in a value
    ],
)
def test_anything_else_is_refused_naming_line_and_column(
    body: bytes, line: int, column: int
) -> None:
    with pytest.raises(MalformedBody) as refused:
        parse_json_body(body)
    assert (refused.value.line, refused.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(refused.value)


def test_a_value_that_reads_as_a_field_just_as_well_is_refused_not_guessed() -> None:
    # Given a message that could be text, or could end at "x" and make the next field "metric"
    body = coscale_body(MSG='x", "metric": "injected', METRIC='real "one"')
    # When read from its start and from its end the readings differ: refused, nothing guessed
    with pytest.raises(MalformedBody, match="ambiguous"):
        parse_json_body(body)


def test_a_value_that_reads_as_a_new_field_is_what_no_reader_can_tell() -> None:
    # A field the Format does not have: a valid JSON body, read as JSON (README, Hostile input)
    body = coscale_body(MSG='x", "service_id": "PEVIL')
    parsed = parse_json_body(body)
    assert (parsed.document["message"], parsed.document["service_id"]) == ("x", "PEVIL")


@pytest.mark.parametrize(
    "body",
    [b"", b"   \n", b"[" * 100_000, b'{"a": "\xff\xfe"}', b"\x00\x01", b"[1, 2]" + b'"'],
)
def test_empty_deep_or_undecodable_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        parse_json_body(body)


def test_a_json_array_is_not_repaired_into_a_document() -> None:
    # Valid JSON is read as it is (the model refuses it later, 422); a broken array is refused.
    assert parse_json_body(b"[1, 2]").document == [1, 2]
    with pytest.raises(MalformedBody, match="object was expected"):
        parse_json_body(b'["a "b" c"]')


def test_a_body_built_to_make_the_reader_branch_is_refused_quickly() -> None:
    # Given an array of 5,000 `", "`: 2^5000 ways to split it, none of which ends well
    text = '["' + '", "' * 5_000 + "x]"
    work = RepairWork()
    with pytest.raises(Unreadable):
        read_unescaped(text, work=work)
    # Then the search stops at its budget
    assert work.steps <= READ_BUDGET + 1
    assert work.characters <= WORK_PER_CHARACTER * len(text) + WORK_BASE + len(text)


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.pagerduty+json;version=2", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("text/json+html", False),
        ("", False),
    ],
)
def test_json_media_types(content_type: str, is_json: bool) -> None:
    assert is_json_media_type(content_type) is is_json


# -- properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"alert_id": "1", "metric": "y" "app": "x", "action": "triggered"}',
        b'{"alert_id": "1",\n "metric": "y"\n "app": "x"}',
        b'{"alert_id": "1", "metric": "y""app": "x"}',
        # with a repair needed elsewhere in the body too
        b'{"message": "said "hi"", "metric": "y" "app": "x"}',
    ],
)
def test_a_missing_comma_is_refused_not_read_as_a_value_swallowing_the_next(body: bytes) -> None:
    # Given a Format whose author forgot a comma between two members
    strict = None
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        strict = exc
    assert strict is not None
    # When read, it is refused, naming the member the comma should precede
    with pytest.raises(MalformedBody, match="comma is missing before the member 'app'") as refused:
        parse_json_body(body)
    text = body.decode()
    at = text.index('"app"')
    line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
    assert (refused.value.line, refused.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(refused.value)


def test_a_value_holding_a_members_shape_whose_member_is_there_is_text() -> None:
    # The object has a real "metric": the one in the message is the message's text
    body = b'{"message": "Error "foo" "metric": z", "metric": "cpu"}'
    parsed = parse_json_body(body)
    assert parsed.document == {"message": 'Error "foo" "metric": z', "metric": "cpu"}


_PLAIN = st.text(alphabet=st.characters(exclude_characters='"\\'), max_size=8)


@settings(max_examples=200)
@given(
    members=st.dictionaries(
        st.text(alphabet="abcdefgh_", min_size=1, max_size=6), _PLAIN, min_size=2, max_size=5
    ),
    data=st.data(),
)
def test_property_a_comma_dropped_between_string_members_is_refused(
    members: dict[str, str], data: st.DataObject
) -> None:
    # Given a valid object of string members, with one comma between members dropped
    names = list(members)
    dropped = data.draw(st.integers(min_value=1, max_value=len(names) - 1))
    parts = [json.dumps({name: members[name]})[1:-1] for name in names]
    body = "{" + ", ".join(parts[:dropped]) + " " + ", ".join(parts[dropped:]) + "}"
    # Then it is refused: no value swallows the member after it
    with pytest.raises(MalformedBody):
        parse_json_body(body.encode())


# Characters CoScale values hold that matter to JSON, and plain ones.
TRICKY = st.text(alphabet=st.sampled_from(list('ab "\\\n\t\r/:,{}[]é€😀')), max_size=16)
# What no reader can tell from a field (module docstring): a quote followed by a comma or colon
# (a value that reads as more fields), and a valid JSON escape (it reads as the escape).
_UNREADABLE = re.compile(r'"\s*[,:]|\\(["\\/bfnrtu])')


def _meant_unambiguously(value: str) -> bool:
    return _UNREADABLE.search(value) is None


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much])
@given(message=TRICKY, metric=TRICKY, subject=TRICKY)
def test_property_every_value_without_an_ambiguity_is_read_back_exactly(
    message: str, metric: str, subject: str
) -> None:
    # Given values free of the two things no reader can tell, pasted into the Format
    values = {"MSG": message, "METRIC": metric, "SUBJECT": subject}
    for value in values.values():
        if not _meant_unambiguously(value):
            return
    body = coscale_body(**values)

    # When read
    parsed = parse_json_body(body)

    # Then every field is exactly what was pasted, repaired exactly when JSON refused the body
    assert parsed.document == intended(**values)
    try:
        json.loads(body)
    except json.JSONDecodeError:
        assert parsed.repaired is True
    else:
        assert parsed.repaired is False


@settings(max_examples=400)
@given(message=TRICKY, metric=TRICKY)
def test_property_any_pasted_value_is_read_or_refused_never_an_error(
    message: str, metric: str
) -> None:
    # Any values at all: the reader answers a document or MalformedBody, nothing else
    try:
        parsed = parse_json_body(coscale_body(MSG=message, METRIC=metric))
    except MalformedBody:
        return
    assert isinstance(parsed.document, dict)


@settings(max_examples=300)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_property_any_bytes_are_read_or_refused_never_an_error(raw: bytes) -> None:
    # MalformedBody or a document; any other exception fails the test
    with contextlib.suppress(MalformedBody):
        parse_json_body(raw)


# Strings without quotes or backslashes: there the relaxed reading has nothing to relax. (With
# them it may differ from strict JSON on valid JSON: `\"` is first read as a backslash before
# the closing quote, as CoScale, which never escapes, would mean it. It only ever reads bodies
# strict JSON refused.)
_STRINGS = st.text(alphabet=st.characters(exclude_characters='"\\'), max_size=8)


@settings(max_examples=300)
@given(
    document=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | _STRINGS,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(_STRINGS, children, max_size=3)
        ),
        max_leaves=12,
    ),
    indent=st.sampled_from([None, 0, 2]),
)
def test_property_the_relaxed_reading_keeps_jsons_structure(
    document: object, indent: int | None
) -> None:
    text = json.dumps(document, ensure_ascii=False, indent=indent)
    assert read_unescaped(text) == json.loads(text)


# -- bounded work: no body under the size limit makes the repair slow ---------------------------

LIMIT = 256 * 1024  # PAGERBRIDGE_MAX_BODY_BYTES' default


def _adversarial(size: int) -> dict[str, str]:
    """Bodies built to make the relaxed reading branch or rescan, each ``size`` characters."""
    half = size // 2
    return {
        "long name, then quotes": '{"' + "a" * half + "\x01" + '"' * (size - half - 3),
        "long value, then quotes": '{"m": "' + "a" * half + "\x01" + '"' * (size - half - 8) + "}",
        "quote-commas": '{"m": "' + "a\x01" + '","' * ((size - 10) // 3) + "}",
        "nested quotes": "[" + '"\x01",' * ((size - 2) // 5) + "]",
        "members": '{"m": "' + '\x01", "x": "' * ((size - 8) // 10) + '"}',
        "digits": '{"m": "\x01", "n": ' + "9" * (size - 20) + "}",
    }


@pytest.mark.parametrize("name", sorted(_adversarial(64)))
def test_the_repair_work_is_linear_in_the_body_at_the_size_limit(name: str) -> None:
    text = _adversarial(LIMIT)[name]
    work = RepairWork()
    with contextlib.suppress(Unreadable):
        read_unescaped(text, work=work)
    # Both directions together: characters scanned within the budget's linear bound, steps
    # within the step budget.
    assert work.characters <= 2 * (WORK_PER_CHARACTER * len(text) + WORK_BASE) + 2 * len(text)
    assert work.steps <= 2 * (READ_BUDGET + 1)


@pytest.mark.parametrize("name", sorted(_adversarial(64)))
def test_the_repair_work_grows_no_faster_than_the_body(name: str) -> None:
    def cost(size: int) -> int:
        work = RepairWork()
        with contextlib.suppress(Unreadable):
            read_unescaped(_adversarial(size)[name], work=work)
        return work.characters + work.steps

    small, large = cost(4096), cost(4 * 4096)
    assert large <= 4 * small + 2 * WORK_BASE


def test_a_legitimate_repair_is_well_within_the_budget() -> None:
    message = 'he said "stop" \\ now\n' * 2000
    text = '{"alert_id": "1", "action": "triggered", "message": "' + message + '"}'
    work = RepairWork()
    assert read_unescaped(text, work=work)["message"] == message
    assert work.characters < WORK_PER_CHARACTER * len(text) // 4


def test_a_huge_integer_is_a_malformed_body_not_a_crash() -> None:
    with pytest.raises(MalformedBody, match="cannot be read"):
        parse_json_body(b'{"n": ' + b"1" * 4301 + b"}")
