"""Who signs a request: key pairs, CAM roles and their temporary sessions, each in one account.

The simulator stands in for CAM and STS as far as spotpool's credentials go. A key pair
(`SimulatorConfig.credentials`) is a CAM user's long-lived key. A role (`SimulatorConfig.roles`)
has no key of its own: STS hands out *sessions* of it (AssumeRole, AssumeRoleWithWebIdentity, the
CVM metadata service), each a temporary SecretId/SecretKey pair plus a token that must travel in
`X-TC-Token`, valid until its expiry. Every principal acts in one account (UIN): a role session in
the role's account, whoever asked for it, which is how a team's role in another account buys in
that account only.

Sessions are kept in memory, bounded: an expired session is remembered for
`sts.expired_sessions_kept_seconds` so that its use is refused as an expired token
(`AuthFailure.TokenFailure`), then forgotten (its SecretId is then unknown:
`AuthFailure.SecretIdNotFound`). Sessions survive `/_sim/reset`, as key pairs do: they are
credentials a client holds, not market state.
"""

from __future__ import annotations

import heapq
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import RoleSpec, SimulatorConfig

CAM_USER = "CAMUser"
CAM_ROLE = "CAMRole"
MAX_SESSIONS = 100_000  # live and remembered sessions; the soonest expired go first past this

_ALPHANUMERIC = string.ascii_letters + string.digits
_KEY_ID_LENGTH = 32  # "AKID" + 32: the length of a real key id
_SECRET_KEY_LENGTH = 32
_TOKEN_BYTES = 160  # real tokens are a few hundred characters (the SDK: at most 4096 bytes)


@dataclass(frozen=True)
class Principal:
    """The identity a request was signed with, as GetCallerIdentity reports it.

    `rate_key` is the simulator's rate-limit bucket: a key pair's own SecretId (as before roles
    existed), one bucket per role for every session of it (a renewal does not refill it).
    `visible_tags` is the CAM tag restriction (`Credential.visible_tags`, `RoleSpec.visible_tags`).
    """

    account_id: str
    secret_id: str
    arn: str
    user_id: str
    principal_id: str
    type: str
    rate_key: str
    uin: str | None = None  # the CAM user of a key pair (None for a role session)
    visible_tags: Mapping[str, str] | None = None
    role: RoleSpec | None = None
    session_name: str | None = None
    expires_at: float | None = None

    def caller_identity(self) -> dict[str, str]:
        """The fields of STS GetCallerIdentity, in Tencent's documented shape."""
        return {
            "Arn": self.arn,
            "AccountId": self.account_id,
            "UserId": self.user_id,
            "PrincipalId": self.principal_id,
            "Type": self.type,
        }


@dataclass(frozen=True)
class Session:
    """One set of temporary credentials STS handed out."""

    secret_id: str
    secret_key: str = field(repr=False)
    token: str = field(repr=False)
    principal: Principal
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class KeyEntry:
    """What the authenticator needs of a SecretId: its key, who it is, and its session if any."""

    secret_key: str = field(repr=False)
    principal: Principal
    session: Session | None = None


def key_principal(secret_id: str, account_id: str, uin: str | None,
                  visible_tags: Mapping[str, str] | None) -> Principal:
    """A CAM user's key pair; without `uin`, the account's root user (as before users existed)."""
    user = uin or account_id
    return Principal(
        account_id=account_id,
        secret_id=secret_id,
        arn=f"qcs::cam::uin/{account_id}:uin/{user}",
        user_id=user,
        principal_id=user,
        type=CAM_USER,
        rate_key=secret_id,
        uin=user,
        visible_tags=dict(visible_tags) if visible_tags else None,
    )


class Identities:
    """Key pairs, roles and live sessions, looked up by SecretId and by role ARN."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._keys = {
            cred.secret_id: KeyEntry(
                cred.secret_key,
                key_principal(cred.secret_id, cred.account_id, cred.uin, cred.visible_tags),
            )
            for cred in config.credentials
        }
        self._roles: dict[str, RoleSpec] = {}
        for role in config.roles:
            self._roles[role.arn] = role
            self._roles[role.id_arn] = role
        self._sessions: dict[str, Session] = {}
        self._expiry: list[tuple[float, str]] = []  # (expires_at, secret_id), a heap
        self._metadata_session: Session | None = None

    # ------------------------------------------------------------------------- look-ups

    def lookup(self, secret_id: str) -> KeyEntry | None:
        """The key pair or session a SecretId names; None when unknown (or long forgotten)."""
        entry = self._keys.get(secret_id)
        if entry is not None:
            return entry
        session = self._sessions.get(secret_id)
        if session is None:
            return None
        return KeyEntry(session.secret_key, session.principal, session)

    def role(self, arn: str) -> RoleSpec | None:
        """A role by either ARN form (`:roleName/<name>` or `:role/<role_id>`)."""
        return self._roles.get(arn)

    def sessions(self) -> list[Session]:
        """Every session still remembered (live or recently expired), oldest expiry first."""
        return sorted(self._sessions.values(), key=lambda s: s.expires_at)

    # ------------------------------------------------------------------------- trust

    @staticmethod
    def trusts(role: RoleSpec, caller: Principal) -> bool:
        """Whether the role's trust policy lets `caller` AssumeRole it (see `RoleTrust`)."""
        for entry in role.trust.principals:
            if entry.isdigit():
                if caller.account_id == entry:
                    return True
                continue
            account, _, subject = entry.removeprefix("qcs::cam::uin/").partition(":")
            if caller.account_id != account:
                continue
            if subject == "root":
                return True
            kind, _, name = subject.partition("/")
            if kind == "uin" and caller.type == CAM_USER and caller.uin == name:
                return True
            if (
                kind == "roleName"
                and caller.role is not None
                and caller.role.account_id == account
                and caller.role.name == name
            ):
                return True
        return False

    # ------------------------------------------------------------------------- sessions

    def issue(
        self, role: RoleSpec, session_name: str, duration: int, principal_id: str
    ) -> Session:
        """New temporary credentials of `role`, valid `duration` seconds from now.

        `principal_id` is who asked (GetCallerIdentity's PrincipalId: "the account UIN that
        applied for the role's keys").
        """
        now = self._clock()
        self._forget_expired(now)
        role_id = role.resolved_role_id
        secret_id = "AKID" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(_KEY_ID_LENGTH))
        expires_at = float(int(now) + duration)
        principal = Principal(
            account_id=role.account_id,
            secret_id=secret_id,
            arn=f"qcs::sts:{role.account_id}:assumed-role/{role_id}",
            user_id=f"{role_id}:{session_name}",
            principal_id=principal_id,
            type=CAM_ROLE,
            rate_key=f"role:{role.account_id}:{role.name}",
            visible_tags=dict(role.visible_tags) if role.visible_tags else None,
            role=role,
            session_name=session_name,
            expires_at=expires_at,
        )
        session = Session(
            secret_id=secret_id,
            secret_key="".join(secrets.choice(_ALPHANUMERIC) for _ in range(_SECRET_KEY_LENGTH)),
            token=secrets.token_urlsafe(_TOKEN_BYTES),
            principal=principal,
            issued_at=now,
            expires_at=expires_at,
        )
        self._sessions[secret_id] = session
        heapq.heappush(self._expiry, (expires_at, secret_id))
        return session

    def metadata_session(self) -> Session | None:
        """The credentials the CVM metadata service hands out now: the same ones until less than
        `metadata.rotate_before_seconds` (at most half their lifetime) is left, then new ones,
        as the real service renews them ahead of expiry. None: no role is bound."""
        role = self._config.metadata_role()
        if role is None:
            return None
        spec = self._config.metadata
        duration = min(spec.duration_seconds, role.max_session_duration_seconds)
        rotate_before = min(spec.rotate_before_seconds, duration / 2)
        current = self._metadata_session
        if current is not None and current.expires_at - self._clock() > rotate_before:
            return current
        self._metadata_session = self.issue(role, "cvm-metadata", duration, role.account_id)
        return self._metadata_session

    def _forget_expired(self, now: float) -> None:
        """Drop sessions expired longer than they are remembered, and the soonest to expire
        past MAX_SESSIONS."""
        kept = self._config.sts.expired_sessions_kept_seconds
        heap = self._expiry
        while heap and (heap[0][0] + kept <= now or len(heap) >= MAX_SESSIONS):
            _, secret_id = heapq.heappop(heap)
            self._sessions.pop(secret_id, None)


def check_session_token(entry: KeyEntry, token: str | None, now: float) -> None:
    """Refuse a request whose `X-TC-Token` does not go with its SecretId, with the code Tencent
    documents for a bad token (`AuthFailure.TokenFailure`; Tencent's own Go SDK test expects it,
    with "Token verification failed", for a wrong token on a CVM call).

    A session's SecretId needs its own token, unexpired. A long-lived key takes no token: one sent
    anyway is a token the simulator does not know, refused rather than ignored.
    """
    session = entry.session
    if session is None:
        if token:
            raise ApiError(
                "AuthFailure.TokenFailure",
                "Token verification failed, please check if your Token is correct: this SecretId "
                "is a long-term key, which takes no X-TC-Token.",
            )
        return
    if not token:
        raise ApiError(
            "AuthFailure.TokenFailure",
            "Token verification failed: temporary credentials need their token in X-TC-Token.",
        )
    sent = token.encode("utf-8", "surrogatepass")
    if not secrets.compare_digest(sent, session.token.encode("ascii")):
        raise ApiError(
            "AuthFailure.TokenFailure",
            "Token verification failed, please check if your Token is correct.",
        )
    if session.expires_at <= now:
        raise ApiError(
            "AuthFailure.TokenFailure",
            f"The temporary credentials expired at {int(session.expires_at)} (server time "
            f"{int(now)}); request new ones.",
        )
