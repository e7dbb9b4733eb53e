"""EnvironmentSpec: typing, defaults, and a ValueError naming the field for anything invalid."""

from __future__ import annotations

import re
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
import yaml

from spotpool.api.spec import (
    _TAG_KEY_SPACE,
    RESERVED_TAG_PREFIX,
    AllocationStrategy,
    DiskType,
    EnvironmentSpec,
    ScaleInPolicy,
    SecretRef,
    SpecError,
    _fold,
    reserved_prefix_regex,
    reserved_tag_key,
)
from tests.conftest import CRD_FILE
from tests.support.specs import pool_spec

MINIMAL: dict[str, Any] = pool_spec(expectedCount=10)


def spec_with(**changes: Any) -> dict[str, Any]:
    return {**MINIMAL, **changes}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in MINIMAL.items() if k != key}


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = EnvironmentSpec.from_k8s(MINIMAL)
    assert spec.expected_count == 10
    assert spec.max_price == Decimal("0.0923")
    assert spec.zones == ("ap-guangzhou-3", "ap-guangzhou-4")
    assert spec.instance_types == ("S5.MEDIUM4", "SA2.MEDIUM4")
    assert spec.allocation_strategy is AllocationStrategy.LOWEST_PRICE
    assert spec.scale_in_policy is ScaleInPolicy.NEWEST_FIRST
    assert spec.paused is False
    assert spec.credentials_secret_ref.name == "tencentcloud-credentials"
    assert (spec.endpoint, spec.network, spec.system_disk, spec.login_settings, spec.user_data) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert spec.instance_name_prefix is None
    assert spec.tags == {}


def test_full_spec_from_the_design_example() -> None:
    spec = EnvironmentSpec.from_k8s(
        spec_with(
            allocationStrategy="Diversified",
            endpoint="http://127.0.0.1:9000",
            instanceNamePrefix="render-farm",
            network={
                "vpcId": "vpc-2zehk4c3",
                "subnetIds": {"ap-guangzhou-3": "subnet-aaaa1111", "ap-guangzhou-4": "subnet-bbbb2222"},
                "securityGroupIds": ["sg-8jlk3f3r"],
            },
            systemDisk={"type": "CLOUD_PREMIUM", "sizeGiB": 50},
            loginSettings={"keyIds": ["skey-3glfot13"]},
            userData="#!/bin/sh\necho hello\n",
            tags={"team": "render"},
            scaleInPolicy="MostExpensiveFirst",
            paused=True,
        )
    )
    assert spec.allocation_strategy is AllocationStrategy.DIVERSIFIED
    assert spec.endpoint == "http://127.0.0.1:9000"
    assert spec.network is not None and spec.network.subnet_ids["ap-guangzhou-4"] == "subnet-bbbb2222"
    assert spec.network.security_group_ids == ("sg-8jlk3f3r",)
    assert spec.system_disk is not None
    assert (spec.system_disk.type, spec.system_disk.size_gib) == (DiskType.CLOUD_PREMIUM, 50)
    assert spec.login_settings is not None and spec.login_settings.key_ids == ("skey-3glfot13",)
    assert spec.user_data == "#!/bin/sh\necho hello\n"
    assert spec.tags == {"team": "render"}
    assert spec.scale_in_policy is ScaleInPolicy.MOST_EXPENSIVE_FIRST
    assert spec.paused is True


def test_accepts_mapping_views_as_kopf_hands_them_over() -> None:
    view = MappingProxyType({**MINIMAL, "credentialsSecretRef": MappingProxyType({"name": "creds"})})
    assert EnvironmentSpec.from_k8s(view).credentials_secret_ref.name == "creds"


def test_snake_case_names_work_for_programmatic_construction() -> None:
    spec = EnvironmentSpec(
        expected_count=1,
        max_price=Decimal("0.05"),
        region="ap-guangzhou",
        zones=("ap-guangzhou-3",),
        instance_types=("S5.MEDIUM4",),
        image_id="img-pmqg1cw7",
        credentials_secret_ref=SecretRef(name="creds"),
    )
    assert spec.max_price == Decimal("0.05")


def test_spec_is_immutable() -> None:
    spec = EnvironmentSpec.from_k8s(MINIMAL)
    with pytest.raises(ValueError):
        spec.expected_count = 3


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (without("expectedCount"), "spec.expectedCount"),
        (spec_with(expectedCount=-1), "spec.expectedCount"),
        (spec_with(expectedCount=10001), "spec.expectedCount"),
        (spec_with(expectedCount="10"), "spec.expectedCount"),
        (spec_with(expectedCount=True), "spec.expectedCount"),
        (spec_with(maxPrice="0"), "spec.maxPrice"),
        (spec_with(maxPrice="-0.1"), "spec.maxPrice"),
        (spec_with(maxPrice="abc"), "spec.maxPrice"),
        (spec_with(maxPrice="NaN"), "spec.maxPrice"),
        (spec_with(maxPrice="1e-3"), "spec.maxPrice"),
        (spec_with(maxPrice="0.0000001"), "spec.maxPrice"),
        (spec_with(maxPrice="1234567"), "spec.maxPrice"),
        (spec_with(maxPrice=0.05), "spec.maxPrice"),
        (without("maxPrice"), "spec.maxPrice"),
        (spec_with(region="Guangzhou"), "spec.region"),
        (spec_with(zones=[]), "spec.zones"),
        (spec_with(zones=["ap-guangzhou-3", "ap-guangzhou-3"]), "spec.zones"),
        (spec_with(zones=["ap-shanghai-2"]), "spec.zones"),
        (spec_with(instanceTypes=[]), "spec.instanceTypes"),
        (spec_with(instanceTypes=["S5 MEDIUM4"]), "spec.instanceTypes[0]"),
        (spec_with(instanceTypes=["s5.medium4"]), "spec.instanceTypes[0]"),
        (spec_with(instanceTypes=[f"S{i}.MEDIUM4" for i in range(21)]), "spec.instanceTypes"),
        (spec_with(zones=["guangzhou"]), "spec.zones[0]"),
        (spec_with(instanceTypes=["S5.MEDIUM4", "S5.MEDIUM4"]), "spec.instanceTypes"),
        (spec_with(allocationStrategy="Cheapest"), "spec.allocationStrategy"),
        (spec_with(imageId="ubuntu"), "spec.imageId"),
        (spec_with(imageId="img-pmqg1cw"), "spec.imageId"),
        (without("credentialsSecretRef"), "spec.credentialsSecretRef"),
        (spec_with(credentialsSecretRef={"name": "Not_A_Name"}), "spec.credentialsSecretRef.name"),
        (spec_with(endpoint="cvm.tencentcloudapi.com"), "spec.endpoint"),
        (spec_with(endpoint="https://cvm.tencentcloudapi.com/v3"), "spec.endpoint"),
        # User info once passed the model and made every reconcile raise (issue 10).
        (spec_with(endpoint="https://u:p@cvm.tencentcloudapi.com"), "spec.endpoint"),
        (spec_with(endpoint="https://cvm.tencentcloudapi.com#frag"), "spec.endpoint"),
        (spec_with(endpoint="https://cvm.tencentcloudapi.com?x=1"), "spec.endpoint"),
        (spec_with(endpoint="ftp://cvm.tencentcloudapi.com"), "spec.endpoint"),
        (spec_with(instanceNamePrefix="x" * 41), "spec.instanceNamePrefix"),
        (spec_with(instanceNamePrefix="-render"), "spec.instanceNamePrefix"),
        (spec_with(network={"vpcId": "vpc-2zehk4c3"}), "spec.network"),
        (
            spec_with(network={"vpcId": "vpc-2zehk4c3", "subnetIds": {"ap-guangzhou-3": "subnet-aaaa1111"}}),
            "spec.network",
        ),
        (spec_with(network={"subnetIds": {"ap-guangzhou-3": "subnet-aaaa1111"}}), "spec.network"),
        (
            spec_with(
                network={
                    "vpcId": "vpc-2zehk4c3",
                    "subnetIds": {
                        "ap-guangzhou-3": "subnet-aaaa1111",
                        "ap-guangzhou-4": "subnet-bbbb2222",
                        "ap-guangzhou-6": "subnet-cccc3333",
                    },
                }
            ),
            "spec.network",
        ),
        (
            spec_with(network={"subnetIds": {"ap-guangzhou-3": "subnet-a"}}),
            "spec.network.subnetIds.ap-guangzhou-3",
        ),
        (spec_with(network={"securityGroupIds": ["sg-8jlk3f3r"] * 2}), "spec.network.securityGroupIds"),
        (
            spec_with(network={"securityGroupIds": [f"sg-{i:08d}" for i in range(6)]}),
            "spec.network.securityGroupIds",
        ),
        (spec_with(systemDisk={"type": "FLOPPY"}), "spec.systemDisk.type"),
        (spec_with(systemDisk={"sizeGiB": 19}), "spec.systemDisk.sizeGiB"),
        (spec_with(systemDisk={"sizeGiB": 1025}), "spec.systemDisk.sizeGiB"),
        (spec_with(loginSettings={"keyIds": ["skey-3glfot13"] * 2}), "spec.loginSettings.keyIds"),
        (spec_with(userData="x" * 12289), "spec.userData"),
        (spec_with(userData="é" * 6145), "spec.userData"),
        (spec_with(tags={"spotpool.io/environment": "x"}), "spec.tags"),
        (spec_with(tags={"SPOTPOOL.IO/environment": "x"}), "spec.tags"),
        (spec_with(tags={" spotpool.io/environment": "x"}), "spec.tags"),
        (spec_with(tags={"team": "a", "\tSpotPool.io/launch\u3000": "x"}), "spec.tags"),
        (spec_with(tags={"k" * 128: "x"}), "spec.tags"),
        (spec_with(tags={"team": "x" * 256}), "spec.tags.team"),
        (spec_with(tags={f"t{i}": "x" for i in range(21)}), "spec.tags"),
        (spec_with(tags={"team": 3}), "spec.tags.team"),
        (spec_with(scaleInPolicy="Random"), "spec.scaleInPolicy"),
        (spec_with(paused="yes"), "spec.paused"),
        (spec_with(replicas=3), "spec.replicas"),
        (spec_with(maxHourlyCost="0"), "spec.maxHourlyCost"),
        (spec_with(maxHourlyCost="lots"), "spec.maxHourlyCost"),
        (spec_with(onDemand={"baseCount": -1}), "spec.onDemand.baseCount"),
        (spec_with(onDemand={"baseCount": "2"}), "spec.onDemand.baseCount"),
        (spec_with(onDemand={"fallback": {}}), "spec.onDemand.fallback.after"),
        (spec_with(onDemand={"fallback": {"after": "5 minutes"}}), "spec.onDemand.fallback.after"),
        (spec_with(onDemand={"fallback": {"after": "m"}}), "spec.onDemand.fallback.after"),
        (spec_with(onDemand={"fallback": {"after": "25h"}}), "spec.onDemand.fallback.after"),
        (spec_with(onDemand={"fallback": {"after": 300}}), "spec.onDemand.fallback.after"),
        (spec_with(onDemand={"fallback": {"after": "5m", "reasons": []}}), "spec.onDemand.fallback.reasons"),
        (spec_with(onDemand={"fallback": {"after": "5m", "reasons": ["Expensive"]}}),
         "spec.onDemand.fallback.reasons[0]"),
        (spec_with(onDemand={"fallback": {"after": "5m", "reasons": ["SoldOut", "SoldOut"]}}),
         "spec.onDemand.fallback.reasons"),
        (spec_with(onDemand={"fallback": {"after": "5m", "maxCount": -1}}), "spec.onDemand.fallback.maxCount"),
        (spec_with(onDemand={"returnToSpot": {"maxInFlight": 0}}), "spec.onDemand.returnToSpot.maxInFlight"),
        (spec_with(onDemand={"returnToSpot": {"maxInFlight": "0%"}}), "spec.onDemand.returnToSpot.maxInFlight"),
        (spec_with(onDemand={"returnToSpot": {"maxInFlight": "101%"}}), "spec.onDemand.returnToSpot.maxInFlight"),
        (spec_with(onDemand={"returnToSpot": {"maxInFlight": "half"}}), "spec.onDemand.returnToSpot.maxInFlight"),
        (spec_with(onDemand={"returnToSpot": {"enabled": "yes"}}), "spec.onDemand.returnToSpot.enabled"),
        (spec_with(onDemand={"spot": 1}), "spec.onDemand.spot"),
    ],
)
def test_invalid_values_raise_a_value_error_naming_the_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as caught:
        EnvironmentSpec.from_k8s(document)
    assert isinstance(caught.value, SpecError)
    assert str(caught.value).startswith(f"{field}:"), str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        EnvironmentSpec.from_k8s(spec_with(expectedCount=-1, imageId="bad"))
    assert "spec.expectedCount:" in str(caught.value)
    assert "spec.imageId:" in str(caught.value)


def test_user_data_limit_is_12288_bytes_of_utf8() -> None:
    assert EnvironmentSpec.from_k8s(spec_with(userData="x" * 12288)).user_data == "x" * 12288
    assert EnvironmentSpec.from_k8s(spec_with(userData="é" * 6144)).user_data == "é" * 6144


def test_system_disk_fields_default_as_in_the_crd() -> None:
    spec = EnvironmentSpec.from_k8s(spec_with(systemDisk={}))
    assert spec.system_disk is not None
    assert (spec.system_disk.type, spec.system_disk.size_gib) == (DiskType.CLOUD_PREMIUM, 50)


def test_login_settings_without_keys_are_accepted() -> None:
    spec = EnvironmentSpec.from_k8s(spec_with(loginSettings={}))
    assert spec.login_settings is not None and spec.login_settings.key_ids == ()


def test_endpoint_may_carry_a_port_and_a_trailing_slash() -> None:
    assert (
        EnvironmentSpec.from_k8s(spec_with(endpoint="http://127.0.0.1:9000/")).endpoint
        == "http://127.0.0.1:9000/"
    )


def test_max_price_keeps_its_exact_decimal_value() -> None:
    assert str(EnvironmentSpec.from_k8s(spec_with(maxPrice="0.10")).max_price) == "0.10"


def test_zone_check_is_skipped_when_the_region_itself_is_wrong() -> None:
    with pytest.raises(SpecError) as caught:
        EnvironmentSpec.from_k8s(spec_with(region="Bad"))
    assert "spec.zones" not in str(caught.value)


def test_zones_must_start_with_the_region() -> None:
    with pytest.raises(SpecError, match=r"^spec.zones: ap-shanghai-2 not zones of region ap-guangzhou"):
        EnvironmentSpec.from_k8s(spec_with(zones=["ap-shanghai-2"]))


def test_finance_region_zones_are_accepted() -> None:
    spec = EnvironmentSpec.from_k8s(spec_with(region="ap-shanghai-fsi", zones=["ap-shanghai-fsi-1"]))
    assert spec.zones == ("ap-shanghai-fsi-1",)


def test_on_demand_fields_and_their_defaults() -> None:
    spec = EnvironmentSpec.from_k8s(spec_with(
        expectedCount=10, maxHourlyCost="2.50", onDemand={"baseCount": 3, "fallback": {"after": "1h30m"}}))
    assert spec.max_hourly_cost == Decimal("2.50")
    assert spec.on_demand is not None and spec.base_count == 3
    fallback = spec.on_demand.fallback
    assert fallback is not None and fallback.after_seconds == 5400 and fallback.max_count is None
    assert [r.value for r in fallback.reasons] == ["SoldOut", "QuotaExceeded", "PriceAboveMax"]
    assert spec.on_demand.return_to_spot.enabled and spec.on_demand.return_to_spot.max_in_flight == "25%"
    assert spec.on_demand.return_to_spot.budget(10) == 3  # ceil(2.5)


def test_the_base_is_capped_at_expected_count_and_budgets_never_reach_zero() -> None:
    spec = EnvironmentSpec.from_k8s(
        spec_with(expectedCount=2, onDemand={"baseCount": 5, "returnToSpot": {"maxInFlight": "1%"}}))
    assert spec.base_count == 2
    assert spec.on_demand is not None and spec.on_demand.return_to_spot.budget(2) == 1
    assert spec.on_demand.return_to_spot.budget(0) == 1


# spotpool's ownership tags: refused in any letter case and whatever whitespace surrounds them,
# exactly as the CRD's rule refuses them (tests/integration/test_crd.py runs these on the API server).
RESERVED_KEYS = [
    "spotpool.io/environment-uid",
    "SPOTPOOL.IO/environment-uid",
    "SpotPool.Io/launch",
    " spotpool.io/cluster",
    "spotpool.io/namespace ",
    "\t\n spotpool.io/x",
    "\u00a0spotpool.io/x",  # no-break space
    "\u3000SPOTPOOL.IO/x\u2029",  # ideographic space, paragraph separator
    "\u017fpotpool.io/x",  # long s: case-folds to s
    "spotpool.io/",
    "\uff53potpool.io/x",  # fullwidth s: NFKC
    "\U0001d42c\U0001d429\U0001d428\U0001d42d\U0001d429\U0001d428\U0001d428\U0001d425.io/x",  # mathematical bold
    "\u24e2potpool\uff0eio\uff0fx",  # circled s, fullwidth full stop and solidus
]
ALLOWED_KEYS = [
    "team",
    "spotpool.io",  # no slash: not under the prefix
    "spotpool.iox/a",
    "team/spotpool.io/x",
    "x spotpool.io/x",
    "\u200bspotpool.io/x",  # zero-width space is not whitespace (nor for CEL's trim)
    "\x1fspotpool.io/x",  # U+001F: str.isspace() says yes, CEL's trim() says no
    "spotpool\u0131o/x",  # dotless i folds to nothing ASCII
    "spotp\u00f6ol.io/x",  # o with diaeresis is another letter
]


@pytest.mark.parametrize("key", RESERVED_KEYS, ids=repr)
def test_the_reserved_prefix_is_refused_in_any_case_and_spacing(key: str) -> None:
    assert reserved_tag_key(key)
    with pytest.raises(SpecError) as caught:
        EnvironmentSpec.from_k8s(spec_with(tags={"team": "render", key: "x"}))
    message = str(caught.value)
    assert message.startswith("spec.tags:") and "reserved prefix 'spotpool.io/'" in message, message


@pytest.mark.parametrize("key", ALLOWED_KEYS, ids=repr)
def test_keys_outside_the_reserved_prefix_are_accepted(key: str) -> None:
    assert not reserved_tag_key(key)
    assert EnvironmentSpec.from_k8s(spec_with(tags={key: "x"})).tags == {key: "x"}


def test_the_crd_rule_is_the_generated_pattern_and_agrees_with_the_model() -> None:
    """The CRD's rule is `k.trim().matches(<reserved_prefix_regex()>)`: one character class per
    prefix character, of every code point that folds (NFKC, case fold) to it. It agrees with
    `reserved_tag_key` because no code point folds to two or more characters of the prefix (checked
    here over all of Unicode) and no sequence composes into an ASCII character."""
    pattern = reserved_prefix_regex()
    crd = yaml.safe_load(CRD_FILE.read_text())
    tags = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["tags"]
    rules = [v["rule"] for v in tags["x-kubernetes-validations"]]
    assert f'self.all(k, !k.trim().matches(r"{pattern}"))' in rules
    for point in range(0x110000):
        if not 0xD800 <= point <= 0xDFFF:
            folded = _fold(chr(point))
            assert len(folded) <= 1 or folded not in RESERVED_TAG_PREFIX, hex(point)
    python = re.compile(re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: re.escape(chr(int(m[1], 16))), pattern))
    for key in RESERVED_KEYS + ALLOWED_KEYS:
        assert bool(python.match(key.strip(_TAG_KEY_SPACE))) == reserved_tag_key(key), repr(key)


ROLE = "qcs::cam::uin/100000000001:roleName/team-a"


@pytest.mark.parametrize(("credentials", "secret", "source"), [
    (None, True, "Secret"),
    ({"source": "Secret"}, True, "Secret"),
    ({"source": "OperatorIdentity"}, False, "OperatorIdentity"),
    ({"source": "Role", "roleArn": ROLE}, False, "Role"),
    ({"source": "Role", "roleArn": "qcs::cam::uin/1:role/4611686018427", "externalId": "team-a:batch"}, False, "Role"),
])
def test_credential_sources(credentials: dict[str, str] | None, secret: bool, source: str) -> None:
    raw = spec_with(credentials=credentials) if credentials else spec_with()
    if not secret:
        del raw["credentialsSecretRef"]
    spec = EnvironmentSpec.from_k8s(raw)
    assert spec.credential_source.value == source
    assert (spec.secret_name is not None) == secret


@pytest.mark.parametrize(("credentials", "secret", "needle"), [
    (None, False, "spec.credentialsSecretRef: is required unless"),
    ({"source": "OperatorIdentity"}, True, "spec.credentialsSecretRef: must not be set with spec.credentials.source"),
    ({"source": "Role"}, False, "source Role needs roleArn"),
    ({"source": "Role", "roleArn": "arn:aws:iam::1:role/x"}, False, "spec.credentials.roleArn"),
    ({"source": "OperatorIdentity", "externalId": "abc"}, False, "roleArn and externalId are for source Role"),
    ({"source": "Env"}, False, "spec.credentials.source"),
])
def test_credential_sources_refused_name_the_field(credentials: dict[str, str] | None, secret: bool,
                                                   needle: str) -> None:
    raw = spec_with(credentials=credentials) if credentials else spec_with()
    if not secret:
        del raw["credentialsSecretRef"]
    with pytest.raises(SpecError) as caught:
        EnvironmentSpec.from_k8s(raw)
    assert needle in str(caught.value) and str(caught.value).startswith("spec.credentials"), str(caught.value)
    assert "spec.credentials" in needle or needle in str(caught.value)
