"""The numpy binary COPY encoder against a real PostgreSQL: what it writes is what is read back.

Two proofs per case, both through a real ``COPY ... FROM STDIN (FORMAT BINARY)`` into a temp
table: PostgreSQL's own binary output of what it loaded (``COPY ... TO STDOUT``) is byte for byte
the stream we sent (row order aside: the encoder groups rows by shape), and a SELECT reads back
exactly the Python values that were encoded. (asyncpg's encoder is no reference: it writes
9999-12-31T23:59:59.999999 as 'infinity'.)
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from ingest.copy_binary import COPY_HEADER, COPY_TRAILER, Column, encode_copy

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TABLE = """
CREATE TEMP TABLE copied (
    at      timestamptz NOT NULL,
    value   double precision,
    big     bigint,
    small   smallint,
    counter integer,
    id      uuid,
    other   uuid,
    note    text
)
"""
COLUMNS = ("at", "value", "big", "small", "counter", "id", "other", "note")

Row = tuple[
    datetime, float | None, int | None, int | None, int | None, uuid.UUID, uuid.UUID, str | None
]

AT = datetime(2026, 11, 24, 9, 0, 0, 123456, tzinfo=UTC)
OTHER = uuid.UUID("0b6f2c1e-6a3d-4f5e-9b1a-2c3d4e5f6a7b")


def _us(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def _columns(rows: list[Row]) -> list[Column]:
    def nulls(position: int) -> np.ndarray:
        return np.array([r[position] is None for r in rows], dtype=np.bool_)

    def filled(position: int, dtype: str) -> np.ndarray:
        return np.array([0 if r[position] is None else r[position] for r in rows], dtype=dtype)

    return [
        Column("timestamptz", np.array([_us(r[0]) for r in rows], dtype=np.int64)),
        Column("float8", filled(1, "float64"), nulls(1)),
        Column("int8", filled(2, "int64"), nulls(2)),
        Column("int2", filled(3, "int16"), nulls(3)),
        Column("int4", filled(4, "int32"), nulls(4)),
        Column(
            "uuid",
            np.frombuffer(b"".join(r[5].bytes for r in rows), dtype=np.uint8).reshape(-1, 16),
        ),
        Column("uuid", OTHER.bytes),  # one value for every row
        Column("text", [r[7] for r in rows]),
    ]


async def _round_trip(db_url: str, rows: list[Row]) -> tuple[bytes, bytes, list[Row]]:
    """(our stream, PostgreSQL's binary COPY output of what it loaded, the rows SELECTed)."""
    stream = encode_copy(_columns(rows), len(rows))
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(TABLE)
        await conn.copy_to_table(
            "copied", source=memoryview(stream), columns=COLUMNS, format="binary"
        )
        written = bytearray()

        async def sink(chunk: bytes) -> None:
            written.extend(chunk)

        await conn.copy_from_table("copied", output=sink, columns=COLUMNS, format="binary")
        back = await conn.fetch("SELECT * FROM copied")
    finally:
        await conn.close()
    return stream, bytes(written), [tuple(r) for r in back]


def _row_set(stream: bytes) -> list[bytes]:
    """The row records of a binary COPY stream, sorted (the encoder groups rows by shape)."""
    assert stream.startswith(COPY_HEADER) and stream.endswith(COPY_TRAILER)
    body = memoryview(stream)[len(COPY_HEADER) : -len(COPY_TRAILER)]
    rows, at = [], 0
    while at < len(body):
        start = at
        count = int.from_bytes(body[at : at + 2], "big", signed=True)
        at += 2
        for _ in range(count):
            length = int.from_bytes(body[at : at + 4], "big", signed=True)
            at += 4 + max(length, 0)
        rows.append(bytes(body[start:at]))
    return sorted(rows)


CASES: dict[str, list[Row]] = {
    "plain": [(AT, 97.5, 1, 60, 7, uuid.uuid4(), OTHER, None)],
    "nulls everywhere they may be": [
        (AT, None, None, None, None, uuid.uuid4(), OTHER, None),
        (AT, 1.0, 2, 3, 4, uuid.uuid4(), OTHER, "x"),
        (AT, None, 5, None, 6, uuid.uuid4(), OTHER, None),
    ],
    "negative numbers and offsets": [
        (AT, -0.0, -(2**63), -1080, -(2**31), uuid.uuid4(), OTHER, None),
        (AT, -1e-300, -1, -330, -1, uuid.uuid4(), OTHER, "neg"),
        (AT, 1.7976931348623157e308, 2**63 - 1, 1080, 2**31 - 1, uuid.uuid4(), OTHER, ""),
    ],
    "times before 2000 and before 1970": [
        (at, 1.0, 1, 1, 1, uuid.uuid4(), OTHER, None)
        for at in (
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        )
    ],
    "unicode and varied text lengths": [
        (AT, 1.0, 1, 1, 1, uuid.uuid4(), OTHER, "ünïcode"),
        (AT, 2.0, 2, 2, 2, uuid.uuid4(), OTHER, "日本語:systolic"),
        (AT, 3.0, 3, 3, 3, uuid.uuid4(), OTHER, "emoji 🫀"),
        (AT, 4.0, 4, 4, 4, uuid.uuid4(), OTHER, "x" * 128),
        (AT, 5.0, 5, 5, 5, uuid.uuid4(), OTHER, "r-1"),
        (AT, 6.0, 6, 6, 6, uuid.uuid4(), OTHER, "r-2"),
        (AT, 7.0, 7, 7, 7, uuid.uuid4(), OTHER, None),
    ],
    "many rows of mixed shapes": [
        (
            AT + timedelta(microseconds=n * 1_000_003),
            n * 0.25 - 100,
            None if n % 5 == 0 else n * 1_000_000_007,
            None if n % 3 == 0 else (n % 2161) - 1080,
            n,
            uuid.uuid4(),
            OTHER,
            None if n % 4 else f"id-{n}",
        )
        for n in range(3000)
    ],
}


@pytest.mark.parametrize("rows", CASES.values(), ids=CASES.keys())
def test_the_encoder_writes_what_postgresql_reads_back(db_url: str, rows: list[Row]) -> None:
    stream, written, back = asyncio.run(_round_trip(db_url, rows))
    assert _row_set(stream) == _row_set(written)
    assert sorted(back, key=repr) == sorted(rows, key=repr)


def test_no_rows_is_a_valid_empty_stream(db_url: str) -> None:
    stream, _, back = asyncio.run(_round_trip(db_url, []))
    assert stream == COPY_HEADER + COPY_TRAILER
    assert back == []


def test_a_text_column_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="2 values for 3 rows"):
        encode_copy([Column("text", ["a", "b"])], 3)
