"""The one STS action spotpool needs, GetCallerIdentity, served on the simulator's port.

The operator asks which account a key pair acts in, so that it can refuse to act when a pool's
credentials move to another account. Tencent serves it at `sts.tencentcloudapi.com`, API version
2018-08-13, signed with service `sts`; the simulator answers on its one port when a request
carries that version. The shape follows Tencent's documentation (Arn, AccountId, UserId,
PrincipalId, Type); every key pair is modelled as a CAM user of its account.
"""

from __future__ import annotations

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.render import success_body

STS_API_VERSION = "2018-08-13"


def caller_identity(action: str, request_id: str, account_id: str) -> bytes:
    if action != "GetCallerIdentity":
        raise ApiError(
            "InvalidAction",
            f"The action {action!r} does not exist in STS {STS_API_VERSION} (simulated: GetCallerIdentity).",
        )
    return success_body(
        {
            "Arn": f"qcs::cam::uin/{account_id}:uin/{account_id}",
            "AccountId": account_id,
            "UserId": account_id,
            "PrincipalId": account_id,
            "Type": "CAMUser",
        },
        request_id,
    )
