"""Sustained ingest load for benchmarks: device payloads POSTed to /v1/readings at full speed.

Runs as its own process (``python -m benchmarks.ingest_load CONFIG OUT``) so that its CPU is
measured apart from the latency probes and never competes with them for one interpreter.
CONFIG is a JSON file: ``base_url``, ``devices`` (list of [device_id, token]), ``concurrency``,
``readings_per_payload``, ``start_ms`` (time of the first reading), ``spacing_ms``. Every
sender loops without pause until SIGTERM; then the process writes OUT: one [unix time of the
answer, rows stored] per 200, and counts of other answers.

Readings are heart rates inside the normal range (no alert fires), ``spacing_ms`` apart per
device from the start time: with enough devices sharing the load, each advances slower than the
clock and never reaches the validator's future-time limit; every reading is new (stored, not a
duplicate).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from itertools import count
from pathlib import Path

import httpx2


def payload(device_id: str, start_ms: int, size: int, spacing_ms: int) -> bytes:
    readings = ",".join(
        f'{{"metric":"heart_rate","value":{60 + i % 40},'
        f'"unit":"/min","time":{start_ms + i * spacing_ms}}}'
        for i in range(size)
    )
    return f'{{"device_id":"{device_id}","readings":[{readings}]}}'.encode()


async def run(config: dict[str, object], out: Path) -> None:
    base_url = str(config["base_url"])
    devices = [(str(d), str(t)) for d, t in config["devices"]]  # type: ignore[attr-defined]
    concurrency = int(config["concurrency"])  # type: ignore[call-overload]
    size = int(config["readings_per_payload"])  # type: ignore[call-overload]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    start_ms = int(config["start_ms"])  # type: ignore[call-overload]
    spacing_ms = int(config["spacing_ms"])  # type: ignore[call-overload]
    next_chunk = {device_id: count() for device_id, _ in devices}
    turn = count()
    stored: list[tuple[float, int]] = []
    other: Counter[str] = Counter()

    async def sender(client: httpx2.AsyncClient) -> None:
        while not stop.is_set():
            device_id, token = devices[next(turn) % len(devices)]
            first = start_ms + next(next_chunk[device_id]) * size * spacing_ms
            try:
                response = await client.post(
                    "/v1/readings",
                    content=payload(device_id, first, size, spacing_ms),
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx2.TransportError as exc:
                other[type(exc).__name__] += 1
                continue
            if response.status_code == 200:
                stored.append((time.time(), int(response.json()["stored"])))
            else:
                other[str(response.status_code)] += 1
                if response.status_code == 503:
                    await asyncio.sleep(0.05)  # the server asked for a pause (buffer full)

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
    out.write_text(json.dumps({"stored": stored, "other": dict(other)}))


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(run(config, Path(sys.argv[2])))


if __name__ == "__main__":
    main()
