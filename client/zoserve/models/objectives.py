"""Objective specs: a discriminated union on ``kind``.

``builtin`` functions run inside the worker; ``client`` values come from the caller through
the API (``client.jobs.serve``). Other kinds (endpoint, metric, ranking, federated) live in
their own modules and join the union here.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

BuiltinFunction = Literal["quadratic", "sphere", "rosenbrock", "ackley", "rastrigin", "levy"]


class BuiltinObjective(BaseModel):
    """A classic test function, evaluated by the worker (batched)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["builtin"] = "builtin"
    function: BuiltinFunction = Field(description="Test function to minimise.")
    dim: int = Field(ge=1, le=10_000_000, description="Dimension of x.")
    noise: float = Field(0.0, ge=0.0, le=1e6, description="Std of Gaussian noise added to every value.")
    latency_ms: float = Field(0.0, ge=0.0, le=60_000, description="Artificial wait per evaluation (simulates a slow, I/O-bound objective; used by load and scale-out tests).")


class ClientObjective(BaseModel):
    """Values supplied by the caller: the job publishes each batch of points as a pending query
    and waits (no worker held) until ``POST /v1/jobs/{id}/queries/{qid}/answer`` brings values."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["client"] = "client"
    dim: int = Field(ge=1, le=1_000_000, description="Dimension of x.")
