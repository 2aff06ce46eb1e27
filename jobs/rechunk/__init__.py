"""Re-chunk and repartition: rewrite a hypertable's history into new dimensions, losing nothing.

``rpmstore rechunk readings --chunk-interval '1 day'`` and ``rpmstore repartition readings
--partitions 4``; see :mod:`jobs.rechunk.engine` for the steps and their guarantees.
"""

from jobs.rechunk.engine import Rechunker
from jobs.rechunk.errors import (
    LockBusyError,
    RechunkError,
    RechunkRefusedError,
    VerificationError,
)
from jobs.rechunk.model import DayCount, Options, RunReport

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
