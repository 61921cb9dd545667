"""Dataset validation and storage: a ``.npz`` (X, y) stored in Redis so any worker can read it."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import numpy as np

from . import keys
from .problems import Unprocessable
from .records import now_iso

MIN_ROWS = 10


def validate_npz(data: bytes) -> dict[str, Any]:
    """Check an upload and describe it; raise :class:`Unprocessable` with the reason.

    Two layouts: tabular (``X`` (n, d) numbers, ``y`` (n,) integer labels) for metric objectives,
    and images (``images`` (N, C, H, W) in [0, 1], optional ``labels`` (N,)) for ZO-AE-DS.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k in ("X", "y", "images", "labels")}
    except Exception as exc:  # noqa: BLE001 - anything unreadable is the uploader's problem
        raise Unprocessable(f"not a readable .npz without pickled objects: {type(exc).__name__}") from None
    if "images" in arrays:
        return _describe_images(arrays["images"], arrays.get("labels"), len(data))
    if "X" not in arrays or "y" not in arrays:
        raise Unprocessable("the .npz needs arrays 'X' and 'y' (tabular) or 'images' [and 'labels'] (images)")
    X, y = arrays["X"], arrays["y"]
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise Unprocessable(f"need X of shape (n, d) and y of shape (n,); got {X.shape} and {y.shape}")
    if X.shape[0] < MIN_ROWS:
        raise Unprocessable(f"need at least {MIN_ROWS} rows, got {X.shape[0]}")
    if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X.astype(np.float64)).all():
        raise Unprocessable("X must be finite numbers")
    classes = _classes(y)
    if classes < 2:
        raise Unprocessable("y must have at least two classes")
    return {"kind": "tabular", "n": int(X.shape[0]), "d": int(X.shape[1]), "classes": classes, "size": len(data),
            "shape": json.dumps([int(X.shape[1])])}


def _classes(y: np.ndarray) -> int:
    if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
        raise Unprocessable("labels must be integer classes")
    return int(np.unique(y).size)


def _describe_images(images: np.ndarray, labels: np.ndarray | None, size: int) -> dict[str, Any]:
    if images.ndim != 4 or min(images.shape) < 1:
        raise Unprocessable(f"images must have shape (N, C, H, W); got {images.shape}")
    if images.shape[0] < MIN_ROWS:
        raise Unprocessable(f"need at least {MIN_ROWS} images, got {images.shape[0]}")
    if not np.issubdtype(images.dtype, np.number):
        raise Unprocessable("images must be numbers")
    x = images.astype(np.float64)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise Unprocessable("image values must be finite and in [0, 1]")
    classes = 0
    if labels is not None:
        if labels.shape != (images.shape[0],):
            raise Unprocessable(f"labels must have shape ({images.shape[0]},); got {labels.shape}")
        classes = _classes(labels)
    n, c, h, w = (int(v) for v in images.shape)
    return {"kind": "images", "n": n, "d": c * h * w, "classes": classes, "size": size, "shape": json.dumps([c, h, w])}


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
