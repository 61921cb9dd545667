"""API keys, tenants and per-key rate limits.

A request's tenant comes from its Bearer key: keys are compared by SHA-256 digest, never stored
in clear. Two sources, consulted in order: the static ``api_keys`` of the settings, and runtime
keys that the admin creates through ``/v1/keys`` (``keys.apikey(digest)`` hashes in Redis, read on
every request so a revocation takes effect at once). With ``auth_disabled`` (local use, bound to
loopback) every request is tenant ``local`` and no rate limit applies.

Every authenticated key draws one token per request from its bucket (``scripts.RATE``): over
``rate_limit_per_second`` (bursts up to ``rate_limit_burst``) the request is a 429 whose
``Retry-After`` says when a token is free again.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import redis.asyncio as aioredis

from . import keys, scripts
from .problems import Forbidden, TooManyRequests, Unauthorized
from .settings import Settings

LOCAL_TENANT = "local"
KEY_PREFIX = "zok_"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, and the id its rate limit is kept under."""

    tenant: str
    key_id: str


def bearer_token(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None


class KeyRing:
    """Maps key digests to tenants (static keys, then Redis) and meters each key's requests."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None):
        self.disabled = settings.auth_disabled
        self.by_digest = {digest(k): t for k, t in settings.api_keys.items()}
        admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
        self.admin_digest = digest(admin) if admin else None
        self.rate, self.burst = settings.rate_limit_per_second, settings.rate_limit_burst
        self.r = client
        self._rate = client.register_script(scripts.RATE) if client is not None else None

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller's principal; 401 for a missing, unknown or revoked key."""
        if self.disabled:
            return Principal(LOCAL_TENANT, "")
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized("missing Bearer API key")
        d = digest(token)
        tenant = self.by_digest.get(d)
        if tenant is not None:
            return Principal(tenant, "static-" + d[:16])
        if self.r is not None:
            rec = await self.r.hmget(keys.apikey(d), "id", "tenant", "revoked_at")
            if rec[0] is not None and not rec[2]:
                return Principal(rec[1].decode(), rec[0].decode())
        raise Unauthorized("unknown or revoked API key")

    async def admit(self, principal: Principal) -> None:
        """Take one token from the principal's bucket; 429 with ``Retry-After`` when it is empty."""
        if not principal.key_id or self.rate <= 0 or self._rate is None:
            return
        wait_ms = int(await self._rate(keys=[keys.rate(principal.key_id)], args=[self.rate, self.burst]))
        if wait_ms > 0:
            raise TooManyRequests(f"rate limit of {self.rate:g} requests/s per key exceeded",
                                  retry_after=math.ceil(wait_ms / 1000))

    def check_admin(self, authorization: str | None) -> None:
        """401 without a key, 403 for any key but the admin key (or when none is configured)."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized("missing Bearer admin key")
        if self.admin_digest is None or not hmac.compare_digest(digest(token), self.admin_digest):
            raise Forbidden("this operation needs the admin key")


async def create_key(r: aioredis.Redis, tenant: str, name: str | None) -> dict[str, str]:
    """Mint a runtime key; returns its record plus the clear ``key`` (shown once, stored only hashed)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    d = digest(key)
    record = {"id": "key_" + uuid.uuid4().hex[:16], "tenant": tenant, "name": name or "",
              "created_at": datetime.now(timezone.utc).isoformat(), "revoked_at": ""}
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.apikey(d), mapping=record)
    pipe.set(keys.apikey_id(record["id"]), d)
    pipe.zadd(keys.APIKEYS, {record["id"]: datetime.now(timezone.utc).timestamp()})
    await pipe.execute()
    return {**record, "key": key}


async def list_keys(r: aioredis.Redis) -> list[dict[str, str]]:
    """Every runtime key's record (no secrets), oldest first."""
    out = []
    for key_id in await r.zrange(keys.APIKEYS, 0, -1):
        d = await r.get(keys.apikey_id(key_id.decode()))
        raw = await r.hgetall(keys.apikey(d.decode())) if d else {}
        if raw:
            out.append({k.decode(): v.decode() for k, v in raw.items()})
    return out


async def revoke_key(r: aioredis.Redis, key_id: str) -> dict[str, str] | None:
    """Mark a runtime key revoked (effective on the next request); None if there is no such key."""
    d = await r.get(keys.apikey_id(key_id))
    if d is None:
        return None
    h = keys.apikey(d.decode())
    if not await r.exists(h):
        return None
    if not await r.hget(h, "revoked_at"):
        await r.hset(h, "revoked_at", datetime.now(timezone.utc).isoformat())
    raw = await r.hgetall(h)
    return {k.decode(): v.decode() for k, v in raw.items()}
