"""The alert hook's touched ranges: from columns (the ingest path) exactly as from objects."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from ingest import touched_ranges
from ingest.store import ReadingColumns, ValidatedReading

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def _readings(seed: int) -> list[ValidatedReading]:
    rng = random.Random(seed)
    patients = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(5)]
    device = uuid.uuid4()
    return [
        ValidatedReading(
            T0
            + timedelta(seconds=rng.randrange(-86_400, 86_400), microseconds=rng.randrange(10**6)),
            device,
            rng.choice(patients),
            rng.choice((1, 4, 5)),
            rng.uniform(-50, 250),
            T0,
        )
        for _ in range(500)
    ]


def _key(ranges: Sequence[object]) -> list[str]:
    return sorted(repr(r) for r in ranges)


def test_columns_give_the_same_ranges_as_objects() -> None:
    first, second = _readings(1), _readings(2)
    from_objects = touched_ranges([first, second])
    from_columns = touched_ranges(
        [ReadingColumns.from_readings(first), ReadingColumns.from_readings(second)]
    )
    assert len(from_objects) == 30  # 2 x 5 patients, 3 metrics each
    assert _key(from_columns) == _key(from_objects)


def test_mixed_and_empty_batches() -> None:
    readings = _readings(3)
    mixed = touched_ranges([ReadingColumns.from_readings(readings[:200]), readings[200:]])
    assert _key(mixed) == _key(touched_ranges([readings]))
    assert touched_ranges([ReadingColumns.empty()]) == []
