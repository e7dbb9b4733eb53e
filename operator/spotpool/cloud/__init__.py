"""spotpool.cloud: the Tencent Cloud CVM API client (signing, errors, rate limits, typed calls) and
where its credentials come from (a key pair, TKE pod identity, the CVM role, an assumed role)."""

from .client import CvmClient, TagFailure
from .credentials import CredentialError, CredentialProvider, StaticCredentials
from .errors import (
    CloudError,
    CloudNetworkError,
    ErrorCategory,
    classify,
    is_already_gone,
    retryable,
)
from .models import Credentials, Instance, SpotOffer
from .providers import AssumeRoleProvider, CvmRoleProvider, RenewingProvider, WebIdentityProvider

__all__ = [
    "AssumeRoleProvider",
    "CloudError",
    "CloudNetworkError",
    "CredentialError",
    "CredentialProvider",
    "Credentials",
    "CvmClient",
    "CvmRoleProvider",
    "ErrorCategory",
    "Instance",
    "RenewingProvider",
    "SpotOffer",
    "StaticCredentials",
    "TagFailure",
    "WebIdentityProvider",
    "classify",
    "is_already_gone",
    "retryable",
]
