"""The edge's building blocks: token buckets, the JSON media-type rule, client addresses."""

from __future__ import annotations

import pytest

from api.edge import EdgeLimits, TokenBuckets, client_key, is_json_media_type
from rpmstore.asgi import edge_limits
from rpmstore.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    buckets: TokenBuckets[str] = TokenBuckets(2.0, 3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every half second
    assert buckets.take("b") == 0.0  # buckets are per key
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.wait("a") == pytest.approx(0.5)
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # never more than the burst saved


def test_charge_never_goes_below_zero_and_wait_takes_nothing() -> None:
    clock = Clock()
    buckets: TokenBuckets[str] = TokenBuckets(1.0, 2, clock=clock)
    for _ in range(10):
        buckets.charge("x")
    assert buckets.wait("x") == pytest.approx(1.0)  # ten failures cost no more than two
    clock.now += 1
    assert buckets.wait("x") == 0.0
    assert buckets.wait("x") == 0.0


def test_memory_is_bounded_and_a_rate_of_zero_is_off() -> None:
    buckets: TokenBuckets[int] = TokenBuckets(1.0, 1, max_keys=100, clock=Clock())
    for key in range(10_000):
        buckets.take(key)
    assert len(buckets._buckets) == 100
    assert buckets.take(9_999) > 0  # the most recent keys are kept
    off: TokenBuckets[int] = TokenBuckets(0.0, 1, clock=Clock())
    assert all(off.take(1) == 0.0 for _ in range(1000))


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/fhir+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("text/json", False),
        ("application/jsonp", False),
        ("", False),
    ],
)
def test_json_media_types(content_type: str, is_json: bool) -> None:
    assert is_json_media_type(content_type) is is_json


def test_client_addresses_are_counted_by_host_and_ipv6_by_slash_64() -> None:
    assert client_key({"client": ("203.0.113.7", 5555)}) == "203.0.113.7"
    first = client_key({"client": ("2001:db8:1:2::1", 1)})
    assert first == client_key({"client": ("2001:db8:1:2:ffff::9", 2)}) == "2001:db8:1:2::/64"
    assert client_key({"client": ("2001:db8:1:3::1", 1)}) != first
    assert client_key({}) == "unknown"


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert edge_limits(Settings()) == EdgeLimits()  # the documented defaults
    monkeypatch.setenv("RPMSTORE_HTTP_BODY_TIMEOUT_S", "5")
    monkeypatch.setenv("RPMSTORE_HTTP_DEVICE_RATE_PER_S", "0")
    monkeypatch.setenv("RPMSTORE_HTTP_AUTH_FAILURE_BURST", "7")
    limits = edge_limits(Settings())
    assert (limits.body_timeout_s, limits.device_rate_per_s, limits.auth_failure_burst) == (
        5.0,
        0.0,
        7,
    )
    monkeypatch.setenv("RPMSTORE_HTTP_DEVICE_BURST", "0")
    with pytest.raises(ValueError, match="device_burst"):
        Settings()
