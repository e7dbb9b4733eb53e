"""The tag service, served on the simulator's port: TagResources and UnTagResources on CVM instances.

Tencent serves it at `tag.tencentcloudapi.com`, API version 2018-08-13 (the same date as STS's),
signed with service `tag`; the simulator answers a request of that version whose action is one of
these (`server.py`). Workloads use it to set tags on their own instance (spotpool's
`spotpool.io/do-not-disrupt`, through the instance's CAM role), the operator to mark instances it
is about to release; both must work here as they do in production.

What is checked, in order, each with a code from the tag service's catalogue (the SDK's
errorcodes.py and the actions' documented codes; which code answers which failure is partly a
guess, listed in docs/cvm-api.md):

- counts: 1..10 resources (`LimitExceeded.ResourceNumPerRequest`), 1..10 tags or keys
  (`LimitExceeded.TagNumPerRequest`), missing lists `MissingParameter`;
- tags: keys of 1..127 and values of 1..255 characters (`...TagKeyEmpty`, `...TagKeyLengthExceeded`,
  `...TagValueEmpty`, `...TagValueLengthExceeded`), of the documented characters and no leading or
  trailing blank (`...TagKeyCharacterIllegal`, `...TagValueCharacterIllegal`), a key given twice
  (`InvalidParameterValue.TagKeyDuplicate`), a system-reserved key (`qcs:`, `project`, `qcloud:`,
  `tencent:`: `InvalidParameter.ReservedTagKey`). `spotpool.io/` is not reserved here: only the
  operator's spec validation refuses it, and a workload must be able to set do-not-disrupt;
- names: six segments `qcs::<service>:<region>:uin/<account>:<prefix>/<id>`
  (`InvalidParameterValue.ResourceDescriptionError` otherwise), service `cvm`
  (`InvalidParameter.UnsupportedService`), prefix `instance`, a region of the simulator;
- ownership: every name must be in the caller's account, whoever signed (a key pair, a role
  session): another account's resource refuses the whole call (`AuthFailure.UnauthorizedOperation`,
  as CAM authorizes a request before the action runs), and so does an instance the caller's CAM tag
  restriction hides.

A name of the caller's account that names no instance (never bought, or gone) is, by default,
answered as success and changes nothing, which is what users of the real service report
(`api.tag_unknown_resources: ignore`); with `fail` it is listed in `FailedResources`
(`ResourceNotFound.RecordNotFound`) while the others are changed. `FailedResources` is empty when
everything was changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.iam import Principal
from spotpool.simulator.market import Market
from spotpool.simulator.params import _Wire
from spotpool.simulator.render import success_body

TAG_API_VERSION = "2018-08-13"
MAX_RESOURCES = 10  # "Value range of N: 0-9"
MAX_TAGS = 10
MAX_KEY = 127
MAX_VALUE = 255
# "Tag keys starting with qcs:, project, 项目 are reserved" (Use Limits); the SDK's codes name
# qcloud, tencent and project.
RESERVED_PREFIXES = ("qcs:", "qcloud:", "tencent:", "project", "项目")
# Letters and digits of any script, inner spaces, and the documented punctuation (English and
# Chinese input modes).
_PUNCTUATION = frozenset("+-=._:/@()[],;><【】（）：")
_RESOURCE = re.compile(
    r"qcs::(?P<service>[a-z0-9]+):(?P<region>[a-z0-9-]*):uin/(?P<account>[0-9]{1,20}):"
    r"(?P<prefix>[A-Za-z0-9_-]+)/(?P<id>[^\s/]+)"
)
_INSTANCE_ID = re.compile(r"ins-[a-z0-9]{8}")
UNKNOWN_RESOURCE = "ResourceNotFound.RecordNotFound"


class TagPair(_Wire):
    """The tag service's Tag: `TagKey`, `TagValue` (and `Category`, which the SDK may send)."""

    tag_key: str | None = None
    tag_value: str | None = None
    category: str | None = None


class TagResourcesParams(_Wire):
    resource_list: list[str] | None = None
    tags: list[TagPair] | None = None


class UnTagResourcesParams(_Wire):
    resource_list: list[str] | None = None
    tag_keys: list[str] | None = None


#: The parameter model of each action the tag service serves here.
TAG_PARAMS: dict[str, type[BaseModel]] = {
    "TagResources": TagResourcesParams,
    "UnTagResources": UnTagResourcesParams,
}


class TagService:
    """TagResources and UnTagResources over the market's instances."""

    def __init__(self, market: Market) -> None:
        self._market = market

    def handle(self, params: BaseModel, caller: Principal, request_id: str) -> bytes:
        if isinstance(params, TagResourcesParams):
            names = _names(params.resource_list)
            failed = self._change(names, caller, set_tags=_tags(params.tags))
        elif isinstance(params, UnTagResourcesParams):
            names = _names(params.resource_list)
            failed = self._change(names, caller, remove_keys=_keys(params.tag_keys))
        else:  # pragma: no cover - the server only routes the two models here
            raise ApiError("InvalidAction", "The tag service serves TagResources and UnTagResources.")
        return success_body({"FailedResources": failed}, request_id)

    def _change(
        self,
        names: list[str],
        caller: Principal,
        *,
        set_tags: Mapping[str, str] | None = None,
        remove_keys: list[str] | None = None,
    ) -> list[dict[str, str]]:
        """Apply one call's change region by region, after every name of it was checked."""
        by_region: dict[str, dict[str, str]] = {}  # region -> instance id -> name
        for name in dict.fromkeys(names):
            region, instance_id = self._resource(name, caller)
            by_region.setdefault(region, {})[instance_id] = name
        unknown: list[str] = []
        for region, ids in by_region.items():
            missing = self._market.change_tags(
                region,
                list(ids),
                set_tags=set_tags,
                remove_keys=tuple(remove_keys or ()),
                account=caller.account_id,
                visible_tags=caller.visible_tags,
            )
            unknown += [ids[iid] for iid in missing]
        if self._market.config.api.tag_unknown_resources == "ignore":
            return []
        return [
            {"Resource": name, "Code": UNKNOWN_RESOURCE, "Message": "The resource does not exist."}
            for name in unknown
        ]

    def _resource(self, name: str, caller: Principal) -> tuple[str, str]:
        """(region, instance id) of a six-segment CVM instance name of the caller's account."""
        match = _RESOURCE.fullmatch(name)
        if match is None:
            raise ApiError(
                "InvalidParameterValue.ResourceDescriptionError",
                f"{_shown(name)} is not a six-segment resource description "
                "(qcs::<service>:<region>:uin/<account>:<prefix>/<id>).",
            )
        if match["service"] != "cvm":
            raise ApiError(
                "InvalidParameter.UnsupportedService",
                f"The service {match['service']!r} is not simulated; the tag service here tags CVM "
                "instances.",
            )
        if (
            match["prefix"] != "instance"
            or not self._market.has_region(match["region"])
            or not _INSTANCE_ID.fullmatch(match["id"])
        ):
            raise ApiError(
                "InvalidParameterValue.ResourceDescriptionError",
                f"{_shown(name)} is not a CVM instance of a known region "
                "(qcs::cvm:<region>:uin/<account>:instance/ins-xxxxxxxx).",
            )
        if match["account"] != caller.account_id:
            raise ApiError(
                "AuthFailure.UnauthorizedOperation",
                f"{caller.arn} may not change the tags of resources of account {match['account']}.",
            )
        return match["region"], match["id"]


def _names(names: list[str] | None) -> list[str]:
    if not names:
        raise ApiError("MissingParameter", "The request is missing the required parameter ResourceList.")
    if len(names) > MAX_RESOURCES:
        raise ApiError(
            "LimitExceeded.ResourceNumPerRequest",
            f"At most {MAX_RESOURCES} resources per request, got {len(names)}.",
        )
    return names


def _tags(pairs: list[TagPair] | None) -> dict[str, str]:
    if not pairs:
        raise ApiError("MissingParameter", "The request is missing the required parameter Tags.")
    if len(pairs) > MAX_TAGS:
        raise ApiError("LimitExceeded.TagNumPerRequest", f"At most {MAX_TAGS} tags per request, got {len(pairs)}.")
    tags: dict[str, str] = {}
    for pair in pairs:
        key = _key(pair.tag_key)
        value = pair.tag_value or ""
        if not value:
            raise ApiError("InvalidParameterValue.TagValueEmpty", f"The value of tag {key!r} is empty.")
        if len(value) > MAX_VALUE:
            raise ApiError(
                "InvalidParameterValue.TagValueLengthExceeded",
                f"The value of tag {key!r} exceeds {MAX_VALUE} characters.",
            )
        if not _legal(value):
            raise ApiError(
                "InvalidParameterValue.TagValueCharacterIllegal",
                f"The value of tag {key!r} has a character tags do not allow, or a leading or "
                "trailing blank.",
            )
        if key in tags:
            raise ApiError("InvalidParameterValue.TagKeyDuplicate", f"The tag key {key!r} is given twice.")
        tags[key] = value
    return tags


def _keys(keys: list[str] | None) -> list[str]:
    if not keys:
        raise ApiError("MissingParameter", "The request is missing the required parameter TagKeys.")
    if len(keys) > MAX_TAGS:
        raise ApiError("LimitExceeded.TagNumPerRequest", f"At most {MAX_TAGS} tag keys per request, got {len(keys)}.")
    checked = [_key(key) for key in keys]
    if len(set(checked)) != len(checked):
        raise ApiError("InvalidParameterValue.TagKeyDuplicate", "A tag key is given twice.")
    return checked


def _key(key: str | None) -> str:
    if not key:
        raise ApiError("InvalidParameterValue.TagKeyEmpty", "A tag key is empty.")
    if len(key) > MAX_KEY:
        raise ApiError("InvalidParameterValue.TagKeyLengthExceeded", f"A tag key exceeds {MAX_KEY} characters.")
    if not _legal(key):
        raise ApiError(
            "InvalidParameterValue.TagKeyCharacterIllegal",
            f"The tag key {_shown(key)} has a character tags do not allow, or a leading or trailing blank.",
        )
    if key.lower().startswith(RESERVED_PREFIXES):
        raise ApiError("InvalidParameter.ReservedTagKey", f"The tag key {key!r} is reserved by the system.")
    return key


def _legal(text: str) -> bool:
    """Letters and digits (any script), inner spaces and the documented punctuation."""
    return text == text.strip(" ") and all(ch.isalnum() or ch == " " or ch in _PUNCTUATION for ch in text)


def _shown(text: str) -> str:
    """A caller's text quoted in a message: short and printable, else a fixed phrase."""
    return repr(text) if len(text) <= 300 and text.isprintable() else "the resource description"
