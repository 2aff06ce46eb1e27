"""Hypothesis against the payload decoder: hostile JSON is refused with a reason, never lost.

The documents are written out by hand (not by ``json.dumps`` of a dict) so that they can hold
what a dict cannot: a member name twice in one object, the same name spelt with and without
escapes, lone surrogates, ``NaN``/``Infinity`` literals, integers beyond a double and deep
nesting. The generator knows what it wrote, so it is the oracle: a payload with a repeated
member must be refused as ``duplicate_member``; any other must have every entry of its readings
array come out once, as a reading or as a reading error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.payload import DecodedPayload, PayloadError, decode_payload


@dataclass(frozen=True)
class Node:
    """A JSON value as written: ``text`` is its JSON, ``duplicates`` whether any object in it
    names a member twice (after unescaping: "\\u0061" and "a" are the same name)."""

    text: str
    duplicates: bool


def _string(value: str) -> str:
    # json.dumps writes lone surrogates as \\udXXX escapes, which is what a hostile sender does.
    return json.dumps(value)


def _escaped_first(name: str) -> str:
    """``name`` as a JSON string with its first character escaped: another spelling only."""
    first = name[0]
    escaped = f"\\u{ord(first):04x}" if ord(first) < 0x80 else json.dumps(first)[1:-1]
    return '"' + escaped + json.dumps(name[1:])[1:]


def _obj(pairs: list[tuple[str, Node]], *, escape_first: bool = False) -> Node:
    names = [name for name, _ in pairs]
    written = []
    for position, (name, node) in enumerate(pairs):
        key = _escaped_first(name) if escape_first and position == 0 and name else _string(name)
        written.append(f"{key}: {node.text}")
    return Node(
        "{" + ", ".join(written) + "}",
        len(set(names)) != len(names) or any(node.duplicates for _, node in pairs),
    )


def _arr(items: list[Node]) -> Node:
    return Node("[" + ", ".join(i.text for i in items) + "]", any(i.duplicates for i in items))


_LITERALS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "1e-999",
        "123456789012345678901234567890",
        "-18446744073709551617",
        "9007199254740993",
        "0.1",
        "-0",
        "true",
        "false",
        "null",
    ]
)
_TEXT = st.one_of(
    st.text(max_size=12),
    # Lone and paired surrogates, NUL and a colon (the duplicate check counts colons).
    st.sampled_from(["\ud800", "\udfff", "\ud83d\ude00", "\x00", "a:b", "2026-11-24T09:00:00Z"]),
)
_SCALAR = st.one_of(
    _LITERALS.map(lambda t: Node(t, False)),
    _TEXT.map(lambda s: Node(_string(s), False)),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda i: Node(str(i), False)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Node(repr(f), False)),
    st.integers(min_value=0, max_value=2**45).map(lambda i: Node(str(i), False)),
)
# Few names, so that repeats are common; the contract's own names among them.
_NAMES = st.sampled_from(["metric", "value", "unit", "time", "id", "systolic", "x", "a:b", "é"])


def _values(leaf: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(_arr),
            st.lists(st.tuples(_NAMES, inner), max_size=4).map(_obj),
        ),
        max_leaves=8,
    )


@st.composite
def _reading(draw: st.DrawFn) -> Node:
    """Mostly a plausible reading, with members replaced, added or repeated."""
    pairs: list[tuple[str, Node]] = [
        (
            "metric",
            Node(_string(draw(st.sampled_from(["spo2", "8867-4", "blood_pressure"]))), False),
        ),
        ("value", draw(st.one_of(_SCALAR, st.just(Node("97.5", False))))),
        ("unit", Node(_string(draw(st.sampled_from(["%", "/min", "mm[Hg]"]))), False)),
        ("time", Node(_string("2026-11-24T09:00:00Z"), False)),
    ]
    pairs += draw(st.lists(st.tuples(_NAMES, _values(_SCALAR)), max_size=3))
    order = draw(st.permutations(range(len(pairs))))
    return _obj([pairs[i] for i in order], escape_first=draw(st.booleans()))


@st.composite
def hostile_payloads(draw: st.DrawFn) -> tuple[bytes, Node, int | None]:
    """(bytes, the document, entries of the readings array that the sender meant, if any)."""
    readings = draw(st.lists(st.one_of(_reading(), _values(_SCALAR)), min_size=1, max_size=6))
    array = _arr(readings)
    pairs: list[tuple[str, Node]] = [("readings", array)]
    if draw(st.booleans()):
        # A second readings array: the case that once stored 2 of 3 readings silently.
        pairs.append(("readings", _arr(draw(st.lists(_reading(), min_size=1, max_size=3)))))
    pairs += draw(st.lists(st.tuples(st.sampled_from(["device", "x", "meta"]), _values(_SCALAR))))
    order = draw(st.permutations(range(len(pairs))))
    document = _obj([pairs[i] for i in order], escape_first=draw(st.booleans()))
    return document.text.encode("utf-8", "surrogatepass"), document, len(readings)


def _accounted(decoded: DecodedPayload, entries: int) -> None:
    """Every entry of the readings array comes out exactly once."""
    indexes = sorted([int(i) for i in decoded.columns.index] + [e.index for e in decoded.errors])
    assert indexes == list(range(entries))
    assert decoded.reading_count == entries


_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(hostile_payloads())
@_SETTINGS
def test_a_repeated_member_is_refused_whole_and_nothing_else_is_lost(
    case: tuple[bytes, Node, int | None],
) -> None:
    raw, document, entries = case
    try:
        decoded = decode_payload(raw)
    except PayloadError as exc:
        if document.duplicates:
            assert exc.reason == "duplicate_member", exc
        else:
            # Only the envelope can fail a payload without repeats (this generator writes
            # UTF-8 JSON of a readings array, so never malformed_json).
            assert exc.reason == "invalid_payload", exc
        return
    assert not document.duplicates, "a payload with a repeated member was read one way"
    assert entries is not None
    _accounted(decoded, entries)


@given(_values(_SCALAR), st.booleans())
@_SETTINGS
def test_any_json_value_is_decoded_or_refused_with_a_reason(value: Node, wrap: bool) -> None:
    """Arbitrary documents (not only readings payloads): never an exception of another kind."""
    text = '{"readings": [' + value.text + "]}" if wrap else value.text
    try:
        decoded = decode_payload(text.encode("utf-8", "surrogatepass"))
    except PayloadError as exc:
        # Always valid JSON here: refused only as ambiguous, or (unwrapped) as no payload.
        assert (exc.reason == "duplicate_member") == value.duplicates, exc
        assert exc.reason in {"duplicate_member", "invalid_payload"}, exc
        return
    assert wrap and not value.duplicates
    _accounted(decoded, 1)


@given(st.integers(min_value=1, max_value=5000), st.sampled_from(["[", '{"a": ']), st.booleans())
@settings(max_examples=60, deadline=None)
def test_deep_nesting_is_refused_or_read_never_a_crash(
    depth: int, opener: str, repeat: bool
) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    member = '"x": ' + nested
    reading = '{"metric": "spo2", "value": 97, "unit": "%", "time": 0, ' + member
    reading += (', "x": 2' if repeat else "") + "}"
    try:
        decoded = decode_payload(('{"readings": [' + reading + "]}").encode())
    except PayloadError as exc:
        # Too deep for the parser (malformed_json) or, when read, the repeated member.
        assert exc.reason in {"malformed_json", "duplicate_member"}
        assert exc.reason == "malformed_json" or repeat
        return
    assert not repeat
    _accounted(decoded, 1)


@given(st.text(), st.integers(min_value=0, max_value=3))
@_SETTINGS
def test_surrogates_and_escapes_in_names_are_the_names_they_spell(name: str, copies: int) -> None:
    """A name spelt differently each time (escaped or not) is still the same name."""
    pairs = []
    for copy in range(copies + 1):
        key = _escaped_first(name) if copy % 2 and name else _string(name)
        pairs.append(f"{key}: {copy}")
    reading = '{"metric": "spo2", "value": 97, "unit": "%", "time": 0, ' + ", ".join(pairs) + "}"
    raw = ('{"readings": [' + reading + "]}").encode("utf-8", "surrogatepass")
    clashes = copies > 0 or name in {"metric", "value", "unit", "time"}
    try:
        decoded = decode_payload(raw)
    except PayloadError as exc:
        assert exc.reason == "duplicate_member" and clashes, exc
        return
    assert not clashes
    _accounted(decoded, 1)
