"""A request's JSON body: read strictly, and repaired when CoScale's unescaped placeholders broke
it.

CoScale pastes placeholder values into the Format without escaping them (docs/coscale.md): a message
holding a double quote, a backslash or a newline turns the Format's JSON into invalid JSON. The
happy path pays nothing for that: ``json.loads``, and that is all. Only a body it refuses is
read a second time, by :func:`read_unescaped`, under one relaxation: inside a string *value*, a
``"``, a ``\\`` and control characters may stand for themselves. Everything else (brackets,
colons, commas, numbers, ``true``/``false``/``null``, and names, which the Format's author wrote,
not CoScale) must be exact JSON: nothing is guessed, nothing closed, nothing dropped.

Under that relaxation a body can have several readings: in ``"message": "he said "hi", then
left", "app": "shop"`` the message could end after ``hi`` if the rest then parsed (it does not),
or swallow ``", "app": "shop`` (it could). The repair takes a reading only when it is *the same
read from either end*:

- from the start, each value ends at the first double quote after which the rest of the body
  still parses (a value never swallows what can stand as fields after it);
- from the end, each value starts at the last double quote before which the rest still parses;

and refuses the body (400) when the two differ, which is when a value holds text that reads as
fields just as well (``x", "metric": "y`` next to a real ``"metric"``). A name twice in one
object is no reading. Inside a value a valid JSON escape (``\\n``, ``\\"``, ``\\u00e9``) reads
as that escape, anything else as itself.

A comma forgotten between two members (``"metric": "y" "app": "x"``) would read as one value
swallowing the next member (``metric`` = ``y" "app": "x``). So a value may not hold a raw
double quote followed by what reads as a member's start (a strict name and a colon:
``" "app":``) when that name is not a member of the same object: the body is refused, naming
where the comma is missing. A value that holds such text *and* whose name is a member too is
left as text (that member is there, so the text is not it).

What no reader can tell: a value holding ``", "name": "`` with a name the body does not have
reads as one more field (that body is even valid JSON), and a value holding a valid escape reads
as the escape.

Why not json-repair (a PyPI package for broken JSON): tried, its heuristics read
values holding a newline and brackets as one string swallowing the next fields, and refused
values such as a lone ``"``; a reader with a stated rule can be tested against CoScale's Format.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Work allowed to the relaxed reading, so that no body can make it slow: steps (a token, or a
# candidate end of a string) and characters scanned (every search, slice and match counts its
# length), the latter proportional to the body. Far more than CoScale's Format needs, a stop
# for a body built to make the search branch or rescan.
READ_BUDGET = 200_000
WORK_PER_CHARACTER = 32
WORK_BASE = 65_536
# A wall-clock stop as well, checked every few thousand steps: the budget bounds the work, this
# bounds what a slow or busy machine makes of it.
REPAIR_DEADLINE = 2.0
_DEADLINE_EVERY = 4096
_WHITESPACE_RUN = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A strict JSON string: what a name must be (the Format's author wrote it, not CoScale).
_STRICT_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
# Inside a value: a double quote, then a member's start (a strict name and its colon), the
# shape of a value's end with the comma after it forgotten.
_MEMBER_AFTER_QUOTE = re.compile(
    r'"[ \t\n\r]*("(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")[ \t\n\r]*:'
)
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


class MalformedBody(ValueError):
    """A body that is not JSON and could not be repaired; ``line`` and ``column`` (from 1) say
    where strict JSON failed, when known."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class ParsedBody:
    document: Any
    repaired: bool = False


@dataclass(slots=True)
class RepairWork:
    """What one relaxed reading cost: steps taken and characters scanned (both directions)."""

    steps: int = 0
    characters: int = 0
    deadline: float | None = field(default=None, repr=False)

    def limit(self, text_length: int) -> int:
        """The characters a text of ``text_length`` may cost, per direction."""
        return WORK_PER_CHARACTER * text_length + WORK_BASE


def is_json_media_type(content_type: str) -> bool:
    """``application/json``, or a ``+json`` type (``application/vnd.pagerduty+json``), any
    parameters."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def parse_json_body(raw: bytes, *, deadline: float | None = None) -> ParsedBody:
    """The JSON document in ``raw``; read with :func:`read_unescaped` (``repaired``) only when
    strict JSON refuses it, and then only if it is an object. Raises :class:`MalformedBody`.

    ``deadline`` (a :func:`time.monotonic` instant) stops the repair when passed."""
    strict = parse_strict(raw)
    if isinstance(strict, ParsedBody):
        return strict
    return repair_body(raw, strict, deadline=deadline)


def parse_strict(raw: bytes) -> ParsedBody | json.JSONDecodeError:
    """``raw`` as strict JSON, or the failure that sends it to :func:`repair_body`. Raises
    :class:`MalformedBody` for what no repair can help (empty, not UTF-8, nested too deeply,
    a number Python refuses to read)."""
    if not raw.strip():
        raise MalformedBody("the body is empty: a JSON object was expected")
    try:
        return ParsedBody(json.loads(raw))
    except json.JSONDecodeError as exc:
        return exc
    except UnicodeDecodeError as exc:
        raise MalformedBody(
            f"the body is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except RecursionError:
        raise MalformedBody("the body nests arrays or objects too deeply") from None
    except ValueError as exc:
        # CPython refuses integers of more than 4,300 digits (sys.set_int_max_str_digits):
        # https://docs.python.org/3/library/stdtypes.html#int-max-str-digits
        raise MalformedBody(f"the body holds a value that cannot be read: {exc}") from None


def repair_body(
    raw: bytes, failure: json.JSONDecodeError, *, deadline: float | None = None
) -> ParsedBody:
    """The relaxed reading of a body strict JSON refused with ``failure``. Its work is bounded
    (:class:`RepairWork`), so it may run anywhere; the ingress runs it off the event loop."""
    where = f"line {failure.lineno}, column {failure.colno}"
    try:
        document = read_unescaped(
            raw.decode(json.detect_encoding(raw)), work=RepairWork(deadline=deadline)
        )
    except MissingComma as exc:
        raise MalformedBody(
            f"invalid JSON at line {exc.line}, column {exc.column}: {exc}",
            line=exc.line,
            column=exc.column,
        ) from None
    except Unreadable as exc:
        raise MalformedBody(
            f"invalid JSON at {where}: {failure.msg}; not repaired: {exc}",
            line=failure.lineno,
            column=failure.colno,
        ) from None
    except UnicodeDecodeError:  # json.loads read it, so it decodes; kept for safety
        raise MalformedBody(f"invalid JSON at {where}: {failure.msg}") from None
    if not isinstance(document, dict):
        raise MalformedBody(
            f"invalid JSON at {where}: {failure.msg}; a JSON object was expected",
            line=failure.lineno,
            column=failure.colno,
        )
    return ParsedBody(document, repaired=True)


class Unreadable(ValueError):
    """Not even the relaxed reading makes a document of the text."""


class MissingComma(Unreadable):
    """The only reading has a value swallowing the next member: a comma is missing before it,
    at ``line`` and ``column`` (from 1) of the text."""

    def __init__(self, message: str, *, line: int, column: int) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


# -- the relaxed reading ---------------------------------------------------------------------

# What the reader expects next. In an object a member is (name, ":", value) read forwards and
# (value, ":", name) read backwards: PART1 and PART2 are its first and last part.
_VALUE, _FIRST_ITEM, _FIRST_MEMBER, _PART1, _COLON, _PART2, _AFTER_MEMBER, _END = range(8)
_ROOT, _OBJECT, _ARRAY = range(3)
# Backwards, the text is reversed and its brackets swapped, so the same grammar reads it.
_SWAP_BRACKETS = str.maketrans("{}[]", "}{][")
_NUMBER_CHARS = re.compile(r"[-+.eE0-9]+")


class _Frame(NamedTuple):
    """An open container (or the root), immutable so that a backtrack can return to it.
    ``members`` is a linked list, newest first: ``(member, older)``; ``pending`` is the first
    part of the member being read."""

    kind: int
    members: tuple[Any, Any] | None
    pending: Any
    parent: _Frame | None


class _Value:
    """A string value's place in the text: between the quotes at ``start`` and ``end``."""

    __slots__ = ("end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end


class _State(NamedTuple):
    at: int
    expect: int
    frame: _Frame


class _Choice(NamedTuple):
    """A value whose end was chosen: the state at its opening quote, and where to look for
    its next possible end if the one chosen leads nowhere."""

    state: _State
    search_from: int


def read_unescaped(text: str, *, work: RepairWork | None = None) -> Any:
    """The document ``text`` holds, as JSON whose string values may hold raw ``"``, ``\\`` and
    control characters, read the same from either end (see the module's docstring). Raises
    :class:`Unreadable`, also when the reading would cost more than its budget; ``work``
    receives what it cost."""
    work = work if work is not None else RepairWork()
    forwards = _Reader(text, backwards=False, work=work).read()
    backwards = _Reader(text[::-1].translate(_SWAP_BRACKETS), backwards=True, work=work).read()
    if forwards != backwards:
        raise Unreadable("a value reads as fields just as well (ambiguous)")
    return forwards


class _Reader:
    """Reads the text from its start, or (``backwards``) the mirrored text from its end."""

    def __init__(self, text: str, *, backwards: bool, work: RepairWork) -> None:
        self.text = text
        self.backwards = backwards
        self.work = work
        self.steps = 0
        self.characters = 0
        self.character_limit = work.limit(len(text))
        self.choices: list[_Choice] = []

    def read(self) -> Any:
        state: _State | None = _State(0, _VALUE, _Frame(_ROOT, None, None, None))
        while True:
            self._tick()
            if state is None:
                state = self._backtrack()
            elif state.expect == _END:
                if self._space(state.at) == len(self.text):
                    return self._text_of(state.frame.members)
                state = None
            else:
                state = self._step(state)

    def _tick(self, characters: int = 0) -> None:
        """Count one step that scanned ``characters``; stop past the budget or the deadline."""
        self.steps += 1
        self.characters += characters
        self.work.steps += 1
        self.work.characters += characters
        if self.steps > READ_BUDGET or self.characters > self.character_limit:
            raise Unreadable("too many possible readings")
        deadline = self.work.deadline
        if (
            deadline is not None
            and self.steps % _DEADLINE_EVERY == 0
            and time.monotonic() > deadline
        ):
            raise Unreadable("the repair took too long")

    def _space(self, at: int) -> int:
        match = _WHITESPACE_RUN.match(self.text, at)
        assert match is not None  # the pattern matches the empty string
        self.characters += match.end() - at
        return match.end()

    def _is_name(self, expect: int) -> bool:
        """Whether a string expected now is a member's name."""
        return expect == (_PART2 if self.backwards else _PART1) or (
            expect == _FIRST_MEMBER and not self.backwards
        )

    def _step(self, state: _State) -> _State | None:
        """The state after the next token, or ``None`` when the text cannot go on from here."""
        text, frame, expect = self.text, state.frame, state.expect
        at = self._space(state.at)
        if at >= len(text):
            return None
        char = text[at]
        if expect == _COLON:
            return _State(at + 1, _PART2, frame) if char == ":" else None
        if expect == _AFTER_MEMBER:
            if char == ",":
                return _State(at + 1, _PART1 if frame.kind == _OBJECT else _VALUE, frame)
            closing = "}" if frame.kind == _OBJECT else "]"
            return self._close(at + 1, frame) if char == closing else None
        if (expect == _FIRST_MEMBER and char == "}") or (expect == _FIRST_ITEM and char == "]"):
            return self._close(at + 1, frame)
        if self._is_name(expect):
            return self._name(state, at) if char == '"' else None
        # a value
        if char == "{":
            return _State(at + 1, _FIRST_MEMBER, _Frame(_OBJECT, None, None, frame))
        if char == "[":
            return _State(at + 1, _FIRST_ITEM, _Frame(_ARRAY, None, None, frame))
        if char == '"':
            return self._string(state, at, at + 1)
        return self._scalar(at, state)

    def _scalar(self, at: int, state: _State) -> _State | None:
        text = self.text
        for literal, value in _LITERALS.items():
            spelled = literal[::-1] if self.backwards else literal
            if text.startswith(spelled, at):
                return self._completed(value, at + len(spelled), state)
        token = (_NUMBER_CHARS if self.backwards else _NUMBER).match(text, at)
        if token is None:
            return None
        self._tick(2 * len(token.group()))
        number = token.group()[::-1] if self.backwards else token.group()
        if not _NUMBER.fullmatch(number):
            return None
        try:
            value = json.loads(number)
        except ValueError:  # more digits than CPython reads (int_max_str_digits)
            return None
        return self._completed(value, token.end(), state)

    def _text_of(self, node: Any) -> Any:
        """The document with every value's place replaced by its text."""
        if isinstance(node, _Value):
            return _decode(self._span(node.start, node.end))
        if isinstance(node, dict):
            if not self.backwards:  # both readings are the same: one checks
                for value in node.values():
                    if isinstance(value, _Value):
                        self._refuse_a_swallowed_member(value, node)
            return {name: self._text_of(value) for name, value in node.items()}
        if isinstance(node, list):
            return [self._text_of(item) for item in node]
        return node

    def _refuse_a_swallowed_member(self, value: _Value, names: dict[str, Any]) -> None:
        """Raise :class:`MissingComma` if ``value`` holds a raw quote followed by the start of
        a member that its object (``names``) does not have."""
        text = self.text
        self._tick(value.end - value.start)
        for found in _MEMBER_AFTER_QUOTE.finditer(text, value.start + 1, value.end):
            quote = found.start()
            backslashes = len(text[value.start + 1 : quote]) - len(
                text[value.start + 1 : quote].rstrip("\\")
            )
            if backslashes % 2:
                continue  # an escaped quote (\"), not one standing for itself
            name = json.loads(found.group(1))
            if name in names:
                continue
            comma = found.start(1)  # where the member the comma should precede begins
            line = text.count("\n", 0, comma) + 1
            column = comma - text.rfind("\n", 0, comma)
            raise MissingComma(
                f"a comma is missing before the member {name!r}: read without it, the value "
                "before would swallow it",
                line=line,
                column=column,
            )

    def _span(self, start: int, end: int) -> str:
        """The text between two quotes, as it reads forwards."""
        span = self.text[start + 1 : end]
        return span[::-1].translate(_SWAP_BRACKETS) if self.backwards else span

    def _name(self, state: _State, start: int) -> _State | None:
        """A member's name: strict JSON, so it has one end (no choice to come back to)."""
        end = self.text.find('"', start + 1)
        while end != -1:
            # The search, the slice and the match each cover the name so far.
            self._tick(3 * (end - start))
            name = '"' + self._span(start, end) + '"'
            if _STRICT_STRING.fullmatch(name):
                return self._completed(json.loads(name), end + 1, state)
            end = self.text.find('"', end + 1)
        return None

    def _string(self, state: _State, start: int, search_from: int) -> _State | None:
        """The first possible end of the value opened at ``start``, at or after
        ``search_from``: a double quote followed by what may follow this value here."""
        text, kind = self.text, state.frame.kind
        if kind == _ROOT:
            followers = ""
        elif kind == _ARRAY:
            followers = ",]"
        else:
            followers = ":" if self.backwards else ",}"
        end = text.find('"', search_from)
        scanned_from = search_from
        while end != -1:
            self._tick(end + 1 - scanned_from)
            scanned_from = end + 1
            after = self._space(end + 1)
            if followers:
                fits = after < len(text) and text[after] in followers
            else:
                fits = after == len(text)
            if fits:
                # Where the value lies, not its text: a value is sliced and decoded once, when
                # the reading is complete, so trying many ends never copies it many times.
                self.choices.append(_Choice(state, end + 1))
                return self._completed(_Value(start, end), end + 1, state)
            end = text.find('"', end + 1)
        if scanned_from < len(text):
            self._tick(len(text) - scanned_from)  # the search that found no more quotes
        return None

    def _backtrack(self) -> _State:
        while self.choices:
            choice = self.choices.pop()
            start = self._space(choice.state.at)
            state = self._string(choice.state, start, choice.search_from)
            if state is not None:
                return state
        raise Unreadable("no reading makes a JSON document of it")

    def _completed(self, value: Any, at: int, state: _State) -> _State:
        """The state after a value or name ``value`` that ends at ``at``."""
        frame = state.frame
        if frame.kind == _ROOT:
            return _State(at, _END, frame._replace(members=value))
        if frame.kind == _ARRAY:
            return _State(at, _AFTER_MEMBER, frame._replace(members=(value, frame.members)))
        if state.expect in (_FIRST_MEMBER, _PART1):
            return _State(at, _COLON, frame._replace(pending=value))
        name, value = (value, frame.pending) if self.backwards else (frame.pending, value)
        member = (name, value)
        return _State(
            at, _AFTER_MEMBER, frame._replace(members=(member, frame.members), pending=None)
        )

    def _close(self, at: int, frame: _Frame) -> _State | None:
        members: list[Any] = []
        node = frame.members
        while node is not None:
            members.append(node[0])
            node = node[1]
        if not self.backwards:  # newest first; read backwards, the newest is the first
            members.reverse()
        assert frame.parent is not None  # the root is never closed
        if frame.kind == _ARRAY:
            return self._completed(members, at, self._expecting(frame.parent))
        document = dict(members)
        if len(document) != len(members):
            return None  # a name twice is no reading
        return self._completed(document, at, self._expecting(frame.parent))

    def _expecting(self, frame: _Frame) -> _State:
        """A state in ``frame`` that expects a value (how the closed container was opened)."""
        if frame.kind == _OBJECT:
            return _State(0, _PART1 if self.backwards else _PART2, frame)
        return _State(0, _VALUE, frame)


def _decode(raw: str) -> str:
    """A string's text: valid JSON escapes decoded, every other character as itself."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    at = 0
    while at < len(raw):
        char = raw[at]
        if char == "\\" and at + 1 < len(raw):
            kind = raw[at + 1]
            if kind in _ESCAPES:
                out.append(_ESCAPES[kind])
                at += 2
                continue
            unit = _hex(raw[at + 2 : at + 6]) if kind == "u" else None
            if unit is not None:
                low = _hex(raw[at + 8 : at + 12]) if raw.startswith("\\u", at + 6) else None
                if 0xD800 <= unit < 0xDC00 and low is not None and 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                    at += 12
                else:
                    out.append(chr(unit))
                    at += 6
                continue
        out.append(char)
        at += 1
    return "".join(out)


def _hex(digits: str) -> int | None:
    if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        return None
    return int(digits, 16)
