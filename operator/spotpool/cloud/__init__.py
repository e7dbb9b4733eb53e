"""spotpool.cloud: the Tencent Cloud CVM API client (signing, errors, rate limits, typed calls)."""

from .client import CvmClient
from .errors import (
    CloudError,
    CloudNetworkError,
    ErrorCategory,
    classify,
    is_already_gone,
    retryable,
)
from .models import Credentials, Instance, SpotOffer

__all__ = [
    "CloudError",
    "CloudNetworkError",
    "Credentials",
    "CvmClient",
    "ErrorCategory",
    "Instance",
    "SpotOffer",
    "classify",
    "is_already_gone",
    "retryable",
]
