"""The ledger of API calls the simulator answered, for `GET /_sim/calls`.

Tests assert on what a client actually sent (how many RunInstances, with which ClientToken, which
calls were throttled) instead of trusting the client's own account. It is bounded, so a long demo
or a benchmark cannot grow it without limit, and it never holds secrets: passwords and user data
and web identity tokens are replaced by their size before an entry is stored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

_REDACTED_KEYS = frozenset({"Password", "UserData", "WebIdentityToken", "Policy"})
_MAX_LIST_ITEMS = 10
_MAX_STRING = 200


@dataclass(frozen=True)
class CallRecord:
    """One answered API call (including refused ones: `error_code` is then set)."""

    time: float
    action: str
    secret_id: str | None
    region: str | None
    request_id: str
    params: dict[str, Any]
    error_code: str | None
    duration_ms: float
    account_id: str | None = None  # the account the signer acts in (None: unsigned or refused)

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "action": self.action,
            "secretId": self.secret_id,
            "accountId": self.account_id,
            "region": self.region,
            "requestId": self.request_id,
            "params": self.params,
            "errorCode": self.error_code,
            "durationMs": self.duration_ms,
        }


class CallLedger:
    """The last `size` calls, oldest first."""

    def __init__(self, size: int) -> None:
        self._records: deque[CallRecord] = deque(maxlen=size)

    def record(self, entry: CallRecord) -> None:
        if self._records.maxlen:
            self._records.append(entry)

    def entries(self, action: str | None = None) -> list[CallRecord]:
        if action is None:
            return list(self._records)
        return [entry for entry in self._records if entry.action == action]

    def clear(self) -> None:
        self._records.clear()


def summarize_params(params: Any) -> Any:
    """A bounded, secret-free copy of request parameters for the ledger."""
    if isinstance(params, dict):
        summary: dict[str, Any] = {}
        for key, value in params.items():
            if key in _REDACTED_KEYS and isinstance(value, str):
                summary[key] = f"<redacted: {len(value)} chars>"
            else:
                summary[key] = summarize_params(value)
        return summary
    if isinstance(params, list):
        head = [summarize_params(item) for item in params[:_MAX_LIST_ITEMS]]
        if len(params) > _MAX_LIST_ITEMS:
            head.append(f"... {len(params) - _MAX_LIST_ITEMS} more")
        return head
    if isinstance(params, str) and len(params) > _MAX_STRING:
        return params[:_MAX_STRING] + f"... ({len(params)} chars)"
    return params
