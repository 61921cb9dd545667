"""Wire models for ranking-oracle jobs: the ZO-RankSGD config and the ranking objective spec.

ZO-RankSGD: Tang, Rybin & Chang, "Zeroth-Order Optimization Meets Human Feedback: Provable
Learning via Ranking Oracles", ICLR 2024. The oracle's shape (m candidates, top k) belongs to
the objective, not to the algorithm config.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator, model_validator

from zoserve.models.endpoint import check_headers
from zoserve.models.objectives import BuiltinFunction


class ZORankSGDConfig(BaseModel):
    """ZO-RankSGD hyperparameters (paper Algorithm 1, optional Algorithm 2 line search).

    Defaults: ``schedule="linesearch"``, ``lr=0.5``, ``gamma=0.5``, ``ls_candidates=8``,
    ``mu=0.01``. Measured on the sphere, d = 100, m = 10, k = 5, x0 = 1 (f = 100): 3000 oracle
    calls (a line-search step counts as two) end at median f ≈ 1e-3 over 5 seeds; the
    line search keeps working from f(x0) = 1e4. Fixed/decaying η need ``lr`` ≈ 0.01–0.05
    (median f ≈ 0.01 on the same problem with ``schedule="decay"``, ``lr=0.05``).

    ``step_adaptation="adaptive"`` is an opt-in deviation from the paper: η and μ follow the
    line-search picks, so nothing puts a floor under f. Same problem: median f ≈ 3e-41, or
    ≈ 2e-43 with ``gamma=0.7`` (recommended with "adaptive": the grid re-centres itself, so
    resolution matters more than range), where CMA-ES fed the same ranks reaches ≈ 1e-30
    (``bench/ranksgd.py``).
    """

    model_config = ConfigDict(extra="forbid")

    algorithm: ClassVar[str] = "zo-ranksgd"

    lr: float = Field(
        0.5, gt=0.0, le=1e6,
        description="Step size η (paper scale: the estimate is built from unit-variance directions, "
        "not μ-scaled ones). With a line search it is the largest trial step.",
    )
    mu: float = Field(0.01, gt=0.0, le=1e6, description="Smoothing radius μ of the perturbations x + μξ.")
    schedule: Literal["fixed", "decay", "linesearch"] = Field(
        "linesearch",
        description="'fixed': η_t = lr; 'decay': η_t = lr / (1 + t/decay_steps)^decay_power; "
        "'linesearch': Algorithm 2, a second ranking query picks among x − lr·γ^i·g̃ and x.",
    )
    decay_steps: float = Field(100.0, gt=0.0, le=1e9, description="Time scale of the 'decay' schedule, in iterations.")
    decay_power: float = Field(0.5, ge=0.0, le=2.0, description="Exponent of the 'decay' schedule (0.5: η ∝ 1/√t).")
    gamma: float = Field(0.5, gt=0.0, lt=1.0, description="Line-search shrink factor γ.")
    ls_candidates: int = Field(
        8, ge=1, le=62, description="Line-search trial steps L (the query shows L+1 points, L+2 for 'two-round')."
    )
    protocol: Literal["ranking", "two-round"] = Field(
        "ranking",
        description="'ranking': the paper's algorithms. 'two-round': the official human-feedback loop; the "
        "pick-best round also offers the best perturbed point, and estimates are averaged until x moves. "
        "Requires schedule='linesearch'.",
    )
    directions: Literal["gaussian", "sphere"] = Field(
        "gaussian", description="Perturbation directions: N(0, I), or uniform on the sphere of radius √d."
    )
    # Deviation from the paper (opt-in): Algorithm 2 keeps η and μ fixed; "adaptive" adapts both.
    step_adaptation: Literal["none", "adaptive"] = Field(
        "none",
        description="'none': the paper's fixed lr and mu. 'adaptive' (a deviation from the paper): after each "
        "line-search pick i the base step becomes lr_t·γ^(i − adapt_center) (keeping x counts as i = L), and "
        "mu_t = mu·lr_t/lr, so the smallest trial step and the perturbation radius shrink with the iterate's "
        "progress; lr and mu are the starting values. Driven by the oracle's picks only (rank-invariant). "
        "Requires schedule='linesearch'; gamma=0.7 is recommended with it.",
    )
    # Deviation from the paper (opt-in): used by step_adaptation="adaptive" only.
    adapt_center: float | None = Field(
        None, ge=0.0, le=62.0,
        description="'adaptive' only: the line-search pick index that leaves the step unchanged (<= ls_candidates). "
        "Default (ls_candidates + 1)/2: a pick that carries no information (uniform over the L+1 options) then "
        "grows the step slowly instead of shrinking it.",
    )

    @model_validator(mode="after")
    def _check_protocol(self) -> ZORankSGDConfig:
        if self.protocol == "two-round" and self.schedule != "linesearch":
            raise ValueError("protocol='two-round' requires schedule='linesearch'")
        if self.step_adaptation == "adaptive" and self.schedule != "linesearch":
            raise ValueError("step_adaptation='adaptive' requires schedule='linesearch'")
        if self.adapt_center is not None and self.adapt_center > self.ls_candidates:
            raise ValueError(f"adapt_center ({self.adapt_center}) must be <= ls_candidates ({self.ls_candidates})")
        return self

    def hparams(self) -> dict[str, object]:
        """Keyword arguments for ``workers.algorithms.rank_sgd.ZORankSGD`` (m and k come from the objective)."""
        return self.model_dump()


class RankingObjective(BaseModel):
    """An (m, k)-ranking oracle: each query shows m candidates and gets back the k best, best first.

    ``builtin`` simulates the oracle by ranking a test function (with optional noise and
    adjacent flips); ``human`` publishes the candidates to the ranking web form; ``client``
    waits for the caller's program to post rankings; ``endpoint`` POSTs candidates to ``url``.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ranking"] = "ranking"
    oracle: Literal["builtin", "human", "client", "endpoint"] = Field(description="Who answers the ranking queries.")
    function: BuiltinFunction | None = Field(None, description="Test function ranked by the 'builtin' oracle.")
    dim: int = Field(ge=1, le=1_000_000, description="Dimension of x.")
    m: int = Field(10, ge=2, le=64, description="Candidates shown per ranking query.")
    k: int = Field(
        5, ge=1, le=64, description="How many best candidates the oracle returns (k <= m; k = m is a full ranking)."
    )
    noise: float = Field(0.0, ge=0.0, le=1e6, description="'builtin': std of Gaussian noise added before ranking.")
    flip_prob: float = Field(0.0, ge=0.0, le=0.5, description="'builtin': probability of swapping each adjacent pair.")
    url: HttpUrl | None = Field(None, description="'endpoint': where candidate batches are POSTed for ranking.")
    headers: dict[Annotated[str, Field(max_length=128)], Annotated[SecretStr, Field(max_length=8192)]] = Field(
        default_factory=dict, max_length=20, description="'endpoint': extra request headers (auth); never echoed."
    )
    render: Literal["vector", "palette", "curve", "image", "endpoint"] | None = Field(
        None, description="How the web form displays a candidate vector (None: the service picks by dim). "
        "'endpoint': the worker POSTs {'point': [...]} per candidate to render_url, which answers a PNG, JPEG or "
        "WebP image (at most 4 MiB) that the form shows."
    )
    render_url: HttpUrl | None = Field(None, description="render='endpoint': the image generator (point -> image).")
    render_headers: dict[Annotated[str, Field(max_length=128)], Annotated[SecretStr, Field(max_length=8192)]] = Field(
        default_factory=dict, max_length=20, description="render='endpoint': extra request headers (auth); never echoed."
    )
    x0: float | None = Field(
        None, ge=-1e6, le=1e6, description="Default start: every coordinate set to this value when the job gives no x0."
    )

    @field_validator("headers", "render_headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_headers(headers)

    @model_validator(mode="after")
    def _check_shape(self) -> RankingObjective:
        if self.k > self.m:
            raise ValueError(f"k ({self.k}) must be <= m ({self.m})")
        if self.oracle == "builtin" and self.function is None:
            raise ValueError("oracle='builtin' needs a function")
        if self.oracle != "builtin" and (self.function is not None or self.noise or self.flip_prob):
            raise ValueError("function, noise and flip_prob apply to oracle='builtin' only")
        if (self.oracle == "endpoint") != (self.url is not None):
            raise ValueError("url is required for oracle='endpoint' and only allowed there")
        if self.headers and self.oracle != "endpoint":
            raise ValueError("headers apply to oracle='endpoint' only")
        if (self.render == "endpoint") != (self.render_url is not None):
            raise ValueError("render_url is required for render='endpoint' and only allowed there")
        if self.render_headers and self.render != "endpoint":
            raise ValueError("render_headers apply to render='endpoint' only")
        if self.render == "endpoint" and self.oracle not in ("human", "client"):
            raise ValueError("render='endpoint' draws candidates for people: oracle 'human' or 'client'")
        return self
