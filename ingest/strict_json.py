"""JSON read strictly: an object that names one member twice is refused, never read one way.

RFC 8259 (section 4) leaves such JSON open to interpretation and ``json.loads`` keeps the last
value without a word, so every reader of untrusted JSON here (device payloads, FHIR bundles,
clinician and admin bodies) uses this one hook and decides itself how to answer the refusal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class DuplicateMemberError(Exception):
    """A member name repeats in one object.

    Not a ValueError on purpose: ``json.loads`` must let it through rather than report the
    text as malformed JSON.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: a dict, unless a member name repeats."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateMemberError(name)
            seen.add(name)
    return document


def loads_strict(text: str | bytes, *, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """``json.loads`` that raises :class:`DuplicateMemberError` for a repeated member."""
    return json.loads(text, object_pairs_hook=unique_members, parse_constant=parse_constant)


def json_type(value: object) -> str:
    """The JSON type name of a decoded value, for error messages that say what was sent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
