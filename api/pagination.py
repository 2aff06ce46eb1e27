"""Opaque keyset cursors: the sort key of the last row of a page, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any

from fastapi import HTTPException, Query, status

MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50

PageSize = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Rows per page (at most {MAX_PAGE_SIZE})")
]
Cursor = Annotated[
    str | None,
    Query(max_length=512, description="The next_cursor of the previous page"),
]


def invalid_input(location: tuple[str, ...], message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (the OpenAPI document promises it)."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [{"loc": list(location), "msg": message, "type": "value_error"}],
    )


def invalid_cursor() -> HTTPException:
    return invalid_input(("query", "cursor"), "cursor is not one this API issued")


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, default=str).encode()).decode()


def read_cursor(cursor: str, arity: int) -> list[Any] | None:
    """The sort key in ``cursor``, or None when it is not a cursor of ``arity`` parts."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        return None
    return key if isinstance(key, list) and len(key) == arity else None


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    key = read_cursor(cursor, arity)
    if key is None:
        raise invalid_cursor()
    return key
