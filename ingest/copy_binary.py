"""PostgreSQL binary COPY streams written with numpy, a whole batch at a time.

asyncpg's ``copy_records_to_table`` encodes one Python tuple per row (about 5 us a row): on the
ingest hot path that cost more than the server spent storing the rows. Here the rows of a batch
are columns (numpy arrays), and each field is written by one vectorised assignment into a
structured array whose big-endian fields have exactly the wire layout of a COPY row.

Format (PostgreSQL docs, "COPY ... Binary Format"): an 11-byte signature, a 32-bit flags field
and a 32-bit header-extension length; then per row a 16-bit field count and per field a 32-bit
byte length (-1 for NULL) followed by the value in the type's binary send format; then a 16-bit
-1 trailer. Everything is network byte order. Send formats used here:

- ``int2``/``int4``/``int8``: two's complement; ``float8``: IEEE 754 double;
- ``timestamptz``: int64 microseconds since 2000-01-01 00:00:00 UTC (integer datetimes);
- ``uuid``: its 16 bytes; ``text``: UTF-8 bytes without terminator (client encoding UTF8).

Rows differ in width only through NULLs and text lengths. Rows may go in any order (the
callers never depend on COPY order), so rows are grouped by shape -- which nullable fields are
NULL and how long each text is -- and each group is one structured array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

# Microseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
PG_EPOCH_OFFSET_US = 946_684_800_000_000
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"

Kind = Literal["int2", "int4", "int8", "float8", "timestamptz", "uuid", "text"]
# Wire dtype of each fixed-width kind. timestamptz arrays hold Unix-epoch microseconds and are
# shifted on the way out; uuid arrays are (n, 16) uint8, one row per uuid's bytes.
_WIRE: dict[str, np.dtype[np.generic]] = {
    "int2": np.dtype(">i2"),
    "int4": np.dtype(">i4"),
    "int8": np.dtype(">i8"),
    "float8": np.dtype(">f8"),
    "timestamptz": np.dtype(">i8"),
    "uuid": np.dtype((np.void, 16)),
}
_LENGTH = np.dtype(">i4")


@dataclass(frozen=True, slots=True)
class Column:
    """One COPY column's values for all rows.

    ``values``: a numpy array of n values (uuid: (n, 16) uint8), a scalar broadcast to every row
    (uuid: 16 bytes), or for ``text`` a sequence of str/None. ``null``: for fixed-width kinds,
    an optional boolean array, True where the value is NULL.
    """

    kind: Kind
    values: object
    null: npt.NDArray[np.bool_] | None = None


def encode_copy(columns: Sequence[Column], rows: int) -> bytes:
    """The complete binary COPY stream (header, rows, trailer) of ``rows`` rows."""
    return COPY_HEADER + encode_rows(columns, rows) + COPY_TRAILER


def encode_rows(columns: Sequence[Column], rows: int) -> bytes:
    """Only the row data, for a caller that concatenates several pieces."""
    if rows == 0:
        return b""
    # Per nullable or text column: an int per row naming the field's shape (-1: NULL, else
    # its byte length); rows with equal shape vectors share a group.
    shape_columns: list[npt.NDArray[np.int64]] = []
    text_bytes: dict[int, list[bytes | None]] = {}
    constant: list[int | None] = []  # per shape column: its shape if equal in every row
    for number, column in enumerate(columns):
        if column.kind == "text":
            if column.values is None:  # NULL in every row
                text_bytes[number] = []
                shape_columns.append(np.full(1, -1, dtype=np.int64))
                constant.append(-1)
                continue
            encoded = _encode_texts(column.values, rows)
            text_bytes[number] = encoded
            lengths = np.fromiter((-1 if b is None else len(b) for b in encoded), np.int64, rows)
            shape_columns.append(lengths)
            constant.append(int(lengths[0]) if (lengths == lengths[0]).all() else None)
        elif column.null is not None and column.null.any():
            shape_columns.append(np.where(column.null, -1, 0).astype(np.int64))
            constant.append(-1 if column.null.all() else None)
    if None not in constant:  # the usual case: every row has the same shape
        return _encode_group(columns, rows, None, tuple(cast(list[int], constant)), text_bytes)
    # One int64 key per row from all its shape values (each within -1..max).
    key = np.zeros(rows, dtype=np.int64)
    for shape_column in shape_columns:
        key = key * (int(shape_column.max()) + 2) + (shape_column + 1)
    distinct_keys, first_row, group_of_row = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(group_of_row, kind="stable")
    bounds = np.searchsorted(group_of_row[order], np.arange(len(distinct_keys) + 1))
    pieces = []
    for group, row in enumerate(first_row.tolist()):
        members = order[bounds[group] : bounds[group + 1]]
        shape = tuple(int(c[row]) if len(c) == rows else int(c[0]) for c in shape_columns)
        pieces.append(_encode_group(columns, len(members), members, shape, text_bytes))
    return b"".join(pieces)


def _encode_texts(values: object, rows: int) -> list[bytes | None]:
    assert isinstance(values, Sequence) and not isinstance(values, str | bytes)
    if len(values) != rows:
        raise ValueError(f"text column has {len(values)} values for {rows} rows")
    return [None if v is None else v.encode() for v in values]


def _encode_group(
    columns: Sequence[Column],
    rows: int,
    members: npt.NDArray[np.intp] | None,
    shape: tuple[int, ...],
    text_bytes: dict[int, list[bytes | None]],
) -> bytes:
    """Rows that all have the same shape: one structured array with the exact row layout."""
    fields: list[tuple[str, object]] = [("count", ">i2")]
    shape_iter = iter(shape)
    layout: list[tuple[int, int]] = []  # (column number, width or -1 for NULL)
    for number, column in enumerate(columns):
        if column.kind == "text":
            width = next(shape_iter)
        elif column.null is not None and column.null.any():
            width = next(shape_iter)
            if width == 0:
                width = _WIRE[column.kind].itemsize
        else:
            width = _WIRE[column.kind].itemsize
        layout.append((number, width))
        fields.append((f"l{number}", _LENGTH))
        if width > 0:
            wire = f"S{width}" if column.kind == "text" else _WIRE[column.kind]
            fields.append((f"v{number}", wire))
    out = np.empty(rows, dtype=np.dtype(fields))
    out["count"] = len(columns)
    for number, width in layout:
        out[f"l{number}"] = width
        if width <= 0:  # NULL, or an empty text: the length says it all
            continue
        column = columns[number]
        target = f"v{number}"
        if column.kind == "text":
            texts = text_bytes[number]
            picked = texts if members is None else [texts[i] for i in members.tolist()]
            out[target] = np.array(picked, dtype=f"S{width}")
        elif column.kind == "uuid":
            out[target] = _uuid_field(column.values, rows, members)
        else:
            values = column.values
            if isinstance(values, np.ndarray):
                values = values if members is None else values[members]
                if column.kind == "timestamptz":
                    values = values - PG_EPOCH_OFFSET_US
            elif column.kind == "timestamptz":
                values = int(values) - PG_EPOCH_OFFSET_US  # type: ignore[call-overload] # a scalar
            out[target] = values
    return out.tobytes()


def _uuid_field(
    values: object, rows: int, members: npt.NDArray[np.intp] | None
) -> npt.NDArray[np.void]:
    if isinstance(values, bytes):
        return np.full(rows, values, dtype=_WIRE["uuid"])
    assert isinstance(values, np.ndarray) and values.shape[1:] == (16,)
    picked = values if members is None else values[members]
    return np.ascontiguousarray(picked, dtype=np.uint8).view(_WIRE["uuid"]).reshape(-1)
