"""The CVM metadata service's CAM role path, served on the simulator's port.

A CVM with a role bound gets that role's temporary credentials from
`http://metadata.tencentyun.com/latest/meta-data/cam/security-credentials/<role>` (the name of the
bound role at `.../security-credentials/`), with no key of its own: that is how an operator on a
node with a CVM role acts without a Secret. Here the role is `metadata.role` and the credentials
are sessions of it (`iam.Identities.metadata_session`), so they sign CVM and STS calls like any
other, expire, and are renewed ahead of expiry.

Answers: the role name as text; the credentials as JSON in the shape the official SDK's
CVMRoleCredential reads (`TmpSecretId`, `TmpSecretKey`, `Token`, `ExpiredTime`, `Expiration`,
`Code: Success`); HTTP 404 with a short text for a role that is not bound (or none at all). Like
the control API it answers loopback peers only unless `metadata.allow_remote` is set: whoever
reaches it gets the role's credentials, as on a real instance.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING

from aiohttp import web

from spotpool.simulator.sts import metadata_credentials

if TYPE_CHECKING:
    from spotpool.simulator.server import Simulator

ROLE_PATH = "/latest/meta-data/cam/security-credentials/"


def add_metadata_routes(app: web.Application, sim: Simulator) -> None:
    """Register the metadata service's CAM role paths on the simulator's app."""

    async def role_name(request: web.Request) -> web.Response:
        refused = _refused(sim, request)
        if refused is not None:
            return refused
        role = sim.config.metadata_role()
        if role is None:
            return _text("no CAM role is bound to this instance", 404)
        return _text(role.name)

    async def credentials(request: web.Request) -> web.Response:
        refused = _refused(sim, request)
        if refused is not None:
            return refused
        role = sim.config.metadata_role()
        if role is None or request.match_info["role"] != role.name:
            return _text("no such CAM role is bound to this instance", 404)
        session = sim.identities.metadata_session()
        assert session is not None  # a role is bound
        return web.Response(
            body=json.dumps(metadata_credentials(session)).encode(),
            headers={"Content-Type": "text/plain"},
        )

    app.router.add_get(ROLE_PATH, role_name)
    app.router.add_get(ROLE_PATH + "{role}", credentials)


def _refused(sim: Simulator, request: web.Request) -> web.Response | None:
    if sim.config.metadata.allow_remote or _is_loopback(request.remote):
        return None
    return _text("the metadata service answers loopback clients only (metadata.allow_remote)", 403)


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _text(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain")
