"""Rater links: capability URLs that let one person rank one job's queries and nothing else."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class RaterLinkCreate(BaseModel):
    """Body of ``POST /v1/jobs/{id}/rater-links`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    expires_in_days: float | None = Field(
        None, gt=0, le=365, description="Lifetime of the link; default: the server's rater_link_days."
    )


class RaterLinkInfo(BaseModel):
    """A rater link as listed to the job's owner (the token itself is shown only once)."""

    id: str = Field(description="Use it to revoke the link: DELETE /v1/jobs/{job_id}/rater-links/{id}.")
    job_id: str
    created_at: datetime
    expires_at: datetime


class RaterLink(RaterLinkInfo):
    """A new rater link. ``token`` is a Bearer credential for this job's form only; keep it secret."""

    token: str = Field(description="Send as `Authorization: Bearer <token>`; valid for this job's ranking only.")
    url: str = Field(description="The ranking form for this token (no API key needed).")


class RaterLinkPage(BaseModel):
    items: list[RaterLinkInfo]
