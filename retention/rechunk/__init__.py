"""Re-chunk and repartition: rewrite a hypertable's history into new dimensions, losing nothing.

``rpmstore rechunk readings --chunk-interval '1 day'`` and ``rpmstore repartition readings
--partitions 4``; see :mod:`retention.rechunk.engine` for the steps and their guarantees.
"""

from retention.rechunk.engine import DayCount, Options, Rechunker, RunReport
from retention.rechunk.errors import (
    LockBusyError,
    RechunkError,
    RechunkRefusedError,
    VerificationError,
)

__all__ = [
    "DayCount",
    "LockBusyError",
    "Options",
    "RechunkError",
    "RechunkRefusedError",
    "Rechunker",
    "RunReport",
    "VerificationError",
]
