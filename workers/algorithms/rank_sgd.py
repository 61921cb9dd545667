"""ZO-RankSGD: zeroth-order descent driven only by an (m, k)-ranking oracle.

Tang, Rybin & Chang, "Zeroth-Order Optimization Meets Human Feedback: Provable Learning via
Ranking Oracles", ICLR 2024 (arXiv 2303.03751).

* Algorithm 1: query the oracle on ``x + μ ξ_i`` (i = 1..m), build the comparison DAG of the
  answer and the rank estimator ``g̃ = (1/|E|) Σ_{(a,b)∈E} (ξ_b − ξ_a)`` (an ascent direction,
  magnitude-free), then ``x ← x − η_t g̃``.
* Algorithm 2 (``schedule="linesearch"``): a second, (L+1, 1) query on ``x − η γ^i g̃``
  (i = 0..L−1) plus ``x`` itself; move to the oracle's pick.
* ``protocol="two-round"``: the official code's human-feedback loop (``optimizer.py``, the
  paper's Algorithm 3): the line-search round also offers the best perturbed point of the
  ranking round, and estimates are averaged over consecutive line searches that kept ``x``.
  Deviation from that code: its estimate uses weights m − 2r (off by one from the DAG, brief
  §2.4); we use the paper's DAG weights in both protocols.
* ``schedule="decay"`` (η_t ∝ 1/√t for large t) is not in the paper, whose theory fixes
  η ∝ 1/√(dT); a fixed η leaves a noise floor ∝ η (brief §7.3), so we offer the decay too.
* ``step_adaptation="adaptive"`` (opt-in; not in the paper): after each line-search pick the
  base step η_t and the radius μ_t ∝ η_t are re-centred on the oracle's choice (see
  :meth:`ZORankSGD._adapt`), removing the floor that the fixed η γ^(L−1) and μ put under f.

One ``tell`` is one oracle call. With a line search a step has two phases, ``"estimate"`` then
``"linesearch"``, recorded in the state. Random directions are regenerated from
``step_generator(seed, t, stream=0)`` (never stored), ``t`` counting estimate rounds.

Defaults (measured: sphere, d = 100, m = 10, k = 5, x0 = 1, 3000 oracle calls counting both
queries of a line-search step, median f ≈ 1e-3 over 5 seeds; see ``ZORankSGDConfig``):
``schedule="linesearch"``, ``lr=0.5``, ``gamma=0.5``, ``ls_candidates=8`` (the official code's
l = m − 2 for m = 10), ``mu=0.01``. The line search makes the step length adaptive over a
γ^(L−1) range, so it also works from f(x0) = 1e4, where fixed or decaying η stall.
Fixed/decaying η need η ≈ 0.01–0.05 instead (``decay_steps=100``, ``decay_power=0.5``).
``step_adaptation="adaptive"`` on the same problem: median f ≈ 3e-41 (γ = 0.5) or 2e-43
(γ = 0.7, recommended with it); CMA-ES fed the same (10, 5) ranks reaches ≈ 8e-31.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from workers.algorithms.base import Answer, Query, State, StateValue, StepInfo, step_generator
from workers.algorithms.ranking import dag_weights

Schedule = Literal["fixed", "decay", "linesearch"]
StepAdaptation = Literal["none", "adaptive"]
Protocol_ = Literal["ranking", "two-round"]
Directions = Literal["gaussian", "sphere"]

_DIRECTION_STREAM = 0
_LR_MIN, _LR_MAX = 1e-280, 1e280  # keeps the adaptive η_t (and μ_t ∝ η_t) finite and non-zero


class ZORankSGD:
    """ZO-RankSGD as a pure ask/tell algorithm (minimisation; the oracle ranks best = lowest f)."""

    name = "zo-ranksgd"

    def __init__(
        self,
        m: int = 10,
        k: int | None = 5,
        lr: float = 0.5,
        mu: float = 0.01,
        schedule: Schedule = "linesearch",
        decay_steps: float = 100.0,
        decay_power: float = 0.5,
        gamma: float = 0.5,
        ls_candidates: int = 8,
        protocol: Protocol_ = "ranking",
        directions: Directions = "gaussian",
        dtype: str = "float64",
        step_adaptation: StepAdaptation = "none",
        adapt_center: float | None = None,
    ) -> None:
        """Args:
            m: candidates per ranking query (the objective's m).
            k: how many best the oracle returns (``None`` = full ranking).
            lr: step size η (paper scale: g̃ is built from ξ, not μξ).
            mu: smoothing radius μ.
            schedule: ``"fixed"`` η_t = η; ``"decay"`` η_t = η / (1 + t/decay_steps)^decay_power;
                ``"linesearch"`` Algorithm 2 with base η.
            gamma, ls_candidates: line-search shrink factor γ and number of trial steps L.
            protocol: ``"ranking"`` (Algorithms 1/2) or ``"two-round"`` (official code loop).
            directions: ``"gaussian"`` ξ ~ N(0, I), or ``"sphere"`` ξ uniform on the sphere of
                radius √d (same scale as the Gaussian; an option the paper does not use).
            dtype: torch dtype name of the iterate and the directions.
            step_adaptation: ``"none"`` (the paper exactly) or ``"adaptive"`` (a deviation, see
                :meth:`_adapt`): η_t and μ_t follow the line-search picks.
            adapt_center: ``"adaptive"`` only: the pick index c that leaves η unchanged
                (η ← η γ^(pick − c)); ``None`` = (L + 1)/2.
        """
        if m < 2 or (k is not None and not 1 <= k <= m):
            raise ValueError(f"need m >= 2 and 1 <= k <= m, got m={m}, k={k}")
        if protocol == "two-round" and schedule != "linesearch":
            raise ValueError('protocol="two-round" requires schedule="linesearch"')
        center = (ls_candidates + 1) / 2 if adapt_center is None else float(adapt_center)
        if step_adaptation == "adaptive" and (schedule != "linesearch" or not 0.0 <= center <= ls_candidates):
            raise ValueError('step_adaptation="adaptive" needs schedule="linesearch" and 0 <= adapt_center <= L')
        self.m, self.k = m, (m if k is None else k)
        self.lr, self.mu, self.schedule = lr, mu, schedule
        self.decay_steps, self.decay_power = decay_steps, decay_power
        self.gamma, self.ls_candidates = gamma, ls_candidates
        self.protocol, self.directions = protocol, directions
        self.adaptive = step_adaptation == "adaptive"
        self.adapt_center = center
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        self.dtype: torch.dtype = getattr(torch, dtype)

    # -- state ---------------------------------------------------------------------------

    def init(self, x0: Tensor, seed: int) -> State:
        """Initial state: ``x``, counters, the phase, and (for line searches) the pending direction."""
        x = x0.detach().reshape(-1).to(dtype=self.dtype, copy=True)
        state: dict[str, StateValue] = {
            "x": x, "seed": int(seed), "step": 0, "t": 0, "phase": "estimate",
            "oracle_calls": 0, "evaluations": 0,
        }
        if self.schedule == "linesearch":
            state["direction"] = torch.zeros_like(x)  # g̃ (or the running mean D, two-round)
            state["n_avg"] = 0
        if self.protocol == "two-round":
            state["best_perturbed"] = x.clone()
        if self.adaptive:  # deviation from the paper: the base step η_t and μ_t live in the state
            state["lr_t"], state["mu_t"] = float(self.lr), float(self.mu)
        return state

    def x_of(self, state: State) -> Tensor:
        """The current iterate."""
        return _tensor(state, "x")

    # -- ask -----------------------------------------------------------------------------

    def ask(self, state: State) -> Query:
        """Estimate phase: an (m, k) query on ``x + μ ξ_i``. Line-search phase: a k = 1 query."""
        x = _tensor(state, "x")
        if state["phase"] == "linesearch":
            return Query(points=self._linesearch_points(state), kind="ranking", k=1)
        xi = self._directions(state, x)
        return Query(points=x[None, :] + self._mu(state) * xi, kind="ranking", k=self.k)

    def _directions(self, state: State, x: Tensor) -> Tensor:
        gen = step_generator(int(state["seed"]), int(state["t"]), _DIRECTION_STREAM, x.device)
        xi = torch.randn(self.m, x.numel(), generator=gen, dtype=x.dtype, device=x.device)
        if self.directions == "sphere":
            xi = xi * (math.sqrt(x.numel()) / xi.norm(dim=1, keepdim=True).clamp_min(1e-30))
        return xi

    def _linesearch_points(self, state: State) -> Tensor:
        """Algorithm 2: ``x − η γ^i D`` for i < L, then (two-round) the best perturbed point, then x."""
        x, d = _tensor(state, "x"), _tensor(state, "direction")
        scales = self._base_lr(state) * self.gamma ** torch.arange(self.ls_candidates, dtype=x.dtype, device=x.device)
        rows = [x[None, :] - scales[:, None] * d[None, :]]
        if self.protocol == "two-round":
            rows.append(_tensor(state, "best_perturbed")[None, :])
        rows.append(x[None, :])
        return torch.cat(rows)

    # -- tell ----------------------------------------------------------------------------

    def tell(self, state: State, query: Query, answer: Answer) -> tuple[State, StepInfo]:
        """Apply one oracle answer (partial rankings and ties allowed); one call is one step."""
        if answer.ranking is None:
            raise ValueError("ZO-RankSGD needs a ranking answer")
        new = dict(state)
        new["step"] = int(state["step"]) + 1
        new["oracle_calls"] = int(state["oracle_calls"]) + 1
        new["evaluations"] = int(state["evaluations"]) + int(query.points.shape[0])
        if state["phase"] == "linesearch":
            return self._tell_linesearch(state, new, query, answer)
        return self._tell_estimate(state, new, answer)

    def estimate(self, state: State, answer: Answer) -> tuple[Tensor, int]:
        """The rank estimator g̃ (paper Section 3) for this state's directions, and |E|."""
        g, n_edges, _ = self._estimate(state, answer)
        return g, n_edges

    def _estimate(self, state: State, answer: Answer) -> tuple[Tensor, int, Tensor]:
        x = _tensor(state, "x")
        w, n_edges = dag_weights(tuple(answer.ranking or ()), tuple(answer.ties), self.m)
        xi = self._directions(state, x)  # regenerated, not (y − x)/μ: exact and free of cancellation
        if n_edges == 0:  # everything tied: the answer carries no direction
            return torch.zeros_like(x), 0, xi
        return (w.to(x.dtype) / n_edges) @ xi, n_edges, xi

    def _tell_estimate(self, state: State, new: dict[str, StateValue], answer: Answer) -> tuple[State, StepInfo]:
        x = _tensor(state, "x")
        g, n_edges, xi = self._estimate(state, answer)
        t = int(state["t"])
        new["t"] = t + 1
        extra = {"est_norm": float(g.norm()), "n_edges": float(n_edges)}
        if self.schedule != "linesearch":
            lr_t = self._lr(t)
            new["x"] = x - lr_t * g
            return new, StepInfo(value=None, x=x, extra={**extra, "lr": lr_t})
        if self.protocol == "two-round":
            # Official code: average the estimates collected since the last accepted move.
            n = int(state["n_avg"])
            new["direction"] = (_tensor(state, "direction") * n + g) / (n + 1)
            new["n_avg"] = n + 1
            new["best_perturbed"] = x + self._mu(state) * xi[answer.ranking[0]] if answer.ranking else x.clone()
        else:
            new["direction"] = g
        new["phase"] = "linesearch"
        return new, StepInfo(value=None, x=x, extra=extra)

    def _tell_linesearch(
        self, state: State, new: dict[str, StateValue], query: Query, answer: Answer
    ) -> tuple[State, StepInfo]:
        x = _tensor(state, "x")
        points = self._linesearch_points(state)  # recomputed from the state, not trusted from the query
        n = points.shape[0]
        pick = answer.ranking[0] if answer.ranking else n - 1  # no answer: keep x (last row)
        if not 0 <= pick < n:
            raise ValueError(f"line-search pick {pick} is not in [0, {n})")
        new["phase"] = "estimate"
        moved = pick != n - 1
        if moved:
            new["x"] = points[pick].clone()
            if self.protocol == "two-round":
                new["direction"] = torch.zeros_like(x)
                new["n_avg"] = 0
        extra = {"ls_pick": float(pick), "moved": float(moved)}
        if self.adaptive:
            new["lr_t"], new["mu_t"] = self._adapt(float(state["lr_t"]), pick)
            extra |= {"lr": float(new["lr_t"]), "mu": float(new["mu_t"])}
        return new, StepInfo(value=None, x=x, extra=extra)

    def _adapt(self, lr_t: float, pick: int) -> tuple[float, float]:
        """``step_adaptation="adaptive"``: the next (η_t, μ_t) from the line-search pick alone.

        Deviation from the paper: Algorithm 2 keeps η and μ fixed, so the smallest trial step
        η γ^(L−1) and the fixed μ put a floor under f (sphere d = 100: f ≈ 7e-4). Here the
        oracle's pick i re-centres the trial grid on the chosen step, η ← η γ^(i − c): the
        largest step (i = 0) grows η by γ^−c, a small one shrinks it. Keeping x (and, for
        "two-round", the best perturbed point) counts as i = L, one step below the smallest.
        The default c = (L + 1)/2 makes uniformly random picks (an oracle that cannot tell the
        candidates apart, e.g. value noise) grow η slowly, by γ^−½ per step on average, instead
        of collapsing it, until the large steps are visibly worse again. μ_t = μ · η_t / η keeps the
        perturbations a fixed fraction of the step scale, so the estimate stays informative as
        x converges. Only picks drive it, so iterates stay invariant to increasing transforms.
        """
        exponent = min(pick, self.ls_candidates) - self.adapt_center
        new_lr = min(max(lr_t * self.gamma**exponent, _LR_MIN), _LR_MAX)
        return new_lr, self.mu * new_lr / self.lr

    def _base_lr(self, state: State) -> float:
        return float(state["lr_t"]) if self.adaptive else self.lr

    def _mu(self, state: State) -> float:
        return float(state["mu_t"]) if self.adaptive else self.mu

    def _lr(self, t: int) -> float:
        if self.schedule == "decay":
            return self.lr / float((1.0 + t / self.decay_steps) ** self.decay_power)
        return self.lr


def _tensor(state: State, key: str) -> Tensor:
    value = state[key]
    if not isinstance(value, Tensor):
        raise TypeError(f"state[{key!r}] must be a tensor")
    return value
