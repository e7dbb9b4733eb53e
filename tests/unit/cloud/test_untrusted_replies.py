"""What a server says, filtered: code shapes, message cleaning, metric labels, instance parsing
bounds, and rate-limit buckets that a wrong key cannot share (issue 10)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotpool.cloud import wire
from spotpool.cloud.client import CvmClient
from spotpool.cloud.errors import (
    MAX_MESSAGE_LENGTH,
    OTHER_CODE_LABEL,
    clean_message,
    code_label,
    valid_code,
    valid_request_id,
)
from spotpool.cloud.models import Credentials
from spotpool.cloud.ratelimit import PRUNE_ABOVE, RateLimiterRegistry, account_key


@pytest.mark.parametrize(
    "code",
    ["InternalError", "AuthFailure.SignatureFailure", "LimitExceeded.CvmInstanceQuota",
     "Brand.New2.Code3", "A" * 128],
)
def test_documented_shapes_are_valid_codes(code: str) -> None:
    assert valid_code(code)


@pytest.mark.parametrize(
    "code",
    ["", "A" * 129, "Internal Error", "Internal.", ".Internal", "Internal..Error", "Ab\x1b",
     "内部错误", "1Internal", "Internal.Err-or", None, 42, ["InternalError"]],
)
def test_other_shapes_are_not(code: Any) -> None:
    assert not valid_code(code)


def test_request_ids_are_checked() -> None:
    assert valid_request_id("6e1c9a50-0b7a-4c3e-9c2a-5c1e6f1b9d7e")
    assert valid_request_id("r\nforged") is None
    assert valid_request_id("x" * 65) is None
    assert valid_request_id(17) is None


def test_clean_message_strips_controls_redacts_and_clips() -> None:
    assert clean_message("a\x1b[0m\u202e b\r\n\tc\x00") == "a[0m b c"
    assert clean_message("key=SEC\x07RET!", ["SECRET"]) == "key=***!"
    long = clean_message("y" * 10_000)
    assert len(long) == MAX_MESSAGE_LENGTH and long.endswith("...")


@given(st.text(max_size=2000), st.text(alphabet="abcdef0123456789", min_size=8, max_size=40))
def test_clean_message_never_leaks_and_stays_bounded(text: str, secret: str) -> None:
    cleaned = clean_message(text + secret + text, [secret])
    assert secret not in cleaned
    assert len(cleaned) <= MAX_MESSAGE_LENGTH
    assert all(ch == " " or ch.isprintable() for ch in cleaned)


def test_clean_message_cost_is_bounded_by_its_window() -> None:
    """A 50 MB message is cleaned from a prefix: the result is the same as for its first 2 KB."""
    huge = "z" * (50 * 1024 * 1024)
    assert clean_message(huge) == clean_message(huge[:2000])


def test_metric_labels_are_catalogued_codes_or_other() -> None:
    assert code_label("InternalError") == "InternalError"
    assert code_label("Brand.New2") == OTHER_CODE_LABEL
    assert code_label("InvalidResponse") == "InvalidResponse"
    assert code_label(None) == ""


@pytest.mark.parametrize(
    "raw",
    [
        "ins-1",
        {"InstanceId": "ins 1"},
        {"InstanceId": "i" * 65},
        {"InstanceId": "ins-1", "Placement": "zone"},
        {"InstanceId": "ins-1", "Tags": [{"Key": "k" * 256, "Value": "v"}]},
        {"InstanceId": "ins-1", "Tags": [{"Key": "k", "Value": 7}]},
        {"InstanceId": "ins-1", "Tags": [{"Key": f"k{n}", "Value": ""} for n in range(65)]},
        {"InstanceId": "ins-1", "Memory": True},
        {"InstanceId": "ins-1", "Memory": -1},
        {"InstanceId": "ins-1", "InstanceState": ["RUNNING"]},
    ],
)
def test_instances_off_the_documented_shape_are_value_errors(raw: Any) -> None:
    with pytest.raises(ValueError):
        wire.parse_instance(raw)


def test_a_plain_instance_still_parses_and_its_retained_size_is_counted() -> None:
    instance = wire.parse_instance({
        "InstanceId": "ins-00000001", "Placement": {"Zone": "z"}, "InstanceName": "n",
        "Tags": [{"Key": "ab", "Value": "cde"}, {"Key": "", "Value": "dropped"}], "CPU": 2,
    })
    assert instance.tags == {"ab": "cde"} and instance.cpu == 2
    assert wire.retained_size(instance) == len("ins-00000001") + 1 + 1 + 5


def test_offer_prices_of_absurd_length_are_no_price() -> None:
    offer = wire.parse_config_item({"Zone": "z", "InstanceType": "t", "InstanceChargeType": "SPOTPAID",
                                    "Price": {"UnitPrice": "9" * 100, "UnitPriceDiscount": 0.5}})
    assert offer.list_price is None and str(offer.price) == "0.5"


# --------------------------------------------------------------- rate-limit buckets per key


def test_account_keys_differ_by_secret_key_and_hide_it() -> None:
    right = account_key("AKIDTEAM", "the-right-key")
    assert right == account_key("AKIDTEAM", "the-right-key")
    assert right != account_key("AKIDTEAM", "a-wrong-key")
    assert right.startswith("AKIDTEAM#") and "the-right-key" not in right


async def test_a_wrong_key_for_a_known_secret_id_does_not_drain_the_owners_budget() -> None:
    """A tenant naming another team's SecretId with a wrong key queues on buckets of its own:
    the team's one call still goes out at once, however many the intruder has queued."""
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(0)

    registry = RateLimiterRegistry(sleep=record)

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Response": {"RequestId": "r"}})

    def client(secret_key: str) -> CvmClient:
        return CvmClient(Credentials("AKIDTEAM", secret_key), "ap-guangzhou",
                         transport=httpx.MockTransport(ok), limiter=registry,
                         rate_limits={"DescribeZones": 1.0})

    async with client("intruder-guess") as intruder, client("team-key") as team:
        await asyncio.gather(*(intruder.call("DescribeZones", {}) for _ in range(5)))
        assert len(sleeps) == 4  # the intruder's own queue: 1/s
        sleeps.clear()
        await team.call("DescribeZones", {})
    assert sleeps == []  # the team's bucket is untouched


def test_the_registry_drops_idle_buckets_once_it_holds_many() -> None:
    now = [0.0]
    registry = RateLimiterRegistry(clock=lambda: now[0])
    for n in range(PRUNE_ABOVE):
        registry.bucket("h", f"acct{n}", "DescribeZones", 1.0)._take()  # busy until t=1
    busy = registry.bucket("h", "acct0", "DescribeZones", 1.0)
    registry.bucket("h", "one-more", "DescribeZones", 1.0)
    assert len(registry) == PRUNE_ABOVE + 1  # nothing idle yet: nothing dropped
    now[0] = 5.0
    registry.bucket("h", "and-another", "DescribeZones", 1.0)
    assert len(registry) == 1  # every idle bucket went; the new one stays
    assert registry.bucket("h", "acct0", "DescribeZones", 1.0) is not busy


def test_parsed_instances_share_their_common_strings() -> None:
    """Every swept instance is held between sweeps (20,000 at 1,000 pools): the strings instances
    have in common (zone, type, state, charge type, tag keys and values) are one object each, not a
    copy per instance from each page's JSON."""
    import json as _json

    from spotpool.cloud import wire

    def page(instance_id: str) -> dict:
        return _json.loads(_json.dumps({
            "InstanceId": instance_id, "Placement": {"Zone": "ap-guangzhou-3"}, "InstanceType": "S5.MEDIUM4",
            "InstanceState": "RUNNING", "InstanceChargeType": "SPOTPAID",
            "Tags": [{"Key": "spotpool.io/cluster", "Value": "cluster-a"},
                     {"Key": "spotpool.io/environment-uid", "Value": "uid-1"}]}))

    one, other = wire.parse_instance(page("ins-00000001")), wire.parse_instance(page("ins-00000002"))
    assert one.zone is other.zone and one.instance_type is other.instance_type and one.state is other.state
    assert one.charge_type is other.charge_type
    for (key_a, value_a), (key_b, value_b) in zip(one.tags.items(), other.tags.items(), strict=True):
        assert key_a is key_b and value_a is value_b
    assert not hasattr(one, "__dict__")  # slotted: no per-instance dict
