"""Worker side of uploaded datasets: fetch the ``.npz`` from Redis into a local cache file once."""

from __future__ import annotations

from pathlib import Path

import redis

from service import keys

from .objectives.base import ObjectiveRefused


def dataset_path(client: redis.Redis, cache_dir: Path, dataset_id: str) -> str:
    """Path of a local copy of the dataset (written once per worker machine)."""
    path = Path(cache_dir) / f"{dataset_id}.npz"
    if not path.exists():
        data = client.get(keys.dataset_data(dataset_id))
        if data is None:
            raise ObjectiveRefused(f"dataset {dataset_id} does not exist (deleted?)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)  # type: ignore[arg-type]
        tmp.replace(path)
    return str(path)
