"""Merge every ``reports/bench-*.json`` into ``reports/bench.json`` and a markdown table.

Each ratio benchmark writes its own file (``bench-ingest.json``, ``bench-hot-paths.json``,
...), shaped as it likes. This merges them under their names and lists every ratio (a number
whose key mentions ``ratio``, ``tax`` or ``_to_``) first, then the raw figures they came from,
so one table shows the latest run of everything. Run by ``make bench`` after the benchmarks:
``python -m benchmarks.report [reports-dir]``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parents[1] / "reports"
_RATIO_WORDS = ("ratio", "tax", "_to_", "decay")


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf as (dotted.key, number); booleans and strings are skipped."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield prefix, float(value)


def is_ratio(key: str) -> bool:
    return any(word in key for word in _RATIO_WORDS)


def _format(number: float) -> str:
    if number.is_integer():
        return f"{number:,.0f}"
    if abs(number) >= 100:
        return f"{number:,.1f}"
    return f"{number:.3g}" if abs(number) < 0.01 else f"{number:.3f}".rstrip("0").rstrip(".")


def merge(folder: Path) -> dict[str, Any]:
    """{benchmark name: its JSON} for every bench-*.json in ``folder`` (not bench.json)."""
    merged: dict[str, Any] = {}
    for path in sorted(folder.glob("bench-*.json")):
        try:
            merged[path.stem.removeprefix("bench-")] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:  # a benchmark killed mid-write: say so, go on
            merged[path.stem.removeprefix("bench-")] = {"error": f"unreadable: {exc}"}
    return merged


def markdown(merged: dict[str, Any]) -> str:
    lines = [
        "| benchmark | figure | value | measured at |",
        "|---|---|---:|---|",
    ]
    for ratios_first in (True, False):
        for name, result in merged.items():
            measured = str(result.get("measured_at", "")) if isinstance(result, dict) else ""
            for key, number in _leaves(result):
                if is_ratio(key) == ratios_first:
                    lines.append(f"| {name} | {key} | {_format(number)} | {measured} |")
    return "\n".join(lines) + "\n"


def write(folder: Path) -> tuple[Path, Path]:
    merged = merge(folder)
    summary = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "benchmarks": merged,
    }
    json_path, md_path = folder / "bench.json", folder / "bench.md"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(
        "# rpmstore benchmarks (latest `make bench`)\n\n"
        "Ratios first (each against a baseline measured in the same run), then the raw "
        "figures.\n\n" + markdown(merged)
    )
    return json_path, md_path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    folder = Path(args[0]) if args else REPORTS
    if not any(folder.glob("bench-*.json")):
        sys.stderr.write(f"no bench-*.json in {folder}: run the benchmarks first\n")
        return 1
    json_path, md_path = write(folder)
    sys.stdout.write(md_path.read_text())
    sys.stdout.write(f"\nwritten: {json_path} and {md_path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
