"""The devices a load test drives: registered by ``loadtests/run.py``, used by the locustfile.

The ward comes from the simulator (``rpmstore.simulate_ward.register_ward``): patients, their
devices and tokens, each device's units and habits. Each Locust user owns one device and plans
that device's payloads with its own :class:`TrafficPlan`, so no two users ever send the same
natural key (device, metric, time) with different values.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rpmstore.simulate_ward import Shares, SimDevice, TrafficPlan, Ward


@dataclass(frozen=True)
class Fleet:
    ward: Ward
    http_devices: tuple[SimDevice, ...]
    mqtt_devices: tuple[SimDevice, ...]
    mqtt_host: str
    mqtt_port: int
    shares: Shares
    payloads_per_s: float
    # Devices connect over TLS as the stack's URL does, trusting this CA (None: plain MQTT).
    mqtt_tls: bool = False
    mqtt_cafile: str | None = None

    def save(self, path: Path) -> None:
        # Written by this run's runner, read by its own Locust process (trusted, short-lived).
        path.write_bytes(pickle.dumps(self))

    @staticmethod
    def load(path: Path) -> Fleet:
        fleet = pickle.loads(path.read_bytes())  # our own file (see save)
        assert isinstance(fleet, Fleet)
        return fleet

    def plan_for(self, device: SimDevice, seed: int) -> TrafficPlan:
        """Payloads of ``device`` alone, from a generator of its own."""
        own = dataclasses.replace(self.ward, devices=(device,))
        return TrafficPlan(own, np.random.default_rng(seed), shares=self.shares, episodes=())


def split_devices(ward: Ward, http: int, mqtt: int) -> tuple[tuple[SimDevice, ...], ...]:
    """``http`` devices for HTTP users and ``mqtt`` others for MQTT users (alternating, so both
    transports get a similar mix of device kinds)."""
    devices = ward.devices
    if len(devices) < http + mqtt:
        raise ValueError(f"the ward has {len(devices)} devices, {http + mqtt} are needed")
    first, second = devices[0::2], devices[1::2]
    if len(first) >= http and len(second) >= mqtt:
        return first[:http], second[:mqtt]
    return devices[:http], devices[http : http + mqtt]
