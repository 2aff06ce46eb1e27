"""``rpmstore ingest mqtt``: the MQTT ingestor process, stopped cleanly by SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from prometheus_client import CollectorRegistry, start_http_server

from ingest import open_ingest_runtime
from ingest.mqtt import MqttIngestor, MqttOptions
from rpmstore.settings import Settings

log = logging.getLogger(__name__)


def run_mqtt_ingestor(settings: Settings, *, database_url: str, mqtt_url: str) -> int:
    return asyncio.run(_main(settings, database_url=database_url, mqtt_url=mqtt_url))


async def _main(settings: Settings, *, database_url: str, mqtt_url: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    registry = CollectorRegistry()
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=registry)
    options = MqttOptions(
        url=mqtt_url,
        client_id=settings.mqtt_client_id or f"rpmstore-ingest-{socket.gethostname()}",
        group=settings.mqtt_group,
    )
    async with open_ingest_runtime(database_url, source="mqtt", registry=registry) as runtime:
        log.info("MQTT ingestor starting", extra={"client_id": options.client_id})
        await MqttIngestor(runtime, options).run(stop)
    log.info("MQTT ingestor stopped")
    return 0
