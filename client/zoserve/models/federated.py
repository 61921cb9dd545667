"""Federated ZO: the FZooS and FedZO algorithm configs and the ``federated`` objective spec.

FZooS: Shu, Lin, Dai & Low, "Federated Zeroth-Order Optimization using Trajectory-Informed
Surrogate Gradients", arXiv 2308.04077; defaults are the official code's (brief fzoos.md §7)
except ``n_features`` (1000, the brief's CPU reproduction; code 10 000) and ``gamma``.
FedZO: Fang et al. 2022, with the FZooS code's RGF local solver and its SCAFFOLD/FedProx variants.

Torch-free: ``hparams()`` returns the keyword arguments of the worker-side parameter classes
(``workers.algorithms.fzoos.FZooSParams`` / ``fed_baselines.FedZOParams``); ``rounds`` is read by
the orchestrator and is not part of them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FZooSConfig", "FedZOConfig", "FederatedClient", "FederatedObjective", "FEDERATED_CONFIGS"]


class _FederatedConfig(BaseModel):
    """Fields every federated algorithm shares: the round structure and the server's acceptance."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(20, ge=1, le=10_000, description="Communication rounds (read by the orchestrator).")
    local_iters: int = Field(10, ge=1, le=1000, description="Local steps T per round (code: 10).")
    lr: float = Field(0.01, gt=0.0, le=10.0, description="Adam learning rate, state reset every round (code: 0.01).")
    accept_test: bool = Field(False, description="Keep x_{r-1} when Σ p_i f_i(x_cand) does not improve (the FZooS code's server test; N counted queries per round).")
    max_failed_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of clients that may fail in a round before the round fails.")

    def hparams(self) -> dict[str, object]:
        """Keyword arguments for the worker-side parameter class (everything but ``rounds``)."""
        return self.model_dump(exclude={"rounds"})


class FZooSConfig(_FederatedConfig):
    """FZooS: local steps on a trajectory-informed GP gradient surrogate, corrected towards the
    global random-Fourier-feature surrogate (two aggregations per round)."""

    algorithm: ClassVar[str] = "fzoos"

    n_features: int = Field(1000, ge=1, le=100_000, description="Random Fourier features M: length of the weight vector each client uploads.")
    rff_lengthscale: float = Field(1.0, gt=0.0, le=1e3, description="Shared RFF (SE kernel) lengthscale in [0,1]^d units (code: 1.0).")
    rff_ridge: float = Field(1e-6, ge=0.0, le=1.0, description="Ridge λ of the RFF fit on normalised values (code: 0, singular on duplicates).")
    gamma: Literal["adaptive", "decay"] | Annotated[float, Field(ge=0.0, le=10.0)] = Field(
        "adaptive",
        description="Correction weight γ: 'adaptive' (shrinkage ‖c‖²/(‖c‖²+2‖e‖²), ours), 'decay' (1/(t+1), the code), "
        "or a fixed value in [0, 10] (1 = full correction, 0 = no correction and no RFF phase: the ablation).",
    )
    n_init: int = Field(10, ge=1, le=10_000, description="Initial queries around x0, x0 included (code: 10).")
    init_radius: float = Field(0.01, gt=0.0, le=1.0, description="Half-width of the initial box around x0.")
    explore_points: int = Field(5, ge=0, le=1000, description="Exploration queries per local step (directions per iteration; code: 5).")
    explore_candidates: int = Field(100, ge=1, le=100_000, description="Uniform candidates the exploration queries are picked from.")
    explore_radius: float = Field(0.01, gt=0.0, le=1.0, description="Half-width (μ) of the exploration box around each iterate.")
    refit_points: int = Field(50, ge=0, le=10_000, description="Queries around the new global point before the RFF refit (code: 50).")
    refit_candidates: int = Field(200, ge=1, le=100_000, description="Candidates the refit queries are picked from (code: 200).")
    gp_neighbors: int = Field(150, ge=2, le=5000, description="History points nearest the iterate used by the local GP (code: 150).")
    rff_neighbors: int = Field(500, ge=2, le=20_000, description="History points nearest the global point used by the RFF fit (code: 500).")
    max_history: int = Field(5000, ge=10, le=1_000_000, description="Queries each client keeps (oldest dropped).")
    gp_noise: float = Field(1e-6, gt=0.0, le=1.0, description="GP noise variance on normalised values (code: 1e-6).")
    kernel: Literal["matern52", "se"] = Field("matern52", description="Local GP kernel (code: Matérn-5/2).")


class FedZOConfig(_FederatedConfig):
    """FedZO: T local ZO-Adam steps on an RGF estimate, then FedAvg (optionally FedProx/SCAFFOLD)."""

    algorithm: ClassVar[str] = "fedzo"

    q: int = Field(20, ge=1, le=100_000, description="RGF directions per step: q + 1 queries (code: 20).")
    mu: float = Field(0.01, gt=0.0, le=1.0, description="Forward-difference radius (code: 0.01).")
    orthogonal: bool = Field(True, description="Orthonormalise the q Gaussian directions (code: Gram-Schmidt).")
    correction: Literal["none", "prox", "scaffold1", "scaffold2"] = Field(
        "none", description="'none' = FedZO; 'prox' = FedProx; 'scaffold1'/'scaffold2' = ZO SCAFFOLD type I/II."
    )
    prox_mu: float = Field(1.0, ge=0.0, le=1e3, description="FedProx proximal weight (code: 1).")


class FederatedClient(BaseModel):
    """One client: its own objective spec (any other objective kind), queue and weight p_i."""

    model_config = ConfigDict(extra="forbid")

    objective: dict[str, Any] = Field(description="The client's objective spec (validated by the service).")
    queue: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$", description="Worker queue running this client.")
    weight: float = Field(1.0, gt=0.0, le=1e6, description="Aggregation weight; normalised over the clients.")


class FederatedObjective(BaseModel):
    """F = Σ p_i f_i over 2..64 clients: either explicit ``clients`` or a built-in synthetic ``family``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["federated"] = "federated"
    clients: list[FederatedClient] | None = Field(None, min_length=2, max_length=64, description="Explicit clients.")
    family: Literal["quadratic", "shifted_quadratic"] | None = Field(
        None, description="Built-in heterogeneous family: the FZooS code's quadratic, or the shifted-optima one."
    )
    n_clients: int | None = Field(None, ge=2, le=64, description="Clients of the synthetic family (default 5).")
    dim: int | None = Field(None, ge=1, le=1_000_000, description="Dimension of x (synthetic default 50).")
    heterogeneity: float | None = Field(None, ge=0.0, le=100.0, description="Synthetic div (default 0.5 quadratic, 2 shifted).")
    problem_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the synthetic family's coefficients and x0.")

    @model_validator(mode="after")
    def _one_source(self) -> "FederatedObjective":
        if (self.clients is None) == (self.family is None):
            raise ValueError("give exactly one of 'clients' or 'family'")
        if self.clients is None:
            self.n_clients = 5 if self.n_clients is None else self.n_clients
            self.dim = 50 if self.dim is None else self.dim
            return self
        if self.n_clients is not None and self.n_clients != len(self.clients):
            raise ValueError(f"n_clients={self.n_clients} but {len(self.clients)} clients are listed")
        if self.heterogeneity is not None:
            raise ValueError("'heterogeneity' only applies to a synthetic family")
        dims = {c.objective.get("dim") for c in self.clients} - {None}
        if self.dim is not None:
            dims.add(self.dim)
        if len(dims) > 1:
            raise ValueError(f"clients disagree on dim: {sorted(dims, key=str)}")
        if dims and isinstance(d := next(iter(dims)), int):
            self.dim = d
        self.n_clients = len(self.clients)
        return self

    def weights(self) -> list[float]:
        """The normalised p_i (uniform for a synthetic family, as in the paper)."""
        raw = [c.weight for c in self.clients] if self.clients else [1.0] * int(self.n_clients or 0)
        return [w / sum(raw) for w in raw]


FEDERATED_CONFIGS: tuple[type[BaseModel], ...] = (FZooSConfig, FedZOConfig)
