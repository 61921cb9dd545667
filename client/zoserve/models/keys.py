"""API keys managed at runtime by the admin (``/v1/keys``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class ApiKeyCreate(BaseModel):
    """Body of ``POST /v1/keys``."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(pattern=TENANT_PATTERN, max_length=64, description="Tenant the key acts for.")
    name: str | None = Field(None, max_length=200, description="A label for people (who holds the key).")


class ApiKeyInfo(BaseModel):
    """A runtime key as the admin lists it (the secret itself is never stored)."""

    id: str = Field(description="Revoke with DELETE /v1/keys/{id}.")
    tenant: str
    name: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKey(ApiKeyInfo):
    """A new key. ``key`` is shown once: send it as ``Authorization: Bearer <key>``."""

    key: str = Field(description="The secret; only its SHA-256 digest is kept.")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyInfo]
