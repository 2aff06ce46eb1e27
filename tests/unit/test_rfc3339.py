"""The vectorised RFC 3339 parser agrees with the per-reading parser on every string it
accepts, and accepts the common shapes whenever the per-reading parser does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.payload import _MAX_EPOCH_US, EPOCH, MAX_UTC_OFFSET_MINUTES, _parse_time
from ingest.rfc3339 import parse_rfc3339_column


@st.composite
def date_times(draw: st.DrawFn, *, common_shape: bool = False) -> str:
    """Date-times near and beyond every field's limits, in the handled shapes (or, unless
    ``common_shape``, with other fraction lengths and stray characters)."""
    year = draw(st.sampled_from([1969, 1970, 1999, 2000, 2024, 2026, 2100, 9999]))
    month = draw(st.integers(0, 13))
    day = draw(st.integers(0, 32))
    hour, minute, second = (
        draw(st.integers(0, 24)),
        draw(st.integers(0, 60)),
        draw(st.integers(0, 60)),
    )
    fraction_lengths = [0, 3, 6] if common_shape else [0, 1, 3, 5, 6, 7]
    fraction_length = draw(st.sampled_from(fraction_lengths))
    fraction = (
        "."
        + "".join(
            draw(
                st.lists(
                    st.sampled_from("0159"), min_size=fraction_length, max_size=fraction_length
                )
            )
        )
        if fraction_length
        else ""
    )
    separator = draw(st.sampled_from("Tt "))
    zone = draw(
        st.one_of(
            st.sampled_from(["Z", "z", "+00:00", "-00:00"]),
            st.builds(
                lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 24),
                st.integers(0, 60),
            ),
        )
    )
    text = (
        f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}"
        f"{fraction}{zone}"
    )
    if not common_shape and draw(st.booleans()):
        position = draw(st.integers(0, len(text) - 1))
        text = (
            text[:position]
            + draw(st.sampled_from(["x", "٣", "-", ":", "1"]))
            + text[position + 1 :]
        )
    return text


def per_reading(text: str) -> tuple[int, int | None] | None:
    return _parse_time(text)


def vectorised(texts: list[str]) -> list[tuple[int, int | None]] | None:
    columns = parse_rfc3339_column(
        texts, max_epoch_us=_MAX_EPOCH_US, max_offset_minutes=MAX_UTC_OFFSET_MINUTES
    )
    if columns is None:
        return None
    time_us, offsets, unknown = columns
    return [
        (t, None if u else o)
        for t, o, u in zip(time_us.tolist(), offsets.tolist(), unknown.tolist(), strict=True)
    ]


@settings(max_examples=600, deadline=None)
@given(st.lists(date_times(), min_size=1, max_size=4))
def test_every_accepted_string_gets_the_per_reading_answer(texts: list[str]) -> None:
    answers = vectorised(texts)
    if answers is not None:
        assert answers == [per_reading(t) for t in texts]


@settings(max_examples=600, deadline=None)
@given(date_times(common_shape=True))
def test_the_common_shapes_are_accepted_whenever_valid(text: str) -> None:
    assert (vectorised([text]) is None) == (per_reading(text) is None)


def test_a_payload_of_one_shape_is_parsed_at_once() -> None:
    texts = [f"2026-11-24T10:{m:02d}:00.250+01:00" for m in range(60)]
    answers = vectorised(texts)
    assert answers is not None
    assert answers == [per_reading(t) for t in texts]
    nine_utc = datetime(2026, 11, 24, 9, 0, 0, 250_000, tzinfo=UTC)
    assert answers[0] == ((nine_utc - EPOCH) // timedelta(microseconds=1), 60)


def test_mixed_shapes_are_left_to_the_per_reading_parser() -> None:
    assert vectorised(["2026-11-24T10:00:00Z", "2026-11-24T10:00:00+01:00"]) is None
    assert vectorised(["2026-11-24T10:00:00.1+01:00"]) is None  # a 1-digit fraction
