"""What one pass over one environment knows before it observes: built once, never half-filled.

`resolve` turns the object into a `PassContext` (spec, credentials, account, client, journal) or
into a `Blocked` that says why no pass can be made. Where the instances live must not change
silently: the account, region and endpoint they were bought in are recorded in
`status.account`, and a pass whose credentials now name another account, while owned instances
may remain, is blocked (`AccountChanged`) instead of buying a new pool somewhere else and
stranding the old one. Key rotation inside the same account resolves to the same account id.

The administrator's policy (`controller.policy`) is applied here too: an endpoint outside the
allow-list is `Blocked` (InvalidConfig) before the Secret is touched or any request is sent; a
pool over a spend guard resolves, with `purchases_refused` set, so that the planner still releases.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from spotpool.api.names import DEFAULT_ENDPOINT, SECRET_FINALIZER
from spotpool.api.spec import CredentialSource, EnvironmentSpec, SpecError
from spotpool.cloud.client import CvmClient
from spotpool.cloud.credentials import CredentialError, CredentialProvider
from spotpool.cloud.errors import CloudError
from spotpool.cloud.models import Credentials
from spotpool.controller.cloudaccess import AccountKey, CloudAccess
from spotpool.controller.credentials import CredentialsError, SecretGuard, load_credentials
from spotpool.controller.fencing import Fence, NotLeader
from spotpool.controller.identity import IDENTITY_FLAG, Identities
from spotpool.controller.kube import KubeApi
from spotpool.controller.policy import Policy, PoolView
from spotpool.planner import DroppedRecord, ErrorRecord, InflightLaunch, PoolBackoff, PoolKey
from spotpool.planner.degraded import REASON_BY_CATEGORY, DegradedReason
from spotpool.planner.persistence import PersistedStatus


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str | None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ObjectRef:
        meta = body["metadata"]
        return cls(meta["namespace"], meta["name"], meta["uid"], int(meta.get("generation") or 0),
                   meta.get("resourceVersion"))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Preflight:
    """What a pass knows once its credentials are in hand, before it knows their account.

    Enough to start the reads of a pass's first round trip (the sweep, the market, the quota, the
    launch check's DryRun) beside the account look-up, which a new key pair's first pass would
    otherwise wait for first (`resolve`'s `early`). None of them spends; nothing is planned or
    bought before the account is known and checked (`PassContext`)."""

    ref: ObjectRef
    spec: EnvironmentSpec
    key: AccountKey
    client: CvmClient
    persisted: PersistedStatus
    deleting: bool
    now: datetime
    fence: Fence  # raises once this replica may no longer act (leader election)
    # (reason, message) when a spend guard refuses purchases: the pass buys nothing, releases as usual
    purchases_refused: tuple[str, str] | None


@dataclass(frozen=True)
class PassContext(Preflight):
    """Everything a pass acts on. `persisted` is the status the pass plans from (`statusstore`)."""

    body: Mapping[str, Any]
    account: dict[str, str]  # {"id", "region", "endpoint"}: where this environment buys
    journal: tuple[InflightLaunch, ...]
    malformed: tuple[DroppedRecord, ...]
    backoff: dict[PoolKey, PoolBackoff]
    sequence: int | None  # None: none recorded; purchasing starts a fresh one
    held_ceiling: int | None = None  # the most the guards let the pool hold at once (SpendGuards.ceiling)
    on_demand_refused: str | None = None  # why the namespace may not buy on-demand (SpendGuards.on_demand_refusal)
    # status.credentials: the source and where it comes from (never a secret)
    credentials: Mapping[str, str | None] = field(default_factory=dict)
    # a renewal of temporary credentials that failed while the ones in hand are still good
    credentials_error: ErrorRecord | None = None
    tagger: Callable[[], CvmClient] | None = None  # the account's Tag service client, made on first use


@dataclass(frozen=True)
class Blocked:
    """No pass can be made; `reason` is a Degraded reason, `message` says what to do.
    `nothing_to_release`: the environment provably never bought (a deletion may complete)."""

    reason: str
    message: str
    spec: EnvironmentSpec | None = None
    nothing_to_release: bool = False


async def resolve(
    *,
    body: Mapping[str, Any],
    persisted: PersistedStatus,
    kube: KubeApi,
    cloud: CloudAccess,
    guard: SecretGuard,
    deleting: bool,
    now: datetime,
    fence: Fence,
    policy: Policy | None = None,
    pools: PoolView | None = None,
    identities: Identities | None = None,
    early: Callable[[Preflight], None] | None = None,
) -> PassContext | Blocked:
    """`policy`: the administrator's (default: the safe `Policy()`); `pools`: every pool's claim,
    for the namespace and installation totals. `early`: told the `Preflight` when the account
    look-up is about to take a round trip (a key pair this process has never asked about), to
    start the pass's reads beside it. The Secret's finalizer goes on beside them too: none of them
    spends (a DryRun buys nothing), and the plan, the journal write and every purchase come after
    all three."""
    policy = policy or Policy()
    ref = ObjectRef.of(body)
    try:
        spec = EnvironmentSpec.from_k8s(body.get("spec") or {})
    except SpecError as exc:
        return Blocked(DegradedReason.INVALID_CONFIG, str(exc))
    # The account is recorded before the first purchase: without it nothing was ever bought.
    never_bought = not persisted.account and not persisted.may_own_instances
    refused = policy.endpoints.refusal(spec.endpoint or DEFAULT_ENDPOINT, spec.region)
    if refused is not None:
        # Before the Secret is read or any request is sent: the endpoint would get a signed request.
        return Blocked(DegradedReason.INVALID_CONFIG, refused, spec, nothing_to_release=never_bought)
    refused = policy.credentials.refusal(ref.namespace, spec)
    if refused is not None:
        return Blocked(DegradedReason.INVALID_CONFIG, refused, spec, nothing_to_release=never_bought)
    secret = spec.secret_name
    credentials: Credentials | CredentialProvider
    if secret is None:
        provider = _provider(spec, identities or Identities())
        if provider is None:
            return Blocked(DegradedReason.INVALID_CONFIG,
                           f"spec.credentials.source {spec.credential_source.value} needs the operator's own identity, "
                           f"and this operator has none ({IDENTITY_FLAG} pod-identity or cvm-role; chart value "
                           f"credentialSources.operatorIdentity)", spec, nothing_to_release=never_bought)
        credentials = provider
        whose = provider.source
    else:
        try:
            credentials = await load_credentials(kube, ref.namespace, secret)
        except CredentialsError as exc:
            return Blocked(DegradedReason.INVALID_CONFIG, str(exc), spec)
        whose = f"Secret {ref.namespace}/{secret}"
    endpoint = (spec.endpoint or DEFAULT_ENDPOINT).rstrip("/")
    key = AccountKey.of(endpoint, spec.region, credentials)
    try:
        client = cloud.client(key, credentials)
    except ValueError as exc:  # CvmClient's own checks of endpoint and region: never a crash per pass
        return _unclientable(endpoint, spec, exc)
    created = _created(body)
    guarded = None if deleting else policy.guards.refusal(
        namespace=ref.namespace, uid=ref.uid, expected_count=spec.expected_count, max_price=spec.max_price,
        instance_types=spec.instance_types, pools=pools, created=created)
    preflight = Preflight(ref=ref, spec=spec, key=key, client=client, persisted=persisted, deleting=deleting,
                          now=now, fence=fence,
                          purchases_refused=(DegradedReason.SPEND_GUARD, guarded) if guarded else None)
    if early is not None and cloud.new_key_pair(key):
        early(preflight)
    looking_up = asyncio.ensure_future(cloud.identity(key, credentials))
    if not deleting and secret is not None:
        # Before anything can be bought with it: the Secret outlives every instance it bought.
        # Beside the look-up and the early reads, which buy nothing (a DryRun neither).
        try:
            fence()
            await guard.protect(ref.namespace, secret)
        except Exception as exc:  # RBAC without `patch` on secrets, or the API server refusing
            looking_up.cancel()  # only this wait: the look-up goes on in its shared flight
            await asyncio.gather(looking_up, return_exceptions=True)
            if isinstance(exc, NotLeader):
                raise
            return Blocked(DegradedReason.INVALID_CONFIG,
                           f"cannot add finalizer {SECRET_FINALIZER} to Secret {ref.namespace}/{secret} "
                           f"({type(exc).__name__}{_status_of(exc)}); nothing is bought until it is there, so "
                           f"that deleting the Secret cannot strand instances (grant patch on secrets)", spec)
    try:
        identity = await looking_up
    except CloudError as exc:
        return Blocked(REASON_BY_CATEGORY[exc.category], f"{exc.code}: {exc.message} (asking who the "
                       f"credentials of {whose} belong to)", spec)
    except ValueError as exc:  # the same checks, of the STS client the look-up makes
        return _unclientable(endpoint, spec, exc)
    account = {"id": identity.account_id, "region": spec.region, "endpoint": endpoint}
    recorded = persisted.account
    if recorded is not None and dict(recorded) != account and persisted.may_own_instances:
        return Blocked(*_moved(recorded, account, whose), spec)
    return PassContext(
        **{f.name: getattr(preflight, f.name) for f in fields(Preflight)},
        body=body,
        account=account,
        journal=persisted.journal,
        malformed=persisted.malformed,
        backoff=dict(persisted.backoff),
        sequence=persisted.sequence,
        held_ceiling=policy.guards.ceiling(namespace=ref.namespace, uid=ref.uid, pools=pools, created=created),
        on_demand_refused=policy.guards.on_demand_refusal(ref.namespace),
        credentials=_shown(spec, whose),
        credentials_error=_renewal_error(credentials, now),
        tagger=functools.partial(cloud.tagger, key, credentials),
    )


def _unclientable(endpoint: str, spec: EnvironmentSpec, exc: ValueError) -> Blocked:
    return Blocked(DegradedReason.INVALID_CONFIG, f"cannot make a CVM client for spec.endpoint "
                   f"{endpoint[:200]!r}, region {spec.region!r}: {str(exc)[:300]}", spec)


def _shown(spec: EnvironmentSpec, whose: str) -> dict[str, str | None]:
    """What status.credentials says: the source, and the Secret or the provider (its role ARN and
    where the operator's identity comes from), bounded. Never a key, a token or an ExternalId.
    Fields that do not apply are null, so that the merge patch removes what an earlier source left."""
    return {
        "source": spec.credential_source.value,
        "from": whose[:300],
        "secret": spec.secret_name,  # its finalizer is let go once the pool stops naming it
        "roleArn": spec.credentials.role_arn if spec.credentials is not None else None,
    }


def _renewal_error(credentials: Credentials | CredentialProvider, now: datetime) -> ErrorRecord | None:
    """A failed renewal the provider recorded: the pass goes on with the credentials still in hand,
    and Degraded names the source before they run out."""
    error = getattr(credentials, "last_error", None)
    if not isinstance(error, CredentialError):
        return None
    return ErrorRecord(error.code, str(error), error.category, now)


def _provider(spec: EnvironmentSpec, identities: Identities) -> CredentialProvider | None:
    if spec.credential_source is CredentialSource.OPERATOR_IDENTITY:
        return identities.operator()
    assert spec.credentials is not None and spec.credentials.role_arn is not None
    return identities.role(spec.credentials.role_arn, spec.credentials.external_id)


def _moved(recorded: Mapping[str, Any], account: dict[str, str], whose: str) -> tuple[str, str]:
    if recorded.get("id") != account["id"]:
        return (DegradedReason.ACCOUNT_CHANGED,
                f"the credentials of {whose} belong to account {account['id']}, but this "
                f"environment's instances were bought in account {recorded.get('id')}: buying and releasing "
                f"nothing. Use credentials of account {recorded.get('id')} again (rotating keys within it is "
                f"fine); to use another account, create a new SpotComputeEnvironment")
    field = "region" if recorded.get("region") != account["region"] else "endpoint"
    return (DegradedReason.INVALID_CONFIG,
            f"spec.{field} is {account[field]!r} but this environment's instances live at "
            f"{recorded.get(field)!r}: buying and releasing nothing. Set it back; to move the pool, create a "
            f"new SpotComputeEnvironment and delete this one")


def _created(body: Mapping[str, Any]) -> str:
    created = (body.get("metadata") or {}).get("creationTimestamp")
    return created if isinstance(created, str) else ""


def _status_of(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f" {status}" if isinstance(status, int) else ""
