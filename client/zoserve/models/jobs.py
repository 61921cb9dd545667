"""Job wire models: what a user submits (:data:`JobCreate`) and what the API returns (:class:`Job`).

``JobCreate`` is a discriminated union on ``algorithm``; each variant carries that algorithm's
validated ``config``. Variants are generated from the config classes in :data:`ALGORITHM_CONFIGS`
so adding an algorithm means adding its config class there, nothing else.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator

from .catalog import ALGORITHM_CONFIGS, ObjectiveSpec
from .problems import Problem


class JobStatus(str, enum.Enum):
    """A job's life: ``queued → running ⇄ waiting → succeeded | failed | cancelled``."""

    queued = "queued"
    running = "running"
    waiting = "waiting"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Budget(BaseModel):
    """When to stop: whichever limit is reached first."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [{"required": ["max_queries"]},
                                                                          {"required": ["max_steps"]}]})

    max_queries: int | None = Field(None, ge=1, le=10**10, description="Objective queries (oracle calls for rankings).")
    max_steps: int | None = Field(None, ge=1, le=10**8, description="Algorithm steps (one ask/tell each).")
    max_seconds: float | None = Field(None, gt=0, le=30 * 86400, description="Wall-clock seconds of running time.")

    @model_validator(mode="after")
    def _some_limit(self) -> "Budget":
        if self.max_queries is None and self.max_steps is None:
            raise ValueError("set max_queries or max_steps (or both)")
        return self


class JobSpecBase(BaseModel):
    """Fields every job spec shares; ``algorithm`` and ``config`` come from the variant."""

    model_config = ConfigDict(extra="forbid")

    objective: ObjectiveSpec
    budget: Budget
    x0: list[float] | None = Field(None, max_length=10_000_000, description="Start point; default per objective.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds every random choice of the job.")
    name: str | None = Field(None, max_length=200)
    queue: Literal["cpu", "gpu"] | None = Field(None, description="Worker queue; default cpu.")

    def algorithm_hparams(self) -> dict[str, Any]:
        """Keyword arguments for the pure algorithm: its config, plus the oracle's shape (m, k) for rankings."""
        hp = dict(getattr(self, "config").hparams())
        if getattr(self.objective, "kind", None) == "ranking":
            hp.update(m=self.objective.m, k=self.objective.k)  # type: ignore[union-attr]
        return hp

    @model_validator(mode="after")
    def _kinds_match(self) -> "JobSpecBase":
        ranking_algo = getattr(self, "algorithm", None) == "zo-ranksgd"
        ranking_obj = getattr(self.objective, "kind", None) == "ranking"
        if ranking_algo != ranking_obj:
            raise ValueError("zo-ranksgd needs a 'ranking' objective, and a 'ranking' objective needs zo-ranksgd")
        if (getattr(self, "algorithm", None) == "zo-ae-ds") != (getattr(self.objective, "kind", None) == "classifier"):
            raise ValueError("zo-ae-ds needs a 'classifier' objective, and a 'classifier' objective needs zo-ae-ds")
        fed_algo = getattr(self, "algorithm", None) in ("fzoos", "fedzo")
        if fed_algo != (getattr(self.objective, "kind", None) == "federated"):
            raise ValueError("fzoos/fedzo need a 'federated' objective, and a 'federated' objective needs fzoos or fedzo")
        if fed_algo:
            for i, c in enumerate(getattr(self.objective, "clients", None) or []):
                from .catalog import OBJECTIVE_SPECS

                kinds = {m.model_fields["kind"].default for m in OBJECTIVE_SPECS}
                kinds -= {"federated", "ranking", "client", "classifier"}
                if c.objective.get("kind") not in kinds:
                    raise ValueError(f"client {i}: objective kind must be one of {sorted(kinds)}")
                _objective_adapter().validate_python(c.objective)
        return self

    @model_validator(mode="after")
    def _x0_matches_dim(self) -> "JobSpecBase":
        dim = getattr(self.objective, "dim", None)
        if self.x0 is not None and isinstance(dim, int) and len(self.x0) != dim:
            raise ValueError(f"x0 has {len(self.x0)} entries but the objective's dim is {dim}")
        return self


def _objective_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(ObjectiveSpec)


def _variant(config_cls: type[BaseModel]) -> type[JobSpecBase]:
    name = config_cls.__name__.removesuffix("Config") + "Job"
    return create_model(  # type: ignore[call-overload,no-any-return]
        name,
        __base__=JobSpecBase,
        __doc__=f"A `{config_cls.algorithm}` job.",  # type: ignore[attr-defined]
        algorithm=(Literal[config_cls.algorithm], ...),  # type: ignore[attr-defined]
        config=(config_cls, Field(default_factory=config_cls)),
    )


JOB_VARIANTS: tuple[type[JobSpecBase], ...] = tuple(_variant(c) for c in ALGORITHM_CONFIGS)
JobCreate = Annotated[Union[JOB_VARIANTS], Field(discriminator="algorithm")]  # type: ignore[valid-type]
"""The body of ``POST /v1/jobs``."""

job_create_adapter: TypeAdapter[Any] = TypeAdapter(JobCreate)


class Progress(BaseModel):
    """Where a job is."""

    step: int = 0
    queries: int = 0
    failed_queries: int = 0
    evaluations: int = 0
    value: float | None = None
    best_value: float | None = None


class Artifact(BaseModel):
    name: str
    url: str
    media_type: str
    size: int


class Result(BaseModel):
    """A finished job's answer."""

    x_best: list[float]
    value_best: float | None
    steps: int
    queries: int
    reason: str = Field(description="Why the job stopped (budget reached, converged...).")
    artifacts: list[Artifact] = Field(default_factory=list)


class Job(BaseModel):
    """A job record as the API returns it. Secrets in the spec are never echoed."""

    id: str
    status: JobStatus
    name: str | None = None
    algorithm: str
    objective_kind: str
    spec: dict[str, Any]
    progress: Progress = Field(default_factory=Progress)
    result: Result | None = None
    error: Problem | None = None
    created_at: datetime
    updated_at: datetime
    events_url: str


class JobPage(BaseModel):
    """One page of ``GET /v1/jobs``; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[Job]
    next_cursor: str | None = None
