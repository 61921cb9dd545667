"""Request dependencies: settings, store, tenant, and the job being addressed (loaded and authorised once)."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Path, Request

from .. import raters
from ..problems import NotFound
from ..queue import Sender
from ..security import KeyRing, Principal, digest
from ..settings import Settings
from ..store import JobStore


# ``async`` only so that FastAPI calls these inline: a plain ``def`` dependency runs in the thread
# pool, one thread hop per dependency per request.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> JobStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


async def get_sender(request: Request) -> Sender:
    return request.app.state.sender  # type: ignore[no-any-return]


# The header is documented once, as the OpenAPI ``bearer`` security scheme (service/api/openapi.py).
Authorization = Annotated[str | None, Header(include_in_schema=False)]


async def get_tenant(request: Request, authorization: Authorization = None) -> str:
    keyring: KeyRing = request.app.state.keyring
    if token := raters.bearer(authorization):  # a rater link: its job's form routes only, else 404
        tenant = await raters.rater_tenant(request, token)
        await keyring.admit(Principal(tenant, "rater-" + digest(token)[:16]))
        return tenant
    principal = await keyring.authenticate(authorization)  # 401
    await keyring.admit(principal)  # 429 over the key's rate limit
    return principal.tenant


def require_admin(request: Request, authorization: Authorization = None) -> None:
    """Admin routes: 401 without a key, 403 with any key but ``admin_key``."""
    keyring: KeyRing = request.app.state.keyring
    keyring.check_admin(authorization)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SenderDep = Annotated[Sender, Depends(get_sender)]
TenantDep = Annotated[str, Depends(get_tenant)]
AdminDep = Depends(require_admin)


async def get_job_hash(job_id: Annotated[str, Path(max_length=64)], tenant: TenantDep, store: StoreDep) -> dict[str, str]:
    h = await store.get_hash(tenant, job_id)
    if h is None:
        raise NotFound(f"no job {job_id}")
    return h


JobHashDep = Annotated[dict[str, str], Depends(get_job_hash)]
