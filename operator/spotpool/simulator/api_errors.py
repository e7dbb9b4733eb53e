"""The one exception the simulator raises for a refused request: a Tencent error code and message.

Every refusal, from signature checks down to market rules, is an `ApiError`, so the server has one
place that turns refusals into the `{"Response": {"Error": ...}}` envelope and nothing leaks as a
500. Codes are the ones Tencent documents; messages explain what to change.
"""

from __future__ import annotations


class ApiError(Exception):
    """A CVM error response: `code` is what clients branch on, `message` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
