"""``rpmstore ingest mqtt``: the MQTT ingestor process, stopped cleanly by SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvloop
from prometheus_client import CollectorRegistry, start_http_server

from alerting import AlertingOptions
from ingest import open_ingest_runtime
from ingest.mqtt import MqttIngestor, MqttOptions, MqttRetireError
from rpmstore.settings import Settings

log = logging.getLogger(__name__)


def run_mqtt_ingestor(
    settings: Settings, *, database_url: str, mqtt_url: str, retire: bool = False
) -> int:
    # uvloop, as uvicorn uses for `serve`: the standard loop's socket writes (the COPY
    # streams) and callbacks cost this process about a tenth of its CPU under load.
    return uvloop.run(_main(settings, database_url=database_url, mqtt_url=mqtt_url, retire=retire))


async def _main(settings: Settings, *, database_url: str, mqtt_url: str, retire: bool) -> int:
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
        allow_plaintext=settings.mqtt_allow_plaintext,
    )
    alerting = AlertingOptions(
        enabled=settings.alerts_inline,
        sweep_interval_s=settings.alert_sweep_interval_s or None,
    )
    async with open_ingest_runtime(
        database_url, source="mqtt", registry=registry, alerting=alerting
    ) as runtime:
        ingestor = MqttIngestor(runtime, options)
        if retire:
            log.info("retiring MQTT session", extra={"client_id": options.client_id})
            try:
                await ingestor.retire()
            except MqttRetireError as exc:
                log.error("MQTT session not retired: %s", exc)
                return 2
            if not ingestor.session_ended:
                return 1
            log.info("MQTT session ended", extra={"acknowledged": ingestor.messages_acked})
            return 0
        log.info("MQTT ingestor starting", extra={"client_id": options.client_id})
        await ingestor.run(stop)
    log.info("MQTT ingestor stopped")
    return 0
