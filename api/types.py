"""Input types shared by the routes."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field


def _storable(value: str) -> str:
    """PostgreSQL text holds no NUL, and UTF-8 has no lone surrogates (JSON can carry both)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


# Any free text that reaches the database.
Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Note = Annotated[str, Field(max_length=2000), AfterValidator(_storable)]
