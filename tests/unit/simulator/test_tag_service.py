"""The simulator's tag service (TagResources, UnTagResources) through spotpool's client (issue 20).

A tag set or removed shows in DescribeInstances' Tags at once and in tag filters through the same
tag index (after `api.tag_index_delay_seconds` when the index lags); calls are signed for service
`tag` and act in the signer's account only; a workload's own credentials (the instance's CAM
role) can set `spotpool.io/do-not-disrupt`. The real simulator code runs in process under a fake
clock; tests/integration/test_sdk_tags_and_timer.py does the same with Tencent's SDK over TCP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from spotpool.cloud.client import TagFailure
from spotpool.cloud.errors import CloudError, ErrorCategory
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.cloud.wire import instance_resource
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support.identity import ACCOUNT, TEAM_ACCOUNT, TEAM_KEY, Issuer, Rig, identity_config
from tests.unit.simulator.test_market import REGION, TYPE, ZONE, small_config

DEMO = Credentials(DEMO_SECRET_ID, DEMO_SECRET_KEY)
TEAM = Credentials(*TEAM_KEY)
DRAINING = "spotpool.io/draining"
DO_NOT_DISRUPT_TAG = "spotpool.io/do-not-disrupt"  # set by workloads (api.names, issue 20)


def make_rig(**changes: Any) -> Rig:
    return Rig(identity_config(small_config(**changes), Issuer()), Issuer())


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = make_rig()
    yield rig
    await rig.close()


async def buy(rig: Rig, credentials: Credentials = DEMO, count: int = 2, pool: str = "a") -> list[str]:
    ids: list[str] = await rig.client(credentials).run_instances(RunInstancesRequest(
        zone=ZONE, instance_type=TYPE, image_id="img-pmqg1cw7", count=count,
        client_token=f"tok-{pool}-{count}", max_price="1.0", tags={"pool": pool}))
    return ids


def names(ids: list[str], account: str = ACCOUNT) -> list[str]:
    return [instance_resource(REGION, account, iid) for iid in ids]


async def tags_of(rig: Rig, iid: str, credentials: Credentials = DEMO) -> dict[str, str]:
    (inst,) = await rig.client(credentials).describe_instances(instance_ids=[iid])
    return inst.tags


async def by_tag(rig: Rig, key: str, value: str) -> list[str]:
    return [inst.instance_id for inst in await rig.client(DEMO).describe_by_tag(key, value)]


async def test_a_tag_set_and_removed_shows_in_descriptions_and_tag_filters(rig: Rig) -> None:
    ids = await buy(rig, count=3)
    tagger = rig.client(DEMO, service="tag")
    await tagger.tag_resources(names([ids[2], ids[0]]), {DRAINING: "2026-01-01T00:00:00Z", "pool": "b"})
    assert await tags_of(rig, ids[0]) == {"pool": "b", DRAINING: "2026-01-01T00:00:00Z"}
    assert await tags_of(rig, ids[1]) == {"pool": "a"}
    assert await by_tag(rig, DRAINING, "2026-01-01T00:00:00Z") == [ids[0], ids[2]]  # launch order
    assert await by_tag(rig, "pool", "b") == [ids[0], ids[2]]
    assert await by_tag(rig, "pool", "a") == [ids[1]]
    await tagger.untag_resources(names([ids[0]]), [DRAINING, "absent-key"])
    assert await tags_of(rig, ids[0]) == {"pool": "b"}
    assert await by_tag(rig, DRAINING, "2026-01-01T00:00:00Z") == [ids[2]]
    (listed,) = [i for i in await rig.client(DEMO).describe_instances(filters={"tag-key": [DRAINING]})]
    assert listed.instance_id == ids[2]
    calls = rig.calls("TagResources")
    assert calls and calls[-1].account_id == ACCOUNT and calls[-1].error_code is None


async def test_tag_filters_see_a_change_after_the_index_delay_lookups_at_once() -> None:
    rig = make_rig(api={"tag_index_delay_seconds": 30})
    try:
        (iid,) = await buy(rig, count=1)
        rig.clock.advance(30)  # the new instance itself is indexed by now
        assert await by_tag(rig, "pool", "a") == [iid]
        tagger = rig.client(DEMO, service="tag")
        await tagger.tag_resources(names([iid]), {DO_NOT_DISRUPT_TAG: "true"})
        rig.clock.advance(10)
        await tagger.tag_resources(names([iid]), {"pool": "b"})
        assert await tags_of(rig, iid) == {"pool": "b", DO_NOT_DISRUPT_TAG: "true"}
        assert await by_tag(rig, DO_NOT_DISRUPT_TAG, "true") == []
        assert await by_tag(rig, "pool", "a") == [iid]
        rig.clock.advance(20)  # the first change is indexed, the second not yet
        assert await by_tag(rig, DO_NOT_DISRUPT_TAG, "true") == [iid]
        assert await by_tag(rig, "pool", "a") == [iid] and await by_tag(rig, "pool", "b") == []
        rig.clock.advance(10)
        assert await by_tag(rig, "pool", "b") == [iid] and await by_tag(rig, "pool", "a") == []
        await tagger.untag_resources(names([iid]), [DO_NOT_DISRUPT_TAG])
        assert await by_tag(rig, DO_NOT_DISRUPT_TAG, "true") == [iid]
        rig.clock.advance(30)
        assert await by_tag(rig, DO_NOT_DISRUPT_TAG, "true") == []
    finally:
        await rig.close()


async def test_an_instance_gone_before_its_change_is_indexed_leaves_nothing_behind() -> None:
    rig = make_rig(api={"tag_index_delay_seconds": 30})
    try:
        (iid,) = await buy(rig, count=1)
        await rig.client(DEMO, service="tag").tag_resources(names([iid]), {DRAINING: "now"})
        await rig.client(DEMO).terminate_instances([iid])
        rig.clock.advance(60)
        assert await by_tag(rig, "pool", "a") == [] and await by_tag(rig, DRAINING, "now") == []
        index = rig.simulator.market._account(ACCOUNT).regions[REGION]
        assert len(index) == 0 and not index._by_tag and not index._by_tag_key and not index._by_tag_value
    finally:
        await rig.close()


async def test_a_workload_sets_do_not_disrupt_on_its_own_instance_with_the_cvm_role(rig: Rig) -> None:
    """The reserved spotpool.io/ prefix is the operator's spec validation's business, not the
    tag service's: a workload (here through the instance's CAM role) can set it."""
    (iid,) = await buy(rig, count=1)
    workload = rig.client(rig.cvm_role(), service="tag")
    await workload.tag_resources(names([iid]), {DO_NOT_DISRUPT_TAG: "true"})
    assert (await tags_of(rig, iid))[DO_NOT_DISRUPT_TAG] == "true"
    assert await by_tag(rig, DO_NOT_DISRUPT_TAG, "true") == [iid]
    await workload.untag_resources(names([iid]), [DO_NOT_DISRUPT_TAG])
    assert DO_NOT_DISRUPT_TAG not in await tags_of(rig, iid)


async def test_another_accounts_instances_cannot_be_tagged(rig: Rig) -> None:
    (mine,) = await buy(rig, count=1)
    (theirs,) = await buy(rig, TEAM, count=1, pool="team")
    team = rig.client(TEAM, service="tag")
    with pytest.raises(CloudError) as caught:  # named in its own account: refused outright
        await team.tag_resources(names([mine]), {DRAINING: "x"})
    assert caught.value.code == "AuthFailure.UnauthorizedOperation"
    assert caught.value.category is ErrorCategory.AUTH
    # Named as if in the team's account, the demo instance does not exist there: nothing happens.
    await team.tag_resources(names([mine, theirs], TEAM_ACCOUNT), {DRAINING: "x"})
    assert await tags_of(rig, mine) == {"pool": "a"}
    assert await tags_of(rig, theirs, TEAM) == {"pool": "team", DRAINING: "x"}
    assert await by_tag(rig, DRAINING, "x") == []  # the demo key sees only its own account


async def test_an_unknown_instance_is_ignored_or_reported_as_configured() -> None:
    rig = make_rig(api={"tag_unknown_resources": "fail"})
    try:
        (iid,) = await buy(rig, count=1)
        missing = instance_resource(REGION, ACCOUNT, "ins-00000000")
        with pytest.raises(TagFailure) as caught:
            await rig.client(DEMO, service="tag").tag_resources([missing, *names([iid])], {DRAINING: "x"})
        assert caught.value.failed == {missing: ("ResourceNotFound.RecordNotFound", "The resource does not exist.")}
        assert caught.value.category is ErrorCategory.NOT_FOUND
        assert (await tags_of(rig, iid))[DRAINING] == "x"  # the others were changed
        with pytest.raises(TagFailure):
            await rig.client(DEMO, service="tag").untag_resources([missing], [DRAINING])
    finally:
        await rig.close()
    quiet = make_rig()  # the default: what users of the real service report, success
    try:
        await quiet.client(DEMO, service="tag").tag_resources(
            [instance_resource(REGION, ACCOUNT, "ins-00000000")], {DRAINING: "x"})
    finally:
        await quiet.close()


async def test_a_key_restricted_by_cam_cannot_tag_what_it_cannot_see() -> None:
    base = small_config(credentials=[
        {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
        {"secret_id": "AKIDRESTRICTED00000000000000000000000", "secret_key": "restrictedKey000000000000000000000",
         "visible_tags": {"pool": "b"}},
    ])
    rig = Rig(base, Issuer())
    try:
        (iid,) = await buy(rig, count=1)
        restricted = rig.client(Credentials("AKIDRESTRICTED00000000000000000000000",
                                            "restrictedKey000000000000000000000"), service="tag")
        with pytest.raises(CloudError) as caught:
            await restricted.tag_resources(names([iid]), {"pool": "b"})
        assert caught.value.code == "AuthFailure.UnauthorizedOperation"
        assert await tags_of(rig, iid) == {"pool": "a"}
    finally:
        await rig.close()


async def raw(rig: Rig, action: str, params: dict[str, Any]) -> str:
    """The error code of a hand-made tag call (past the client's own checks)."""
    with pytest.raises(CloudError) as caught:
        await rig.client(DEMO, service="tag").call(action, params)
    return caught.value.code


@pytest.mark.parametrize(("action", "params", "code"), [
    ("TagResources", {"Tags": [{"TagKey": "k", "TagValue": "v"}]}, "MissingParameter"),
    ("TagResources", {"ResourceList": ["R"] * 11, "Tags": [{"TagKey": "k", "TagValue": "v"}]},
     "LimitExceeded.ResourceNumPerRequest"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": f"k{n}", "TagValue": "v"} for n in range(11)]},
     "LimitExceeded.TagNumPerRequest"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "", "TagValue": "v"}]},
     "InvalidParameterValue.TagKeyEmpty"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "k" * 128, "TagValue": "v"}]},
     "InvalidParameterValue.TagKeyLengthExceeded"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "k!", "TagValue": "v"}]},
     "InvalidParameterValue.TagKeyCharacterIllegal"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "k", "TagValue": ""}]},
     "InvalidParameterValue.TagValueEmpty"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "k", "TagValue": "v" * 256}]},
     "InvalidParameterValue.TagValueLengthExceeded"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "k", "TagValue": " v"}]},
     "InvalidParameterValue.TagValueCharacterIllegal"),
    ("TagResources", {"ResourceList": ["R"],
                      "Tags": [{"TagKey": "k", "TagValue": "1"}, {"TagKey": "k", "TagValue": "2"}]},
     "InvalidParameterValue.TagKeyDuplicate"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "qcs:owner", "TagValue": "v"}]},
     "InvalidParameter.ReservedTagKey"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "project", "TagValue": "v"}]},
     "InvalidParameter.ReservedTagKey"),
    ("TagResources", {"ResourceList": ["ins-abcd1234"], "Tags": [{"TagKey": "k", "TagValue": "v"}]},
     "InvalidParameterValue.ResourceDescriptionError"),
    ("TagResources", {"ResourceList": ["qcs::cos:ap-guangzhou:uin/100000000001:bucket/b-1"],
                      "Tags": [{"TagKey": "k", "TagValue": "v"}]}, "InvalidParameter.UnsupportedService"),
    ("TagResources", {"ResourceList": ["qcs::cvm:ap-nowhere:uin/100000000001:instance/ins-abcd1234"],
                      "Tags": [{"TagKey": "k", "TagValue": "v"}]}, "InvalidParameterValue.ResourceDescriptionError"),
    ("TagResources", {"ResourceList": ["qcs::cvm:ap-guangzhou:uin/100000000001:image/img-abcd1234"],
                      "Tags": [{"TagKey": "k", "TagValue": "v"}]}, "InvalidParameterValue.ResourceDescriptionError"),
    ("TagResources", {"ResourceList": ["R"], "Tags": [{"TagKey": "k", "TagValue": "v", "Colour": "red"}]},
     "UnknownParameter"),
    ("UnTagResources", {"ResourceList": ["R"]}, "MissingParameter"),
    ("UnTagResources", {"ResourceList": ["R"], "TagKeys": ["k", "k"]}, "InvalidParameterValue.TagKeyDuplicate"),
    ("DeleteTag", {}, "InvalidAction"),
])
async def test_malformed_tag_calls_get_the_tag_services_codes(
    rig: Rig, action: str, params: dict[str, Any], code: str
) -> None:
    resource = names(["ins-abcd1234"])[0]
    params = {key: [resource if item == "R" else item for item in value] if key == "ResourceList" else value
              for key, value in params.items()}
    assert await raw(rig, action, params) == code


async def test_an_instance_carries_at_most_fifty_tags_and_the_whole_call_fails(rig: Rig) -> None:
    ids = await buy(rig, count=2)
    tagger = rig.client(DEMO, service="tag")
    for batch in range(4):
        await tagger.tag_resources(names(ids[:1]), {f"k{batch}-{n}": "v" for n in range(10)})
    await tagger.tag_resources(names(ids[:1]), {f"k4-{n}": "v" for n in range(9)})  # 1 + 49 = 50
    with pytest.raises(CloudError) as caught:
        await tagger.tag_resources(names(ids), {"one-more": "v"})
    assert caught.value.code == "LimitExceeded.ResourceAttachedTags"
    assert "one-more" not in await tags_of(rig, ids[1])  # all or nothing


async def test_the_service_signed_for_decides_between_sts_and_tags(rig: Rig) -> None:
    """STS and the tag service share the version date 2018-08-13; Tencent tells them apart by
    host, the simulator (one port for all) by the service the request is signed for."""
    (iid,) = await buy(rig, count=1)
    sts_signed = rig.client(DEMO, service="sts")
    with pytest.raises(CloudError) as caught:
        await sts_signed.call("TagResources", {"ResourceList": names([iid]),
                                               "Tags": [{"TagKey": "k", "TagValue": "v"}]})
    assert caught.value.code == "InvalidAction"
    assert await tags_of(rig, iid) == {"pool": "a"}
    assert (await sts_signed.get_caller_identity()).account_id == ACCOUNT
    with pytest.raises(CloudError) as caught:
        await rig.client(DEMO, service="tag").call("GetCallerIdentity", {})
    assert caught.value.code == "InvalidAction"
