"""Uploaded datasets (``.npz`` with arrays ``X`` (n, d) and ``y`` (n,))."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class Dataset(BaseModel):
    """An uploaded dataset; reference it from a metric objective as ``dataset_id``."""

    id: str
    name: str | None = Field(None, max_length=200)
    kind: Literal["tabular", "images"] = Field("tabular", description="X/y table, or images (N, C, H, W) [+ labels].")
    shape: list[int] = Field(default_factory=list, description="One row's shape: [d] or [C, H, W].")
    n: int = Field(description="Rows of X.")
    d: int = Field(description="Columns of X.")
    classes: int = Field(description="Distinct labels (0 for unlabelled images).")

    @field_validator("shape", mode="before")
    @classmethod
    def _shape_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v
    size: int = Field(description="Bytes of the stored .npz.")
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[Dataset]
