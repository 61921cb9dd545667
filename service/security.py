"""API keys and tenants.

A request's tenant comes from its Bearer key: keys are compared by SHA-256 digest, never stored
in clear. With ``auth_disabled`` (local use, bound to loopback) every request is tenant ``local``.
"""

from __future__ import annotations

import hashlib

from .problems import Unauthorized
from .settings import Settings

LOCAL_TENANT = "local"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """Maps key digests to tenants."""

    def __init__(self, settings: Settings):
        self.disabled = settings.auth_disabled
        self.by_digest = {digest(k): t for k, t in settings.api_keys.items()}

    def tenant_for(self, authorization: str | None) -> str:
        if self.disabled:
            return LOCAL_TENANT
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing Bearer API key")
        tenant = self.by_digest.get(digest(authorization[7:].strip()))
        if tenant is None:
            raise Unauthorized("unknown API key")
        return tenant
