"""``rpmstore simulate`` (a simulated ward, reconciled) and ``rpmstore demo``."""

from __future__ import annotations

import argparse
import logging

from rpmstore import endpoints
from rpmstore.cli.common import Subcommands, fail, fraction, positive_float, positive_int, say
from rpmstore.cli.serve import token_signer
from rpmstore.settings import Settings


def _quiet_http_client_logs() -> None:
    """The simulator sends hundreds of requests a second; httpx2 logs each one at INFO."""
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    if args.basic:
        from rpmstore.demo import run_demo

        run_demo(endpoints.database_url(settings))
        return 0
    from rpmstore.simulate_send import SendError
    from rpmstore.ward_demo import DemoError, DemoOptions, run_ward_demo

    _quiet_http_client_logs()
    options = DemoOptions(
        patients=args.patients, rate=args.rate, seconds=args.seconds, seed=args.seed
    )
    try:
        return run_ward_demo(endpoints.stack_urls(settings), options, token_signer(settings))
    except (DemoError, SendError) as exc:
        return fail(str(exc))


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from rpmstore.simulate import Endpoints, SimulationConfig, format_report, run_simulation
    from rpmstore.simulate_send import SendError
    from rpmstore.simulate_ward import Shares

    _quiet_http_client_logs()
    urls = endpoints.stack_urls(settings)
    mqtt_url = args.mqtt_url or urls.mqtt_gateway_url
    if args.via == "mqtt" and mqtt_url is None:
        return fail(
            "--via mqtt needs --mqtt-url (an account that may publish for "
            "every device) when the servers are not the local stack"
        )
    config = SimulationConfig(
        patients=args.patients,
        rate=args.rate,
        seconds=args.seconds,
        via=args.via,
        seed=args.seed,
        shares=Shares(retry=args.retry_share, late=args.late_share, bad=args.bad_share),
        concurrency=args.concurrency,
        wait_s=args.wait,
    )
    targets = Endpoints(
        urls.database_url,
        api_url=args.api_url,
        mqtt_url=mqtt_url,
        mqtt_allow_plaintext=settings.mqtt_allow_plaintext,
    )
    try:
        report = run_simulation(config, targets)
    except SendError as exc:
        return fail(str(exc))
    say("\n".join(format_report(report)))
    return 0 if report.accounted else 1


def register_simulate(commands: Subcommands) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="a simulated ward sending vitals over HTTP or MQTT; reports what was stored",
    )
    simulate.add_argument("--patients", type=positive_int, default=5, metavar="N")
    simulate.add_argument(
        "--rate",
        type=positive_float,
        default=100.0,
        metavar="R",
        help="readings per second in total",
    )
    simulate.add_argument("--seconds", type=positive_float, default=10.0, metavar="S")
    simulate.add_argument("--via", choices=("http", "mqtt"), default="http")
    simulate.add_argument(
        "--api-url", default="http://127.0.0.1:8000", metavar="URL", help="for --via http"
    )
    simulate.add_argument(
        "--mqtt-url",
        default=None,
        metavar="URL",
        help="for --via mqtt: an account that may publish for every device "
        "(default: the local stack's MQTT_GATEWAY_URL)",
    )
    simulate.add_argument(
        "--seed", type=int, default=None, metavar="K", help="default: a fresh one, reported"
    )
    simulate.add_argument(
        "--retry-share", type=fraction, default=0.03, metavar="F", help="exact re-sends (0.03)"
    )
    simulate.add_argument(
        "--late-share", type=fraction, default=0.05, metavar="F", help="measured up to 55 min ago"
    )
    simulate.add_argument(
        "--bad-share", type=fraction, default=0.02, metavar="F", help="payloads ingest must refuse"
    )
    simulate.add_argument(
        "--concurrency", type=positive_int, default=32, metavar="N", help="HTTP requests in flight"
    )
    simulate.add_argument(
        "--wait", type=positive_float, default=30.0, metavar="S", help="bound on waiting for ingest"
    )
    simulate.set_defaults(handler=_simulate)


def register_demo(commands: Subcommands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a simulated ward through the real ingestor and API: stored, duplicates, quarantined",
    )
    demo.add_argument(
        "--basic",
        action="store_true",
        help="instead: register one patient, store an hour of readings, read them back",
    )
    demo.add_argument("--patients", type=positive_int, default=5, metavar="N")
    demo.add_argument("--rate", type=positive_float, default=200.0, metavar="R")
    demo.add_argument(
        "--seconds", type=positive_float, default=5.0, metavar="S", help="per transport"
    )
    demo.add_argument("--seed", type=int, default=None, metavar="K")
    demo.set_defaults(handler=_demo)
