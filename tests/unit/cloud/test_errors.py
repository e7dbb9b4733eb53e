"""The error taxonomy against the reference's tables (sections 7.1 to 7.8 and the common codes).

Each row is copied from the reference with its retry letter: C capacity, Q quota, R retry the same
request, N do not retry unchanged, ? undecided. The test checks both the category we chose and
that the choice keeps the reference's retry meaning.
"""

from __future__ import annotations

import pytest

from spotpool.cloud.errors import (
    ALREADY_GONE_CODES,
    CODE_CATEGORIES,
    CloudError,
    CloudNetworkError,
    ErrorCategory,
    classify,
    is_already_gone,
    retryable,
)

C = ErrorCategory
REFERENCE_ROWS: list[tuple[str, str, ErrorCategory]] = [
    # 7.1 capacity / sold out
    ("ResourceInsufficient.SpecifiedInstanceType", "C", C.CAPACITY),
    ("ResourceInsufficient.ZoneSoldOutForSpecifiedInstance", "C", C.CAPACITY),
    ("ResourceInsufficient.AvailabilityZoneSoldOut", "C", C.CAPACITY),
    ("ResourceInsufficient.InsufficientOfferingMinimum", "C", C.CAPACITY),
    ("ResourceInsufficient.CloudDiskSoldOut", "C", C.CAPACITY),
    ("ResourceInsufficient.CloudDiskUnavailable", "N", C.INVALID_REQUEST),
    ("ResourceInsufficient.CidrBlock", "Q", C.QUOTA),
    ("ResourcesSoldOut.SpecifiedInstanceType", "C", C.CAPACITY),
    ("ResourcesSoldOut.AvailableZone", "C", C.CAPACITY),
    ("ResourcesSoldOut.EipInsufficient", "C", C.CAPACITY),
    ("ResourceUnavailable.InstanceType", "N", C.CAPACITY),  # N for that zone: steer elsewhere
    ("ResourceNotFound.InvalidZoneInstanceType", "N", C.CAPACITY),
    ("InvalidParameterValue.InsufficientOffering", "C", C.CAPACITY),
    ("LimitExceeded.SpotQuota", "C", C.CAPACITY),
    # 7.2 price / spot specific
    ("InvalidParameterValue.InsufficientPrice", "N", C.PRICE),
    ("UnsupportedOperation.NoInstanceTypeSupportSpot", "N", C.CAPACITY),
    ("UnsupportedOperation.SpotUnsupportedRegion", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation.InstanceChargeType", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation.InstanceMixedPricingModel", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InstanceNotSupportedMixPricingModel", "N", C.INVALID_REQUEST),
    # 7.3 quota / limits
    ("LimitExceeded.UserSpotQuota", "Q", C.QUOTA),
    ("LimitExceeded.InstanceQuota", "Q", C.QUOTA),
    ("LimitExceeded.CvmInstanceQuota", "Q", C.QUOTA),
    ("InstancesQuotaLimitExceeded", "Q", C.QUOTA),
    ("LimitExceeded.PrepayQuota", "Q", C.QUOTA),
    ("LimitExceeded.VpcSubnetNum", "Q", C.QUOTA),
    ("FailedOperation.NoAvailableIpAddressCountInSubnet", "Q", C.QUOTA),
    ("LimitExceeded.AssociateUSGLimitExceeded", "N", C.INVALID_REQUEST),
    ("LimitExceeded.UserReturnQuota", "Q", C.QUOTA),
    ("InvalidParameterValue.LimitExceeded", "N", C.INVALID_REQUEST),
    ("InvalidFilterValue.LimitExceeded", "N", C.INVALID_REQUEST),
    ("InvalidParameterValueLimit", "N", C.INVALID_REQUEST),
    ("InvalidAccount.InsufficientBalance", "Q", C.QUOTA),
    ("InvalidAccount.UnpaidOrder", "Q", C.QUOTA),
    # 7.4 rate limiting
    ("RequestLimitExceeded", "R", C.THROTTLED),
    ("RequestLimitExceeded.UinLimitExceeded", "R", C.THROTTLED),
    ("RequestLimitExceeded.GlobalRegionUinLimitExceeded", "R", C.THROTTLED),
    ("RequestLimitExceeded.IPLimitExceeded", "R", C.THROTTLED),
    # 7.5 authentication / authorization (SignatureExpire's single retry is the client's job)
    ("AuthFailure.SignatureFailure", "N", C.AUTH),
    ("AuthFailure.SignatureExpire", "N", C.AUTH),
    ("AuthFailure.SecretIdNotFound", "N", C.AUTH),
    ("AuthFailure.InvalidSecretId", "N", C.AUTH),
    ("AuthFailure.InvalidAuthorization", "N", C.AUTH),
    ("AuthFailure.TokenFailure", "N", C.AUTH),
    ("AuthFailure.MFAFailure", "N", C.AUTH),
    ("AuthFailure.UnauthorizedOperation", "N", C.AUTH),
    ("AuthFailure.CamRoleNameAuthenticateFailed", "N", C.AUTH),
    ("UnauthorizedOperation", "N", C.AUTH),
    ("UnauthorizedOperation.PermissionDenied", "N", C.AUTH),
    ("UnauthorizedOperation.InvalidToken", "N", C.AUTH),
    ("UnauthorizedOperation.MFAExpired", "N", C.AUTH),
    ("UnauthorizedOperation.MFANotFound", "N", C.AUTH),
    ("UnsupportedOperation.InvalidInstancesOwner", "N", C.AUTH),
    # 7.6 instance id / not found / state
    ("InvalidInstanceId.Malformed", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InstanceIdMalformed", "N", C.INVALID_REQUEST),
    ("InvalidInstanceId.NotFound", "N", C.NOT_FOUND),
    ("ResourceNotFound.InvalidInstanceIdNotFound", "N", C.NOT_FOUND),
    ("InvalidInstanceState", "R", C.TRANSIENT),
    ("UnsupportedOperation.InstanceStateTerminated", "N", C.NOT_FOUND),
    ("UnsupportedOperation.InstanceStateTerminating", "N", C.NOT_FOUND),
    ("UnsupportedOperation.InstanceStatePending", "R", C.TRANSIENT),
    ("UnsupportedOperation.InstanceStateLaunchFailed", "?", C.TRANSIENT),
    ("UnsupportedOperation.InstancesProtected", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation.InstanceStateIsolating", "R", C.TRANSIENT),
    ("UnsupportedOperation.InstanceStateStarting", "R", C.TRANSIENT),
    ("UnsupportedOperation.InstanceStateStopping", "R", C.TRANSIENT),
    ("UnsupportedOperation.InstanceStateRebooting", "R", C.TRANSIENT),
    # 7.7 idempotency
    ("InvalidClientToken.TooLong", "N", C.INVALID_REQUEST),
    # 7.8 operation conflicts, internal errors, generic parameter errors
    ("OperationDenied.InstanceOperationInProgress", "R", C.TRANSIENT),
    ("MutexOperation.TaskRunning", "R", C.TRANSIENT),
    ("ResourceInUse", "R", C.TRANSIENT),
    ("InternalError", "R", C.TRANSIENT),
    ("InternalError.TradeUnknownError", "R", C.TRANSIENT),
    ("InternalServerError", "R", C.TRANSIENT),
    ("ServiceUnavailable", "R", C.TRANSIENT),
    ("FailedOperation.InquiryPriceFailed", "R", C.TRANSIENT),
    ("FailedOperation.IllegalTagKey", "N", C.INVALID_REQUEST),
    ("FailedOperation.IllegalTagValue", "N", C.INVALID_REQUEST),
    ("FailedOperation.TagKeyReserved", "N", C.INVALID_REQUEST),
    ("FailedOperation.SecurityGroupActionFailed", "R", C.TRANSIENT),
    ("MissingParameter", "N", C.INVALID_REQUEST),
    ("MissingParameter.AtLeastOne", "N", C.INVALID_REQUEST),
    ("UnknownParameter", "N", C.INVALID_REQUEST),
    ("InvalidParameter", "N", C.INVALID_REQUEST),
    ("InvalidParameterCombination", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.Range", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.ZoneNotSupported", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InstanceTypeNotFound", "N", C.INVALID_REQUEST),
    ("InvalidInstanceType.Malformed", "N", C.INVALID_REQUEST),
    ("InvalidImageId.Malformed", "N", C.INVALID_REQUEST),
    ("InvalidImageId.NotFound", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InvalidImageForGivenInstanceType", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InvalidUserDataFormat", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.IllegalHostName", "N", C.INVALID_REQUEST),
    ("InvalidInstanceName.TooLong", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InvalidPassword", "N", C.INVALID_REQUEST),
    ("InvalidPassword", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.VpcIdMalformed", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.VpcIdNotExist", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.SubnetIdMalformed", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.SubnetNotExist", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.VpcIdSubnetIdNotMatch", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.SubnetIdZoneIdNotMatch", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.VpcIdZoneIdNotMatch", "N", C.INVALID_REQUEST),
    ("InvalidSecurityGroupId.NotFound", "N", C.INVALID_REQUEST),
    ("InvalidSgId.Malformed", "N", C.INVALID_REQUEST),
    ("InvalidZone.MismatchRegion", "N", C.INVALID_REQUEST),
    ("InvalidRegion.NotFound", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InvalidRegion", "N", C.INVALID_REQUEST),
    ("InvalidProjectId.NotFound", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagKeyNotFound", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagQuotaLimitExceeded", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.DuplicateTags", "N", C.INVALID_REQUEST),
    ("InvalidFilter", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.InvalidParameterMinCount", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation.MinCountUnsupportedChargeType", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation.MinCountUnsupportedRegion", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation", "N", C.INVALID_REQUEST),
    ("FailedOperation", "?", C.UNKNOWN),
    # Platform-wide common codes (all N except ResourceInsufficient, which is C)
    ("ActionOffline", "N", C.INVALID_REQUEST),
    ("DryRunOperation", "N", C.INVALID_REQUEST),
    ("InvalidAction", "N", C.INVALID_REQUEST),
    ("InvalidRequest", "N", C.INVALID_REQUEST),
    ("IpInBlacklist", "N", C.AUTH),
    ("IpNotInWhitelist", "N", C.AUTH),
    ("LimitExceeded", "N", C.QUOTA),
    ("NoSuchProduct", "N", C.INVALID_REQUEST),
    ("NoSuchVersion", "N", C.INVALID_REQUEST),
    ("RequestSizeLimitExceeded", "N", C.INVALID_REQUEST),
    ("ResourceInsufficient", "C", C.CAPACITY),
    ("ResourceNotFound", "N", C.NOT_FOUND),
    ("ResourceUnavailable", "N", C.CAPACITY),
    ("ResponseSizeLimitExceeded", "N", C.INVALID_REQUEST),
    ("UnsupportedProtocol", "N", C.INVALID_REQUEST),
    ("UnsupportedRegion", "N", C.INVALID_REQUEST),
    # Section 4.1 and 3.2 extras
    ("InvalidParameterValue.InvalidVagueName", "N", C.INVALID_REQUEST),
    ("InvalidParameter.HostNameIllegal", "N", C.INVALID_REQUEST),
    # Client-side SDK codes (section 7.8 footnote, 1.5)
    ("ClientNetworkError", "R", C.TRANSIENT),
    ("ServerNetworkError", "R", C.TRANSIENT),
    ("ClientError.NetworkError", "R", C.TRANSIENT),
    ("ClientError.ParseJsonError", "R", C.TRANSIENT),
    ("ClientParamsError", "N", C.INVALID_REQUEST),
    ("ClientError", "N", C.INVALID_REQUEST),
    # RunInstances ActionTimer (issue 20): the documented malformed-time code, which the
    # simulator also answers for a time in the past or under 5 minutes ahead
    ("InvalidParameterValue.InvalidTimeFormat", "N", C.INVALID_REQUEST),
    ("UnsupportedOperation.NotSupportImportInstancesActionTimer", "N", C.INVALID_REQUEST),
    # Tag service TagResources / UnTagResources (issue 20): per-request limits are bad requests,
    # account-wide tag limits quotas, "tags being processed" a retry
    ("InvalidParameter.ReservedTagKey", "N", C.INVALID_REQUEST),
    ("InvalidParameter.Tag", "N", C.INVALID_REQUEST),
    ("InvalidParameter.UnsupportedService", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.ResourceDescriptionError", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.ResourceIdInvalid", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagKeyCharacterIllegal", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagKeyDuplicate", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagKeyEmpty", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagKeyLengthExceeded", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagValueCharacterIllegal", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagValueEmpty", "N", C.INVALID_REQUEST),
    ("InvalidParameterValue.TagValueLengthExceeded", "N", C.INVALID_REQUEST),
    ("LimitExceeded.ResourceNumPerRequest", "N", C.INVALID_REQUEST),
    ("LimitExceeded.TagNumPerRequest", "N", C.INVALID_REQUEST),
    ("LimitExceeded.ResourceAttachedTags", "N", C.INVALID_REQUEST),
    ("LimitExceeded.TagKey", "Q", C.QUOTA),
    ("LimitExceeded.TagValue", "Q", C.QUOTA),
    ("FailedOperation.PolicyEnforcedInvalid", "N", C.INVALID_REQUEST),
    ("FailedOperation.ResourceTagProcessing", "R", C.TRANSIENT),
    ("ResourceNotFound.RecordNotFound", "N", C.NOT_FOUND),
    # spotpool's own client-side code for a reply off the documented shape (issue 10)
    ("InvalidResponse", "N", C.UNKNOWN),
    # spotpool's own client-side codes of a credential provider (issue 19); a transient cause
    # is raised with category TRANSIENT explicitly
    ("CredentialsUnavailable", "N", C.AUTH),
    ("CredentialsExpiring", "N", C.AUTH),
]


@pytest.mark.parametrize(("code", "letter", "category"), REFERENCE_ROWS, ids=lambda x: str(x))
def test_reference_code_maps_to_its_category(
    code: str, letter: str, category: ErrorCategory
) -> None:
    assert classify(code) is category


@pytest.mark.parametrize(("code", "letter", "category"), REFERENCE_ROWS, ids=lambda x: str(x))
def test_category_keeps_the_reference_retry_meaning(
    code: str, letter: str, category: ErrorCategory
) -> None:
    got = classify(code)
    if letter == "C":
        assert got is C.CAPACITY
    elif letter == "Q":
        assert got is C.QUOTA
    elif letter == "R":
        assert retryable(got)
    elif letter == "N":
        assert not retryable(got)


def test_every_table_code_is_in_the_reference_rows() -> None:
    """The table holds nothing the test does not pin down."""
    assert set(CODE_CATEGORIES) == {code for code, _, _ in REFERENCE_ROWS}


@pytest.mark.parametrize(
    ("code", "category"),
    [
        ("RequestLimitExceeded.SomeNewLimit", C.THROTTLED),
        ("AuthFailure", C.AUTH),
        ("AuthFailure.SomethingNew", C.AUTH),
        ("UnauthorizedOperation.New", C.AUTH),
        ("ResourceInsufficient.NewThing", C.CAPACITY),
        ("ResourcesSoldOut.NewThing", C.CAPACITY),
        ("ResourceUnavailable.NewThing", C.CAPACITY),
        ("InternalError.DbError", C.TRANSIENT),
        ("LimitExceeded.NewQuota", C.QUOTA),
        ("ResourceNotFound.Other", C.NOT_FOUND),
        ("InvalidParameterValue.NewCheck", C.INVALID_REQUEST),
        ("InvalidParameter.NewCheck", C.INVALID_REQUEST),
        ("MissingParameter.Other", C.INVALID_REQUEST),
        ("UnknownParameter.Other", C.INVALID_REQUEST),
    ],
)
def test_family_fallback(code: str, category: ErrorCategory) -> None:
    assert code not in CODE_CATEGORIES
    assert classify(code) is category


@pytest.mark.parametrize(
    "code",
    [
        "Foo",
        "Foo.Bar",
        "",
        "UnsupportedOperation.SomethingNew",  # a mixed family: no guessing
        "FailedOperation.SomethingNew",
        "requestlimitexceeded",  # codes are case-sensitive
        "RequestLimitExceededX",
        "InternalErrorX.Y",
    ],
)
def test_unknown_codes_are_unknown_and_kept_verbatim(code: str) -> None:
    assert classify(code) is C.UNKNOWN
    err = CloudError(code, "msg", action="RunInstances")
    assert err.code == code
    assert err.category is C.UNKNOWN
    assert not err.retryable


@pytest.mark.parametrize("category", list(ErrorCategory))
def test_only_throttled_and_transient_are_retryable(category: ErrorCategory) -> None:
    assert retryable(category) is (category in (C.THROTTLED, C.TRANSIENT))


def test_cloud_error_fields_and_message() -> None:
    err = CloudError(
        "InvalidParameterValue.InsufficientPrice",
        "The bid is lower than the market price",
        action="RunInstances",
        request_id="3c140219-cfe9-470e-b241-907877d6fb03",
    )
    assert (err.code, err.action, err.request_id) == (
        "InvalidParameterValue.InsufficientPrice", "RunInstances",
        "3c140219-cfe9-470e-b241-907877d6fb03",
    )
    assert err.message == "The bid is lower than the market price"
    assert err.category is C.PRICE and not err.retryable
    assert str(err) == (
        "RunInstances failed: InvalidParameterValue.InsufficientPrice: "
        "The bid is lower than the market price (RequestId 3c140219-cfe9-470e-b241-907877d6fb03)"
    )
    assert "InsufficientPrice" in repr(err)


def test_cloud_error_without_request_id() -> None:
    err = CloudError("InternalError", "boom", action="DescribeInstances")
    assert str(err) == "DescribeInstances failed: InternalError: boom"
    assert err.retryable


def test_network_error_is_transient_whatever_its_code() -> None:
    err = CloudNetworkError("ServerNetworkError", "HTTP 502: bad gateway",
                            action="DescribeInstances", http_status=502)
    assert isinstance(err, CloudError)
    assert err.category is C.TRANSIENT and err.retryable
    assert err.http_status == 502
    assert str(err) == "DescribeInstances failed: ServerNetworkError: HTTP 502: bad gateway"


@pytest.mark.parametrize(
    ("code", "gone"),
    [
        ("UnsupportedOperation.InstanceStateTerminated", True),
        ("UnsupportedOperation.InstanceStateTerminating", True),
        ("InvalidInstanceId.NotFound", True),
        ("ResourceNotFound.InvalidInstanceIdNotFound", True),
        ("UnsupportedOperation.InstanceStatePending", False),
        ("UnsupportedOperation.InstancesProtected", False),
        ("InvalidInstanceId.Malformed", False),
        ("InternalError", False),
    ],
)
def test_already_gone_codes(code: str, gone: bool) -> None:
    assert is_already_gone(code) is gone
    assert CloudError(code, "", action="TerminateInstances").already_gone is gone


def test_already_gone_codes_are_not_found() -> None:
    assert {classify(code) for code in ALREADY_GONE_CODES} == {C.NOT_FOUND}
