"""``/v1/datasets``: upload a ``.npz`` (X, y) for metric objectives."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from zoserve.models.datasets import Dataset, DatasetPage

from ... import keys
from ...datasets import get_dataset, store_dataset
from ...problems import NotFound, TooLarge
from ..deps import SettingsDep, StoreDep, TenantDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=Dataset, summary="Upload a .npz dataset (arrays X and y)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                 "schema": {"type": "string", "format": "binary"}}}}})
async def upload_dataset(request: Request, response: Response, tenant: TenantDep, store: StoreDep, settings: SettingsDep,
                         name: Annotated[str | None, Query(max_length=200)] = None) -> Dataset:
    """The body is the raw ``.npz`` file (``Content-Type: application/octet-stream``); no pickled objects."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > settings.max_dataset_bytes:
            raise TooLarge(f"datasets are limited to {settings.max_dataset_bytes} bytes")
    record = await store_dataset(store.r, tenant, name, bytes(data))
    response.headers["Location"] = f"/v1/datasets/{record['id']}"
    return Dataset.model_validate(record)


@router.get("", response_model=DatasetPage, summary="List your datasets")
async def list_datasets(tenant: TenantDep, store: StoreDep) -> DatasetPage:
    ids = [i.decode() for i in await store.r.zrevrange(keys.tenant_datasets(tenant), 0, 999)]
    items = [await get_dataset(store.r, tenant, i) for i in ids]
    return DatasetPage(items=[Dataset.model_validate(h) for h in items if h])


@router.get("/{dataset_id}", response_model=Dataset, summary="Get a dataset's description")
async def read_dataset(dataset_id: str, tenant: TenantDep, store: StoreDep) -> Dataset:
    h = await get_dataset(store.r, tenant, dataset_id)
    if h is None:
        raise NotFound(f"no dataset {dataset_id}")
    return Dataset.model_validate(h)


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset")
async def delete_dataset(dataset_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    if await get_dataset(store.r, tenant, dataset_id) is None:
        raise NotFound(f"no dataset {dataset_id}")
    await store.r.delete(keys.dataset(dataset_id), keys.dataset_data(dataset_id))
    await store.r.zrem(keys.tenant_datasets(tenant), dataset_id)
    return Response(status_code=204)
