"""Uploaded datasets (``.npz`` with arrays ``X`` (n, d) and ``y`` (n,))."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Dataset(BaseModel):
    """An uploaded dataset; reference it from a metric objective as ``dataset_id``."""

    id: str
    name: str | None = Field(None, max_length=200)
    n: int = Field(description="Rows of X.")
    d: int = Field(description="Columns of X.")
    classes: int = Field(description="Distinct labels in y.")
    size: int = Field(description="Bytes of the stored .npz.")
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[Dataset]
