"""Dataset validation and storage: a ``.npz`` (X, y) stored in Redis so any worker can read it."""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np

from . import keys
from .problems import Unprocessable
from .records import now_iso

MIN_ROWS = 10


def validate_npz(data: bytes) -> dict[str, Any]:
    """Check an upload and describe it; raise :class:`Unprocessable` with the reason."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "X" not in npz.files or "y" not in npz.files:
                raise Unprocessable(f"the .npz needs arrays 'X' and 'y'; it has {sorted(npz.files)}")
            X, y = npz["X"], npz["y"]
    except Unprocessable:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the uploader's problem
        raise Unprocessable(f"not a readable .npz without pickled objects: {type(exc).__name__}") from None
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise Unprocessable(f"need X of shape (n, d) and y of shape (n,); got {X.shape} and {y.shape}")
    if X.shape[0] < MIN_ROWS:
        raise Unprocessable(f"need at least {MIN_ROWS} rows, got {X.shape[0]}")
    if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X.astype(np.float64)).all():
        raise Unprocessable("X must be finite numbers")
    if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
        raise Unprocessable("y must hold integer class labels")
    classes = int(np.unique(y).size)
    if classes < 2:
        raise Unprocessable("y must have at least two classes")
    return {"n": int(X.shape[0]), "d": int(X.shape[1]), "classes": classes, "size": len(data)}


async def store_dataset(r: Any, tenant: str, name: str | None, data: bytes) -> dict[str, Any]:
    meta = validate_npz(data)
    ds_id = "ds_" + uuid.uuid4().hex[:20]
    record = {"id": ds_id, "tenant": tenant, "name": name or "", "created_at": now_iso(), **{k: str(v) for k, v in meta.items()}}
    pipe = r.pipeline(transaction=True)
    pipe.hset(keys.dataset(ds_id), mapping=record)
    pipe.set(keys.dataset_data(ds_id), data)
    pipe.zadd(keys.tenant_datasets(tenant), {ds_id: __import__("time").time()})
    await pipe.execute()
    return record


async def get_dataset(r: Any, tenant: str, ds_id: str) -> dict[str, str] | None:
    raw = await r.hgetall(keys.dataset(ds_id))
    h = {k.decode(): v.decode() for k, v in raw.items()}
    return h if h and h.get("tenant") == tenant else None
