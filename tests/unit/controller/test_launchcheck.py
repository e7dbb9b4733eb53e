"""The launch check (`controller.launchcheck`): the digest of the launch spec, which (zone, type)
pairs are tried, how DryRun answers are classified and worded, and the checker's sharing and
bounds. The CVM client is a fake whose `check_purchase` answers as each test says."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spotpool.api.names import OWNER_UID_TAG
from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.client import DryRunBought
from spotpool.cloud.errors import SERVER_NETWORK_ERROR, CloudError, CloudNetworkError
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.controller.cloudaccess import AccountKey
from spotpool.controller.context import ObjectRef, PassContext
from spotpool.controller.launchcheck import (
    CHECKS_IN_FLIGHT,
    MAX_REFUSALS_SHOWN,
    REFUSED_FOR,
    STATUS_FIELD,
    LaunchChecker,
    Refusal,
    blame,
    check_targets,
    classify,
    describe_refusals,
    launch_digest,
)
from spotpool.controller.purchasing import Purchasing
from spotpool.planner.persistence import read_status
from tests.support.specs import pool_spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNT = "100000000001"
SPEC: dict[str, Any] = pool_spec(
    expectedCount=4, maxPrice="0.05", instanceTypes=["S5.MEDIUM4", "SA2.MEDIUM4", "S6.LARGE8"],
    network={"vpcId": "vpc-2ari9m7h",
             "subnetIds": {"ap-guangzhou-3": "subnet-ahv6swf2", "ap-guangzhou-4": "subnet-mt7v2yvb"}},
    tags={"team": "render"},
)


def spec(**changes: Any) -> EnvironmentSpec:
    return EnvironmentSpec.from_k8s({**SPEC, **changes})


def digest(**changes: Any) -> str:
    return launch_digest(spec(**changes), ACCOUNT)


# -- the digest -------------------------------------------------------------------------------------------

def test_the_digest_is_short_stable_and_made_of_the_launch_fields_only() -> None:
    assert len(digest()) == 32 and digest() == digest() == launch_digest(spec(), ACCOUNT)
    for unrelated in ({"expectedCount": 9}, {"paused": True}, {"allocationStrategy": "Diversified"},
                      {"scaleInPolicy": "OldestFirst"}, {"credentialsSecretRef": {"name": "other"}}):
        assert digest(**unrelated) == digest(), unrelated
    launch_changes: list[dict[str, Any]] = [
        {"imageId": "img-00000000"}, {"zones": ["ap-guangzhou-3"], "network": None},
        {"instanceTypes": ["S5.MEDIUM4"]}, {"systemDisk": {"type": "CLOUD_SSD", "sizeGiB": 60}},
        {"loginSettings": {"keyIds": ["skey-3glfot13"]}}, {"userData": "#!/bin/sh\n"},
        {"instanceNamePrefix": "render"}, {"maxPrice": "0.06"}, {"tags": {"team": "paint"}},
        {"network": {**SPEC["network"], "subnetIds": {**SPEC["network"]["subnetIds"],
                                                      "ap-guangzhou-4": "subnet-00000000"}}},
    ]
    digests = {digest(**change) for change in launch_changes}
    assert len(digests) == len(launch_changes) and digest() not in digests
    assert launch_digest(spec(), "200000000002") != digest(), "an image or subnet exists in one account"


def test_every_zone_and_every_type_is_tried_once() -> None:
    pairs = check_targets(("z3", "z4"), ("a", "b", "c"))
    assert pairs == [("z3", "a"), ("z4", "a"), ("z3", "b"), ("z3", "c")]
    assert len(pairs) == 2 + 3 - 1
    assert check_targets(("z3",), ("a",)) == [("z3", "a")]


# -- classifying and wording the answers ------------------------------------------------------------------

def refused(code: str) -> CloudError:
    return CloudError(code, "the cloud's words", action="RunInstances")


@pytest.mark.parametrize("code", ["InvalidImageId.NotFound", "InvalidImageId.Malformed",
                                  "InvalidParameterValue.SubnetNotExist", "InvalidParameterValue.InstanceTypeNotFound",
                                  "InvalidZone.MismatchRegion", "ResourceNotFound", "FailedOperation.TagKeyReserved"])
def test_configuration_errors_refuse(code: str) -> None:
    answer = classify(refused(code))
    assert answer.refusal == Refusal(code, "the cloud's words") and not answer.checked


@pytest.mark.parametrize("code", ["ResourcesSoldOut.SpecifiedInstanceType",
                                  "ResourceInsufficient.SpecifiedInstanceType",
                                  "InvalidParameterValue.InsufficientPrice", "LimitExceeded.UserSpotQuota",
                                  "ResourceUnavailable.InstanceType"])
def test_market_answers_count_as_checked(code: str) -> None:
    answer = classify(refused(code))
    assert answer.checked and answer.refusal is None


@pytest.mark.parametrize("error", [refused("RequestLimitExceeded"), refused("InternalError"),
                                   refused("AuthFailure.SignatureFailure"), refused("SomethingNew.Entirely"),
                                   CloudNetworkError(SERVER_NETWORK_ERROR, "timed out", action="RunInstances")])
def test_no_answer_about_the_spec_is_neither_checked_nor_refused(error: CloudError) -> None:
    answer = classify(error)
    assert not answer.checked and answer.refusal is None


def test_a_dry_run_that_bought_counts_as_checked_so_it_is_never_repeated() -> None:
    answer = classify(DryRunBought(SERVER_NETWORK_ERROR, "answered 1 instance ids: ins-x", action="RunInstances"))
    assert answer.checked and answer.refusal is None and "despite DryRun" in (answer.note or "")


def test_a_request_the_client_will_not_build_refuses() -> None:
    answer = classify(ValueError("vpc_id and subnet_id must be given together"))
    assert answer.refusal is not None and "subnet_id" in answer.refusal.message


def request(**changes: Any) -> RunInstancesRequest:
    args: dict[str, Any] = {"zone": "ap-guangzhou-4", "instance_type": "SA2.MEDIUM4", "image_id": "img-pmqg1cw7",
                            "count": 1, "client_token": "dryrun", "max_price": "0.05", "vpc_id": "vpc-2ari9m7h",
                            "subnet_id": "subnet-mt7v2yvb", "tags": {"team": "render", OWNER_UID_TAG: "uid"}}
    return RunInstancesRequest(**{**args, **changes})


@pytest.mark.parametrize(("code", "field", "value"), [
    ("InvalidImageId.NotFound", "spec.imageId", "img-pmqg1cw7"),
    ("InvalidParameterValue.InvalidImageForGivenInstanceType", "spec.imageId", "img-pmqg1cw7"),
    ("InvalidParameterValue.SubnetNotExist", "spec.network.subnetIds[ap-guangzhou-4]", "subnet-mt7v2yvb"),
    ("InvalidParameterValue.SubnetIdZoneIdNotMatch", "spec.network.subnetIds[ap-guangzhou-4]", "subnet-mt7v2yvb"),
    ("InvalidParameterValue.VpcIdNotExist", "spec.network.vpcId", "vpc-2ari9m7h"),
    ("InvalidParameterValue.InstanceTypeNotFound", "spec.instanceTypes", "SA2.MEDIUM4"),
    ("InvalidInstanceType.Malformed", "spec.instanceTypes", "SA2.MEDIUM4"),
    ("InvalidParameterValue.ZoneNotSupported", "spec.zones", "ap-guangzhou-4"),
    ("InvalidParameterValue.TagKeyNotFound", "spec.tags", "team"),
    ("InvalidParameter", "spec", "SA2.MEDIUM4 in ap-guangzhou-4"),
])
def test_a_refusal_names_the_spec_field_and_the_value_the_request_gave_it(code: str, field: str, value: str) -> None:
    assert blame(code, request()) == (field, value)


def test_the_message_names_field_value_and_code_once_per_problem_and_stays_bounded() -> None:
    image = Refusal("InvalidImageId.NotFound", "The image img-pmqg1cw7 does not exist.")
    text = describe_refusals([(request(zone=zone), image) for zone in ("ap-guangzhou-3", "ap-guangzhou-4")])
    assert text == ("spec.imageId: RunInstances DryRun refused img-pmqg1cw7: InvalidImageId.NotFound: "
                    "The image img-pmqg1cw7 does not exist.")
    many = [(request(instance_type=f"S{n}.MEDIUM4"), Refusal("InvalidParameterValue.InstanceTypeNotFound", "x" * 300))
            for n in range(10)]
    text = describe_refusals(many)
    assert text.count("spec.instanceTypes") == MAX_REFUSALS_SHOWN
    assert text.endswith(f"and {10 - MAX_REFUSALS_SHOWN} more")
    assert len(text) < 1500


# -- the checker --------------------------------------------------------------------------------------------

class FakeCvm:
    """`check_purchase` answers with `answer(request)` (None: passes, an exception: raised)."""

    def __init__(self, answer: Callable[[RunInstancesRequest], Exception | None] = lambda r: None) -> None:
        self.answer = answer
        self.checks: list[RunInstancesRequest] = []
        self.guards: list[Any] = []
        self.in_flight = self.most_in_flight = 0

    async def check_purchase(self, request: RunInstancesRequest, *, guard: Any = None) -> None:
        self.guards.append(guard)
        self.checks.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        error = self.answer(request)
        if error is not None:
            raise error


def context(client: FakeCvm, *, name: str = "pool", now: datetime = NOW, status: dict[str, Any] | None = None,
            deleting: bool = False, refused: tuple[str, str] | None = None, fence: Callable[[], None] = lambda: None,
            **changes: Any) -> PassContext:
    ref = ObjectRef("team", name, f"uid-{name}", 1, "1")
    return PassContext(
        ref=ref, body={"metadata": {"namespace": "team", "name": name}}, spec=spec(**changes),
        key=AccountKey.of("http://127.0.0.1:9000", "ap-guangzhou", Credentials("AKIDx", "secret")),
        client=client,  # type: ignore[arg-type]
        account={"id": ACCOUNT, "region": "ap-guangzhou", "endpoint": "http://127.0.0.1:9000"},
        persisted=read_status(status or {}), journal=(), malformed=(), backoff={}, sequence=0,
        deleting=deleting, now=now, fence=fence, purchases_refused=refused,  # type: ignore[arg-type]
    )


def checker() -> LaunchChecker:
    purchasing = Purchasing(statuses=None, reporting=None, cluster_id="cluster", rng=random.Random())  # type: ignore[arg-type]
    return LaunchChecker(purchasing.request)


async def test_a_new_spec_is_tried_once_per_zone_and_type_as_the_purchase_would_send_it() -> None:
    cvm = FakeCvm()
    ctx = context(cvm)
    result = await checker().check(ctx)
    assert result is not None and result.record == result.digest == launch_digest(ctx.spec, ACCOUNT)
    assert result.refused is None
    assert sorted((r.zone, r.instance_type) for r in cvm.checks) == sorted(check_targets(ctx.spec.zones,
                                                                                        ctx.spec.instance_types))
    for sent in cvm.checks:
        assert sent.count == 1 and sent.charge_type == "SPOTPAID" and str(sent.max_price) == "0.05"
        assert sent.image_id == "img-pmqg1cw7" and sent.subnet_id == SPEC["network"]["subnetIds"][sent.zone]
        assert sent.tags["team"] == "render" and sent.tags[OWNER_UID_TAG] == "uid-pool"


@pytest.mark.parametrize("why", ["deleting", "paused", "nothing expected", "spend guard", "already checked"])
async def test_no_check_when_the_pass_cannot_buy_or_the_spec_was_checked(why: str) -> None:
    cvm = FakeCvm()
    kwargs: dict[str, Any] = {
        "deleting": {"deleting": True}, "paused": {"paused": True}, "nothing expected": {"expectedCount": 0},
        "spend guard": {"refused": ("SpendGuard", "over the limit")},
        "already checked": {"status": {STATUS_FIELD: digest()}},
    }[why]
    assert await checker().check(context(cvm, **kwargs)) is None
    assert cvm.checks == []


async def test_checks_run_concurrently_but_bounded() -> None:
    cvm = FakeCvm()
    zones = [f"ap-guangzhou-{n}" for n in range(1, 9)]
    types = [f"S{n}.MEDIUM4" for n in range(1, 9)]
    result = await checker().check(context(cvm, zones=zones, instanceTypes=types, network=None))
    assert result is not None and result.record is not None
    assert len(cvm.checks) == 8 + 8 - 1
    assert 1 < cvm.most_in_flight <= CHECKS_IN_FLIGHT


async def test_a_configuration_error_refuses_and_records_nothing() -> None:
    cvm = FakeCvm(lambda r: refused("InvalidImageId.NotFound"))
    result = await checker().check(context(cvm))
    assert result is not None and result.record is None
    assert result.refused == ("spec.imageId: RunInstances DryRun refused img-pmqg1cw7: "
                              "InvalidImageId.NotFound: the cloud's words")


async def test_one_bad_type_is_named_among_good_ones() -> None:
    cvm = FakeCvm(lambda r: refused("InvalidParameterValue.InstanceTypeNotFound") if r.instance_type == "S6.LARGE8"
                  else None)
    result = await checker().check(context(cvm))
    assert result is not None and result.record is None
    assert result.refused is not None and result.refused.startswith("spec.instanceTypes: RunInstances DryRun "
                                                                    "refused S6.LARGE8: ")


async def test_market_answers_record_and_no_answer_records_nothing_and_refuses_nothing() -> None:
    sold_out = FakeCvm(lambda r: refused("ResourcesSoldOut.SpecifiedInstanceType"))
    result = await checker().check(context(sold_out))
    assert result is not None and result.record is not None and result.refused is None
    throttled = FakeCvm(lambda r: refused("RequestLimitExceeded") if r.zone == "ap-guangzhou-4" else None)
    result = await checker().check(context(throttled))
    assert result is not None and result.record is None and result.refused is None


async def test_pools_of_one_shape_share_a_check_and_a_refusal_is_asked_again_after_a_while() -> None:
    cvm = FakeCvm()
    shared = checker()
    results = await asyncio.gather(*(shared.check(context(cvm, name=f"pool-{n}")) for n in range(20)))
    assert all(r is not None and r.record is not None for r in results)
    assert len(cvm.checks) == 4, "20 pools of one template: one check per (zone, type)"
    await shared.check(context(cvm, name="other", imageId="img-00000000"))
    assert len(cvm.checks) == 8, "another image is another request"

    bad = FakeCvm(lambda r: refused("InvalidImageId.NotFound"))
    shared = checker()
    assert (await shared.check(context(bad)) or pytest.fail()).refused
    assert (await shared.check(context(bad, now=NOW + timedelta(seconds=5))) or pytest.fail()).refused
    assert len(bad.checks) == 4, "a refusal is remembered for a while"
    await shared.check(context(bad, now=NOW + timedelta(seconds=REFUSED_FOR + 1)))
    assert len(bad.checks) == 8


async def test_an_answer_that_said_nothing_is_not_remembered() -> None:
    cvm = FakeCvm(lambda r: refused("InternalError"))
    shared = checker()
    await shared.check(context(cvm))
    await shared.check(context(cvm))
    assert len(cvm.checks) == 8


async def test_every_check_is_fenced() -> None:
    class NotLeader(Exception):
        pass

    def fence() -> None:
        raise NotLeader

    cvm = FakeCvm()
    with pytest.raises(NotLeader):
        await checker().check(context(cvm, fence=fence))
    assert cvm.checks == []


async def test_the_fence_goes_down_to_the_client_which_checks_it_before_signing() -> None:
    """A check that waited in the rate limiter past the term is not sent (the chaos e2e saw two
    DryRun calls go out 13 ms after their process had stepped down)."""
    cvm = FakeCvm()
    ctx = context(cvm)
    await checker().check(ctx)
    assert cvm.guards and all(guard is ctx.fence for guard in cvm.guards)


async def test_checks_started_before_the_account_is_known_are_joined_by_the_pass() -> None:
    cvm = FakeCvm()
    launch_checks = checker()
    ctx = context(cvm)  # a new pool: nothing recorded, every check is due whatever the account
    launch_checks.start(ctx)  # what `resolve` hands over before the look-up: a Preflight
    await asyncio.sleep(0)
    assert len(cvm.checks) == len(check_targets(ctx.spec.zones, ctx.spec.instance_types))
    result = await launch_checks.check(ctx)  # the account is known now
    assert result is not None and result.record == launch_digest(ctx.spec, ACCOUNT)
    assert len(cvm.checks) == len(check_targets(ctx.spec.zones, ctx.spec.instance_types)), "asked once"


@pytest.mark.parametrize("status", [
    {STATUS_FIELD: "0" * 32},  # a passed check and no account: cannot be judged before the look-up
    {STATUS_FIELD: "checked", "account": {"id": ACCOUNT, "region": "ap-guangzhou", "endpoint": "x"}},
])
async def test_no_check_is_started_early_unless_it_is_due_whatever_the_account(status: dict[str, Any]) -> None:
    cvm = FakeCvm()
    if status[STATUS_FIELD] == "checked":
        status = {**status, STATUS_FIELD: digest()}  # checked in the account the status records
    checker().start(context(cvm, status=status))
    await asyncio.sleep(0.01)
    assert cvm.checks == []
