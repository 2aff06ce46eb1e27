"""The metric catalogue as ingest needs it: codes to metric ids, unit conversions, ranges.

Loaded once per process (and on demand after catalogue changes) so validation never queries the
database per reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricSpec:
    metric_id: int
    code: str
    loinc_code: str
    canonical_unit: str  # UCUM
    plausible_min: float
    plausible_max: float


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """canonical value = value * scale + shift."""

    scale: float
    shift: float


@dataclass(frozen=True)
class Catalogue:
    metrics: Mapping[int, MetricSpec]
    # Catalogue code, LOINC code and every alias, each mapped to its metric id.
    metric_ids_by_name: Mapping[str, int]
    conversions: Mapping[tuple[int, str], UnitConversion]

    def metric_id(self, name: str) -> int | None:
        return self.metric_ids_by_name.get(name)

    def conversion(self, metric_id: int, unit: str) -> UnitConversion | None:
        return self.conversions.get((metric_id, unit))
