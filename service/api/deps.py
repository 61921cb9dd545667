"""Request dependencies: settings, store, tenant, and the job being addressed (loaded and authorised once)."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from ..problems import NotFound
from ..security import KeyRing
from ..settings import Settings
from ..store import JobStore


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_store(request: Request) -> JobStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_celery(request: Request) -> Celery:
    return request.app.state.celery  # type: ignore[no-any-return]


def get_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    keyring: KeyRing = request.app.state.keyring
    return keyring.tenant_for(authorization)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
TenantDep = Annotated[str, Depends(get_tenant)]


async def get_job_hash(job_id: str, tenant: TenantDep, store: StoreDep) -> dict[str, str]:
    h = await store.get_hash(tenant, job_id)
    if h is None:
        raise NotFound(f"no job {job_id}")
    return h


JobHashDep = Annotated[dict[str, str], Depends(get_job_hash)]
