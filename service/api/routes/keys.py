"""``/v1/keys``: the admin creates, lists and revokes API keys at runtime (static keys live in settings)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Response

from zoserve.models.keys import ApiKey, ApiKeyCreate, ApiKeyInfo, ApiKeyPage

from ...problems import NotFound
from ...security import create_key, list_keys, revoke_key
from ..deps import AdminDep, StoreDep

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[AdminDep])
ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"description": "No key"}, 403: {"description": "Not the admin key"}}


def _info(rec: dict[str, str]) -> dict[str, str | None]:
    return {**rec, "name": rec.get("name") or None, "revoked_at": rec.get("revoked_at") or None}


@router.post("", status_code=201, response_model=ApiKey, summary="Create an API key (admin)", responses=ADMIN_RESPONSES)
async def create_api_key(body: ApiKeyCreate, store: StoreDep, response: Response) -> ApiKey:
    """The response holds the key in clear, once; Redis keeps only its SHA-256 digest."""
    rec = await create_key(store.r, body.tenant, body.name)
    response.headers["Location"] = f"/v1/keys/{rec['id']}"
    return ApiKey.model_validate(_info(rec))


@router.get("", response_model=ApiKeyPage, summary="List API keys (admin; no secrets)", responses=ADMIN_RESPONSES)
async def list_api_keys(store: StoreDep) -> ApiKeyPage:
    return ApiKeyPage(items=[ApiKeyInfo.model_validate(_info(rec)) for rec in await list_keys(store.r)])


@router.delete("/{key_id}", response_model=ApiKeyInfo, summary="Revoke an API key (admin; effective at once)",
               responses={**ADMIN_RESPONSES, 404: {"description": "No such key"}})
async def revoke_api_key(store: StoreDep, key_id: str = Path(max_length=64)) -> ApiKeyInfo:
    rec = await revoke_key(store.r, key_id)
    if rec is None:
        raise NotFound(f"no key {key_id}")
    return ApiKeyInfo.model_validate(_info(rec))
