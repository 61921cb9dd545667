"""Rater links: capability tokens for one job's ranking form.

A token ``rater_<secret>`` is handed out once (``POST /v1/jobs/{id}/rater-links``); Redis keeps
only its SHA-256 digest (``keys.rater``, with a TTL at its expiry) and the job's list of links
(``keys.job_raters``). A request bearing ``Authorization: Bearer rater_<secret>`` acts as the
job's owner on exactly these routes of exactly that job, and everything else is 404 — as if
the rest of the API did not exist for it:

* ``GET  /v1/jobs/{id}/queries`` and ``GET /v1/jobs/{id}/queries/{qid}/answer``
* ``GET  /v1/jobs/{id}/queries/{qid}/candidates/{cid}.png``
* ``GET  /v1/jobs/{id}/events``
* ``POST /v1/jobs/{id}/queries/{qid}/answer``

An unknown, expired or revoked token is 401.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request

from . import keys
from .problems import NotFound, Unauthorized

PREFIX = "rater_"
_JOB = r"/v1/jobs/(?P<job>[^/]+)"
ALLOWED: tuple[tuple[str, re.Pattern[str]], ...] = tuple((m, re.compile(f"^{_JOB}{p}$")) for m, p in (
    ("GET", "/queries"),
    ("GET", r"/queries/[^/]+/answer"),
    ("GET", r"/queries/[^/]+/candidates/[^/]+\.png"),
    ("GET", "/events"),
    ("POST", r"/queries/[^/]+/answer"),
))


def bearer(authorization: str | None) -> str | None:
    """The rater token in an ``Authorization`` header, or None if it holds no rater token."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    token = authorization[7:].strip()
    return token if token.startswith(PREFIX) else None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_link(r: aioredis.Redis, job_id: str, tenant: str, days: float) -> dict[str, Any]:
    """Mint a token for ``job_id``; returns the stored record plus the clear ``token`` (shown once)."""
    token = PREFIX + secrets.token_urlsafe(24)
    now = datetime.now(timezone.utc)
    ttl = max(1, int(timedelta(days=days).total_seconds()))
    record = {"id": "rl_" + secrets.token_hex(6), "job_id": job_id, "tenant": tenant,
              "created_at": now.isoformat(), "expires_at": (now + timedelta(seconds=ttl)).isoformat()}
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.rater(digest(token)), mapping=dict(record))  # type: ignore[arg-type]
    pipe.expire(keys.rater(digest(token)), ttl)
    pipe.hset(keys.job_raters(job_id), record["id"], json.dumps({**record, "digest": digest(token)}))
    await pipe.execute()
    return {**record, "token": token}


async def list_links(r: aioredis.Redis, job_id: str) -> list[dict[str, Any]]:
    """The job's live links, oldest first (expired ones are pruned from the list)."""
    now = datetime.now(timezone.utc)
    out, stale = [], []
    for link_id, body in (await r.hgetall(keys.job_raters(job_id))).items():
        rec = json.loads(body)
        if datetime.fromisoformat(rec["expires_at"]) <= now:
            stale.append(link_id)
        else:
            out.append({k: rec[k] for k in ("id", "job_id", "created_at", "expires_at")})
    if stale:
        await r.hdel(keys.job_raters(job_id), *stale)
    return sorted(out, key=lambda rec: rec["created_at"])


async def revoke_link(r: aioredis.Redis, job_id: str, link_id: str) -> bool:
    """Delete a link at once; False if the job has no such link."""
    body = await r.hget(keys.job_raters(job_id), link_id)
    if body is None:
        return False
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.rater(json.loads(body)["digest"]))
    pipe.hdel(keys.job_raters(job_id), link_id)
    await pipe.execute()
    return True


async def lookup(r: aioredis.Redis, token: str) -> dict[str, str] | None:
    """The live record of ``token`` (id, job_id, tenant, created_at, expires_at), or None."""
    raw = await r.hgetall(keys.rater(digest(token)))
    if not raw:
        return None
    rec = {_text(k): _text(v) for k, v in raw.items()}
    if datetime.fromisoformat(rec["expires_at"]) <= datetime.now(timezone.utc):
        return None  # Redis expires the key too; this covers clock skew between API and Redis
    return rec


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def allowed(method: str, path: str, job_id: str) -> bool:
    """Whether a rater of ``job_id`` may call ``method path``."""
    for m, pattern in ALLOWED:
        match = pattern.match(path)
        if m == method and match and match["job"] == job_id:
            return True
    return False


async def rater_tenant(request: Request, token: str) -> str:
    """The tenant a rater token acts for on this request (401 bad token, 404 outside its job's form)."""
    rec = await lookup(request.app.state.store.r, token)
    if rec is None:
        raise Unauthorized("unknown, expired or revoked rater link")
    if not allowed(request.method, request.scope["path"], rec["job_id"]):
        raise NotFound(f"no such resource: {request.scope['path']}")
    return rec["tenant"]
