"""The CVM error taxonomy: every Tencent error code maps to one category with a retry rule.

The operator branches on categories (capacity, price, quota, ...) rather than on codes, but keeps
the code verbatim for conditions, events and metrics: an unknown code is never swallowed.

Choices Tencent's error-code tables leave open (whether to retry is not documented per code):

- Refusals scoped to one zone x instance type that no retry will cure (`ResourceUnavailable.*`,
  `ResourceNotFound.InvalidZoneInstanceType`, `UnsupportedOperation.NoInstanceTypeSupportSpot`)
  are CAPACITY, not INVALID_REQUEST: a pool that can never be bought must steer purchases to the
  other candidate pools, not mark the whole environment misconfigured.
- "Retry later" state conflicts (`UnsupportedOperation.InstanceStatePending`, `MutexOperation.*`,
  `OperationDenied.InstanceOperationInProgress`, ...) are TRANSIENT, so the client retries them.
- The bare `FailedOperation` code is UNKNOWN: no document says what it means.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from enum import StrEnum


class ErrorCategory(StrEnum):
    CAPACITY = "capacity"          # sold out / insufficient stock: try another pool, back off this one
    PRICE = "price"                # bid below market: not retryable until maxPrice or market changes
    QUOTA = "quota"                # account quota exhausted: back off
    THROTTLED = "throttled"        # RequestLimitExceeded*: retry with backoff
    AUTH = "auth"                  # credentials or permissions: not retryable
    INVALID_REQUEST = "invalid"    # malformed request or bad configuration: not retryable
    NOT_FOUND = "not_found"        # the resource does not exist
    TRANSIENT = "transient"        # internal errors, network: retry with backoff
    UNKNOWN = "unknown"            # a code not in the catalogue: kept verbatim, not retried


_C = ErrorCategory

# The codes Tencent documents for the calls spotpool makes (common codes and each action's), by category.
_CODES_BY_CATEGORY: dict[ErrorCategory, tuple[str, ...]] = {
    _C.CAPACITY: (
        "ResourceInsufficient",
        "ResourceInsufficient.SpecifiedInstanceType",
        "ResourceInsufficient.ZoneSoldOutForSpecifiedInstance",
        "ResourceInsufficient.AvailabilityZoneSoldOut",
        "ResourceInsufficient.InsufficientOfferingMinimum",
        "ResourceInsufficient.CloudDiskSoldOut",
        "ResourcesSoldOut.SpecifiedInstanceType",
        "ResourcesSoldOut.AvailableZone",
        "ResourcesSoldOut.EipInsufficient",
        "ResourceUnavailable",
        "ResourceUnavailable.InstanceType",
        "ResourceNotFound.InvalidZoneInstanceType",
        "InvalidParameterValue.InsufficientOffering",
        "LimitExceeded.SpotQuota",
        "UnsupportedOperation.NoInstanceTypeSupportSpot",
    ),
    _C.PRICE: ("InvalidParameterValue.InsufficientPrice",),
    _C.QUOTA: (
        "LimitExceeded",
        "LimitExceeded.UserSpotQuota",
        "LimitExceeded.InstanceQuota",
        "LimitExceeded.CvmInstanceQuota",
        "InstancesQuotaLimitExceeded",
        "LimitExceeded.PrepayQuota",
        "LimitExceeded.VpcSubnetNum",
        "LimitExceeded.UserReturnQuota",
        "LimitExceeded.TagKey",  # tag service: 1,000 tag keys per account
        "LimitExceeded.TagValue",  # tag service: 1,000 values per tag key
        "ResourceInsufficient.CidrBlock",
        "FailedOperation.NoAvailableIpAddressCountInSubnet",
        "InvalidAccount.InsufficientBalance",
        "InvalidAccount.UnpaidOrder",
    ),
    _C.THROTTLED: (
        "RequestLimitExceeded",
        "RequestLimitExceeded.UinLimitExceeded",
        "RequestLimitExceeded.GlobalRegionUinLimitExceeded",
        "RequestLimitExceeded.IPLimitExceeded",
    ),
    _C.AUTH: (
        "AuthFailure.SignatureFailure",
        "AuthFailure.SignatureExpire",
        "AuthFailure.SecretIdNotFound",
        "AuthFailure.InvalidSecretId",
        "AuthFailure.InvalidAuthorization",
        "AuthFailure.TokenFailure",
        "AuthFailure.MFAFailure",
        "AuthFailure.UnauthorizedOperation",
        "AuthFailure.CamRoleNameAuthenticateFailed",
        "UnauthorizedOperation",
        "UnauthorizedOperation.PermissionDenied",
        "UnauthorizedOperation.InvalidToken",
        "UnauthorizedOperation.MFAExpired",
        "UnauthorizedOperation.MFANotFound",
        "UnsupportedOperation.InvalidInstancesOwner",
        "IpInBlacklist",
        "IpNotInWhitelist",
        # Client-side codes of a credential provider (credentials.py): no credentials could be
        # had, or not for long enough to start a purchase. A transient cause is raised as
        # TRANSIENT whatever this default says.
        "CredentialsUnavailable",
        "CredentialsExpiring",
    ),
    _C.NOT_FOUND: (
        "ResourceNotFound",
        "ResourceNotFound.RecordNotFound",  # tag service: no such resource (the simulator's choice)
        "InvalidInstanceId.NotFound",
        "ResourceNotFound.InvalidInstanceIdNotFound",
        "UnsupportedOperation.InstanceStateTerminated",
        "UnsupportedOperation.InstanceStateTerminating",
    ),
    _C.TRANSIENT: (
        "InternalError",
        "InternalError.TradeUnknownError",
        "InternalServerError",
        "ServiceUnavailable",
        "FailedOperation.InquiryPriceFailed",
        "FailedOperation.SecurityGroupActionFailed",
        "FailedOperation.ResourceTagProcessing",  # tag service: "the resource's tags are being processed"
        "OperationDenied.InstanceOperationInProgress",
        "MutexOperation.TaskRunning",
        "ResourceInUse",
        "InvalidInstanceState",
        "UnsupportedOperation.InstanceStatePending",
        "UnsupportedOperation.InstanceStateLaunchFailed",
        "UnsupportedOperation.InstanceStateIsolating",
        "UnsupportedOperation.InstanceStateStarting",
        "UnsupportedOperation.InstanceStateStopping",
        "UnsupportedOperation.InstanceStateRebooting",
        # Client-side codes (never sent by the server), as the official SDKs name them.
        "ClientNetworkError",
        "ServerNetworkError",
        "ClientError.NetworkError",
        "ClientError.ParseJsonError",
    ),
    _C.INVALID_REQUEST: (
        "ResourceInsufficient.CloudDiskUnavailable",
        "UnsupportedOperation.SpotUnsupportedRegion",
        "UnsupportedOperation.InstanceChargeType",
        "UnsupportedOperation.InstanceMixedPricingModel",
        "InvalidParameterValue.InstanceNotSupportedMixPricingModel",
        "LimitExceeded.AssociateUSGLimitExceeded",
        "InvalidParameterValue.LimitExceeded",
        "InvalidFilterValue.LimitExceeded",
        "InvalidParameterValueLimit",
        "InvalidInstanceId.Malformed",
        "InvalidParameterValue.InstanceIdMalformed",
        "UnsupportedOperation.InstancesProtected",
        "InvalidClientToken.TooLong",
        "FailedOperation.IllegalTagKey",
        "FailedOperation.IllegalTagValue",
        "FailedOperation.TagKeyReserved",
        "MissingParameter",
        "MissingParameter.AtLeastOne",
        "UnknownParameter",
        "InvalidParameter",
        "InvalidParameter.HostNameIllegal",
        "InvalidParameterCombination",
        "InvalidParameterValue",
        "InvalidParameterValue.Range",
        "InvalidParameterValue.ZoneNotSupported",
        "InvalidParameterValue.InstanceTypeNotFound",
        "InvalidInstanceType.Malformed",
        "InvalidImageId.Malformed",
        "InvalidImageId.NotFound",
        "InvalidParameterValue.InvalidImageForGivenInstanceType",
        "InvalidParameterValue.InvalidUserDataFormat",
        "InvalidParameterValue.IllegalHostName",
        "InvalidParameterValue.InvalidVagueName",
        "InvalidInstanceName.TooLong",
        "InvalidParameterValue.InvalidPassword",
        "InvalidPassword",
        "InvalidParameterValue.VpcIdMalformed",
        "InvalidParameterValue.VpcIdNotExist",
        "InvalidParameterValue.SubnetIdMalformed",
        "InvalidParameterValue.SubnetNotExist",
        "InvalidParameterValue.VpcIdSubnetIdNotMatch",
        "InvalidParameterValue.SubnetIdZoneIdNotMatch",
        "InvalidParameterValue.VpcIdZoneIdNotMatch",
        "InvalidSecurityGroupId.NotFound",
        "InvalidSgId.Malformed",
        "InvalidZone.MismatchRegion",
        "InvalidRegion.NotFound",
        "InvalidParameterValue.InvalidRegion",
        "InvalidProjectId.NotFound",
        "InvalidParameterValue.TagKeyNotFound",
        "InvalidParameterValue.TagQuotaLimitExceeded",
        "InvalidParameterValue.DuplicateTags",
        "InvalidFilter",
        "InvalidParameterValue.InvalidParameterMinCount",
        "UnsupportedOperation.MinCountUnsupportedChargeType",
        "UnsupportedOperation.MinCountUnsupportedRegion",
        "UnsupportedOperation",
        # RunInstances ActionTimer: a malformed ActionTime (documented), and, by the simulator's
        # guess, one in the past or less than 5 minutes ahead; setting the timer failed.
        "InvalidParameterValue.InvalidTimeFormat",
        "UnsupportedOperation.NotSupportImportInstancesActionTimer",
        # Tag service (2018-08-13) TagResources / UnTagResources. The per-request and per-resource
        # limits are bad requests, not quotas a later retry may find free (LimitExceeded.* would
        # otherwise read as QUOTA).
        "InvalidParameter.ReservedTagKey",
        "InvalidParameter.Tag",
        "InvalidParameter.UnsupportedService",
        "InvalidParameterValue.ResourceDescriptionError",
        "InvalidParameterValue.ResourceIdInvalid",
        "InvalidParameterValue.TagKeyCharacterIllegal",
        "InvalidParameterValue.TagKeyDuplicate",
        "InvalidParameterValue.TagKeyEmpty",
        "InvalidParameterValue.TagKeyLengthExceeded",
        "InvalidParameterValue.TagValueCharacterIllegal",
        "InvalidParameterValue.TagValueEmpty",
        "InvalidParameterValue.TagValueLengthExceeded",
        "LimitExceeded.ResourceNumPerRequest",
        "LimitExceeded.TagNumPerRequest",
        "LimitExceeded.ResourceAttachedTags",
        "FailedOperation.PolicyEnforcedInvalid",
        # Platform-wide common codes.
        "ActionOffline",
        "DryRunOperation",  # "would have succeeded": run_instances(dry_run=True) returns []
        "InvalidAction",
        "InvalidRequest",
        "NoSuchProduct",
        "NoSuchVersion",
        "RequestSizeLimitExceeded",
        "ResponseSizeLimitExceeded",
        "UnsupportedProtocol",
        "UnsupportedRegion",
        # Client-side codes for requests the client itself refused to build.
        "ClientParamsError",
        "ClientError",
    ),
    # InvalidResponse: client-side, for a server answer that breaks the protocol's documented
    # shape (an odd error code, an oversized reply, a listing larger than the client will hold).
    # Not retried: a lying endpoint gets no second chance to waste memory or time.
    _C.UNKNOWN: ("FailedOperation", "InvalidResponse"),
}

CODE_CATEGORIES: dict[str, ErrorCategory] = {
    code: category for category, codes in _CODES_BY_CATEGORY.items() for code in codes
}

# Families whose every member shares a category, so a code Tencent adds later still lands
# in the right place. Families with mixed members (UnsupportedOperation.*, FailedOperation.*)
# are deliberately absent: guessing there would hide a new code behind a wrong category.
_FAMILY_CATEGORIES: dict[str, ErrorCategory] = {
    "RequestLimitExceeded": _C.THROTTLED,
    "AuthFailure": _C.AUTH,
    "UnauthorizedOperation": _C.AUTH,
    "ResourceInsufficient": _C.CAPACITY,
    "ResourcesSoldOut": _C.CAPACITY,
    "ResourceUnavailable": _C.CAPACITY,
    "InternalError": _C.TRANSIENT,
    "LimitExceeded": _C.QUOTA,
    "ResourceNotFound": _C.NOT_FOUND,
    "InvalidParameter": _C.INVALID_REQUEST,
    "InvalidParameterValue": _C.INVALID_REQUEST,
    "MissingParameter": _C.INVALID_REQUEST,
    "UnknownParameter": _C.INVALID_REQUEST,
}

# TerminateInstances refuses a batch when one of its ids is already destroyed or on its way out;
# for a caller that wants the instance gone, that is success.
ALREADY_GONE_CODES = frozenset({
    "UnsupportedOperation.InstanceStateTerminated",
    "UnsupportedOperation.InstanceStateTerminating",
    "InvalidInstanceId.NotFound",
    "ResourceNotFound.InvalidInstanceIdNotFound",
})

ACTION_TIMER_REFUSED = "InvalidParameterValue.InvalidTimeFormat"
"""RunInstances' refusal of its ActionTimer (an ActionTime malformed, past, or under 5 minutes
ahead of CVM's clock): INVALID_REQUEST, never retried as is; a caller whose clock runs behind
CVM's may try again with a later time. Nothing was bought."""

SIGNATURE_EXPIRED = "AuthFailure.SignatureExpire"
DRY_RUN_PASSED = "DryRunOperation"
CLIENT_NETWORK_ERROR = "ClientNetworkError"
SERVER_NETWORK_ERROR = "ServerNetworkError"
INVALID_RESPONSE = "InvalidResponse"
OTHER_CODE_LABEL = "Other"

# The documented shape of a CVM error code: dotted CamelCase words (`AuthFailure.SignatureFailure`,
# `LimitExceeded.CvmInstanceQuota`); the longest documented one is under 60 characters.
MAX_CODE_LENGTH = 128
_CODE_SHAPE = re.compile(r"[A-Za-z]+(?:\.[A-Za-z0-9]+)*")
# RequestIds are UUIDs; allow any short token of that alphabet, nothing else.
_REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_MESSAGE_LENGTH = 300
_BLANKS = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x1f\x85")
_ELLIPSIS = "..."


def valid_code(code: object) -> bool:
    """Whether a server-sent error code has the documented shape (and a sane length).

    A code travels into conditions, events and metric labels: anything else (control characters,
    markup, megabytes) is replaced by INVALID_RESPONSE before it reaches a caller.
    """
    return (
        isinstance(code, str)
        and len(code) <= MAX_CODE_LENGTH
        and _CODE_SHAPE.fullmatch(code) is not None
    )


def valid_request_id(request_id: object) -> str | None:
    """The RequestId if it looks like one, else None: it is shown to users next to the code."""
    if isinstance(request_id, str) and _REQUEST_ID_SHAPE.fullmatch(request_id):
        return request_id
    return None


def clean_message(
    text: str, secrets: Iterable[str | None] = (), limit: int = MAX_MESSAGE_LENGTH
) -> str:
    """A server-sent message made safe to show: no control or format characters (no terminal
    escapes, no bidi overrides, no newlines to forge log lines), secrets redacted, `limit`
    characters at most. Line breaks, tabs and Unicode spaces become one plain space; other
    control and format characters are dropped.

    Only a bounded prefix is examined, so a megabyte message costs no more than a short one;
    the prefix is long enough that a secret straddling the clip point is still found whole.
    Characters are dropped before redaction, so a secret split by control characters is caught.
    """
    wanted = [secret for secret in secrets if secret]
    window = limit * 4 + sum(len(secret) for secret in wanted)
    clipped = len(text) > window
    text = "".join(
        " " if ch in _BLANKS or unicodedata.category(ch)[0] == "Z"
        else "" if unicodedata.category(ch)[0] == "C"
        else ch
        for ch in text[:window]
    )
    text = " ".join(text.split())  # runs of blanks (what control characters became) collapse
    for secret in sorted(wanted, key=len, reverse=True):
        text = text.replace(secret, "***")
    if clipped or len(text) > limit:
        text = text[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return text


def code_label(code: str | None) -> str:
    """A bounded metric label for an error code: catalogued codes verbatim, anything else
    `Other`. A server can invent any number of well-shaped codes; Prometheus series must not
    grow with them."""
    if code is None:
        return ""
    return code if code in CODE_CATEGORIES else OTHER_CODE_LABEL


def classify(code: str) -> ErrorCategory:
    """The category of a Tencent error code: exact match first, then its dotted family."""
    category = CODE_CATEGORIES.get(code)
    if category is not None:
        return category
    return _FAMILY_CATEGORIES.get(code.split(".", 1)[0], _C.UNKNOWN)


def retryable(category: ErrorCategory) -> bool:
    """Whether the client retries the same request: only throttling and transient failures.

    Capacity, price and quota errors are retryable only by the operator's planner (later, or in
    another pool), never by repeating the identical request at once.
    """
    return category in (_C.THROTTLED, _C.TRANSIENT)


def is_already_gone(code: str) -> bool:
    """Whether a TerminateInstances error means the instance is already destroyed or going."""
    return code in ALREADY_GONE_CODES


class CloudError(Exception):
    """A CVM API call that failed: the Tencent code verbatim, with its category and retry rule."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        action: str,
        request_id: str | None = None,
        category: ErrorCategory | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.action = action
        self.request_id = request_id
        self.category = category if category is not None else classify(code)
        super().__init__(code, message)

    @property
    def retryable(self) -> bool:
        return retryable(self.category)

    @property
    def already_gone(self) -> bool:
        return is_already_gone(self.code)

    def __str__(self) -> str:
        text = f"{self.action} failed: {self.code}: {self.message}"
        if self.request_id:
            text += f" (RequestId {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, action={self.action!r}, "
            f"category={self.category.value!r}, request_id={self.request_id!r})"
        )


class CloudNetworkError(CloudError):
    """The request never got a Tencent answer: transport failure, timeout, non-200 or garbage.

    Always TRANSIENT: the request may or may not have been executed, which is why the client only
    retries such failures for requests that are idempotent.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        action: str,
        request_id: str | None = None,
        http_status: int | None = None,
    ) -> None:
        self.http_status = http_status
        super().__init__(
            code, message, action=action, request_id=request_id, category=_C.TRANSIENT
        )
