"""FZooS: federated ZO optimisation with trajectory-informed surrogate gradients (client + server).

Shu, Lin, Dai & Low, arXiv 2308.04077; the per-round algorithm of the official code
(github.com/shuyao95/FZooS), brief fzoos.md §3.2. One round r, client i (p_i = weights):

A. local phase, x = x_{r-1}, Adam reset (lr 0.01): for t = 0..T-1
   g = ∇μ_i(x) + γ_t·[∇φ(x)ᵀw̄_{r-1} − ∇φ(x)ᵀw_{r-1}^{(i)}]      (§3.1; no correction in round 1)
   x ← Adam(x, g); ask f_i at [x, 5 exploration points of largest tr dΣ in x ± 0.01]  (ONE batch;
   no exploration after the last step)
B. server: x_cand = Σ p_i x_{r,T}^{(i)}, ρ_i = mean_j|x_cand − x^{(i)}|_j / 2.
C. refit phase: ask f_i at [x_cand, 50 of 200 candidates in x_cand ± ρ_i of largest tr dΣ]; fit
   w_r^{(i)} on the 500 nearest queries; upload w^{(i)} (raw units) and f_i(x_cand).
D. server: w̄_r = Σ p_i w^{(i)}; optional acceptance test keeps x_{r-1} when Σ p_i f_i(x_cand)
   ≥ F(x_{r-1}) (the code's test, here served by C's query: no extra, uncounted 2N queries).

Deviations (each also marked where it happens): the init batch contains x_0 itself and x_cand
is queried in C, so the code's per-round f_i(x_{r-1}) query (an exact duplicate) is skipped
(6T + 46 queries per client-round instead of 6T + 47); with γ ≡ 0 phase C only queries x_cand
(the brief's ablation, "no RFF phase"); the γ schedule "adaptive" is ours (see :func:`gamma_at`).

A client is a flat state dict (tensors and scalars; round-trips through ``checkpoint.py``)
driven by ``client_ask(state) -> points`` / ``client_tell(state, values, params) -> state``;
every batch is prepared by the previous ``tell`` (or ``client_begin_*``), so ``ask`` is a read
and a Celery task can checkpoint between any two batches. Randomness comes from
``step_generator(seed, round·1024 + t, stream)``, so a resumed client replays bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from workers.algorithms import fzoos_surrogate as sg
from workers.algorithms import transforms as tf
from workers.algorithms.base import StateValue, step_generator
from workers.algorithms.fzoos_surrogate import rff_basis

__all__ = [
    "FZooSParams", "ClientState", "FBatch", "rff_basis", "client_init", "client_ask", "client_tell",
    "client_begin_round", "client_begin_refit", "client_run", "client_local_round", "client_refit",
    "client_refit_round", "client_value_at", "gamma_at", "server_aggregate", "server_radii",
    "server_accept", "survivors_ok",
]  # fmt: skip

ClientState = dict[str, StateValue]
FBatch = Callable[[Tensor], Tensor]
_F64 = torch.float64
_ADAM = tf.adam()
_STREAM_INIT, _STREAM_LOCAL, _STREAM_REFIT = 1, 2, 3


@dataclass(frozen=True)
class FZooSParams:
    """FZooS hyperparameters; defaults are the official code's (brief §7 table) unless noted.

    ``n_features`` (code 10 000) and the lengthscale grid follow the brief's faithful CPU
    reproduction (§6.1); ``gamma`` is ``"adaptive"`` (ours), ``"decay"`` (the code's 1/(t+1))
    or a fixed float (1 = the paper's plain correction, 0 = the no-correction ablation).
    """

    local_iters: int = 10
    lr: float = 0.01
    n_features: int = 1000
    rff_lengthscale: float = 1.0
    rff_ridge: float = 1e-6
    gamma: str | float = "adaptive"
    n_init: int = 10
    init_radius: float = 0.01
    explore_points: int = 5
    explore_candidates: int = 100
    explore_radius: float = 0.01
    refit_points: int = 50
    refit_candidates: int = 200
    gp_neighbors: int = 150
    rff_neighbors: int = 500
    gp_noise: float = 1e-6
    kernel: str = "matern52"
    lengthscale_grid: tuple[float, float, int] = (1e-2, 1e2, 13)
    max_history: int = 5000
    min_radius: float = 1e-3
    accept_test: bool = False
    max_failed_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.gamma, (int, float)) and self.gamma >= 0) and self.gamma not in ("adaptive", "decay"):
            raise ValueError(f"gamma must be 'adaptive', 'decay' or a float >= 0, got {self.gamma!r}")
        if self.local_iters < 1 or self.n_init < 1 or self.n_features < 1 or self.lr <= 0:
            raise ValueError("local_iters, n_init, n_features must be >= 1 and lr > 0")
        if self.kernel not in ("matern52", "se"):
            raise ValueError(f"kernel must be 'matern52' or 'se', got {self.kernel!r}")

    @property
    def corrected(self) -> bool:
        """Whether the RFF phase and the correction run at all (γ ≢ 0)."""
        return not (isinstance(self.gamma, (int, float)) and self.gamma == 0)

    def grid(self) -> Tensor:
        lo, hi, n = self.lengthscale_grid
        return torch.logspace(math.log10(lo), math.log10(hi), int(n), dtype=_F64)


# --------------------------------------------------------------------------- client state


def client_init(x0: Tensor, client: int, seed: int, params: FZooSParams) -> ClientState:
    """A fresh client whose pending batch is the ``n_init`` initial queries around ``x0``.

    Deviation: the code draws all 10 uniformly in x_0 ± 0.01; x_0 itself is the first here.
    """
    x = x0.detach().reshape(-1).to(_F64, copy=True)
    d = x.numel()
    gen = step_generator(seed, 0, _stream(client, _STREAM_INIT))
    box = (torch.rand(params.n_init - 1, d, generator=gen, dtype=_F64) * 2 - 1) * params.init_radius
    empty = torch.zeros(0, dtype=_F64)
    return {
        "X": torch.zeros(0, d, dtype=_F64), "y": empty, "x": x, "pending": torch.cat((x[None], x + box)),
        "w_own": empty, "w_glob": empty, "x_cand": x.clone(), "round": 0, "t": 0, "phase": "init",
        "client": int(client), "seed": int(seed), "queries": 0, "round_queries": 0,
        "gamma_sum": 0.0, "lengthscale": 0.0, **_ADAM.init(x),
    }  # fmt: skip


def client_ask(state: ClientState) -> Tensor:
    """The pending ``(k, d)`` batch (``k`` may be 0 when nothing needs asking)."""
    return _t(state, "pending")


def client_tell(state: ClientState, values: Tensor, params: FZooSParams) -> ClientState:
    """Record the values of the pending batch and prepare the next one (or finish the phase)."""
    pts = _t(state, "pending")
    vals = torch.as_tensor(values).reshape(-1).to(_F64)
    if vals.numel() != pts.shape[0]:
        raise ValueError(f"expected {pts.shape[0]} values, got {vals.numel()}")
    new = _append(dict(state), pts, vals, params.max_history)
    new["pending"] = pts[:0]
    phase = new["phase"]
    if phase == "init":
        new["phase"] = "ready"
    elif phase == "local":
        new["x"], new["t"] = pts[0].clone(), _i(new, "t") + 1
        if _i(new, "t") < params.local_iters:
            new = _prepare_local(new, params)
        else:
            new["phase"] = "local_done"
    elif phase == "refit":
        if params.corrected:
            new["w_own"] = client_refit(_t(new, "x_cand"), new, params)
        new["phase"] = "ready"
    else:
        raise ValueError(f"nothing is pending in phase {phase!r}")
    return new


def client_begin_round(
    state: ClientState, x_global: Tensor, w_global: Tensor | None, params: FZooSParams
) -> ClientState:
    """Start the local phase (A) of the next round from the broadcast (x_{r-1}, w̄_{r-1})."""
    if state["phase"] != "ready":
        raise ValueError(f"cannot begin a round in phase {state['phase']!r}")
    x = x_global.detach().reshape(-1).to(_F64, copy=True)
    w = torch.zeros(0, dtype=_F64) if w_global is None else w_global.detach().reshape(-1).to(_F64, copy=True)
    new = {**state, "x": x, "w_glob": w, "round": _i(state, "round") + 1, "t": 0, "phase": "local"}
    new.update(round_queries=0, gamma_sum=0.0, **_ADAM.init(x))  # Adam re-initialised every round (code)
    return _prepare_local(new, params)


def client_begin_refit(state: ClientState, x_cand: Tensor, rho: float, params: FZooSParams) -> ClientState:
    """Start the refit phase (C) around the server's candidate ``x_cand`` with radius ``rho``."""
    if state["phase"] != "local_done":
        raise ValueError(f"cannot begin a refit in phase {state['phase']!r}")
    xc = x_cand.detach().reshape(-1).to(_F64, copy=True)
    new = {**state, "x_cand": xc, "phase": "refit"}
    pts = xc[:0].reshape(0, -1) if _row_index(_t(state, "X"), xc) >= 0 else xc[None]
    if params.corrected and params.refit_points > 0:
        gen = step_generator(_i(state, "seed"), _i(state, "round") * 1024, _stream(_i(state, "client"), _STREAM_REFIT))
        pts = torch.cat((pts, _explore(new, xc, rho, params.refit_candidates, params.refit_points, gen, params)))
    new["pending"] = pts
    return new


def client_refit(x_global: Tensor, state: Mapping[str, StateValue], params: FZooSParams) -> Tensor:
    """RFF weights w^{(i)} ``(M,)`` (raw units) on the ``rff_neighbors`` queries nearest ``x_global``."""
    X, y = _t(state, "X"), _t(state, "y")
    idx = _nearest(X, x_global, params.rff_neighbors)
    omega, b = rff_basis(_rff_seed(state), X.shape[1], params.n_features, params.rff_lengthscale, _F64)
    return sg.rff_fit(X[idx], y[idx], omega, b, params.rff_ridge)


def client_value_at(state: Mapping[str, StateValue], x: Tensor) -> float:
    """The recorded f_i(x) for a queried point ``x`` (NaN when it was never queried)."""
    k = _row_index(_t(state, "X"), x.reshape(-1).to(_F64))
    return float(_t(state, "y")[k]) if k >= 0 else math.nan


# --------------------------------------------------------------------------- callable forms


def client_run(state: ClientState, params: FZooSParams, f_batch: FBatch) -> ClientState:
    """Answer pending batches with ``f_batch`` (one call per batch) until the phase is done."""
    while state["phase"] in ("init", "local", "refit"):
        pts = client_ask(state)
        vals = f_batch(pts) if pts.shape[0] else torch.zeros(0, dtype=_F64)
        state = client_tell(state, vals, params)
    return state


def client_local_round(
    state: ClientState, x_global: Tensor, w_global: Tensor | None, params: FZooSParams, f_batch: FBatch
) -> tuple[Tensor, ClientState, dict[str, float]]:
    """Phase A in one call: returns (x_{r,T}^{(i)}, new state, stats)."""
    state = client_run(client_begin_round(state, x_global, w_global, params), params, f_batch)
    stats = {"queries": float(state["round_queries"]), "gamma_mean": float(state["gamma_sum"]) / params.local_iters}
    return _t(state, "x").clone(), state, stats


def client_refit_round(
    state: ClientState, x_cand: Tensor, rho: float, params: FZooSParams, f_batch: FBatch
) -> tuple[Tensor | None, float, ClientState]:
    """Phase C in one call: returns (w^{(i)} or None when γ ≡ 0, f_i(x_cand), new state)."""
    state = client_run(client_begin_refit(state, x_cand, rho, params), params, f_batch)
    w = _t(state, "w_own") if params.corrected else None
    return w, client_value_at(state, x_cand), state


# --------------------------------------------------------------------------- server


def server_aggregate(
    xs: Sequence[Tensor], ws: Sequence[Tensor] | None, weights: Sequence[float]
) -> tuple[Tensor, Tensor | None]:
    """(x̄, w̄) = Σ p_i (x_i, w_i) with p normalised over the reporting clients (§3.2 B, D)."""
    p = torch.as_tensor(list(weights), dtype=_F64)
    p = p / p.sum()
    x_bar = (p[:, None] * torch.stack([x.to(_F64) for x in xs])).sum(0)
    w_bar = None if ws is None else (p[:, None] * torch.stack([w.to(_F64) for w in ws])).sum(0)
    return x_bar, w_bar


def server_radii(x_bar: Tensor, xs: Sequence[Tensor], min_radius: float = 1e-3) -> list[float]:
    """ρ_i = mean_j |x̄ − x_i|_j / 2 (code); deviation: floored at ``min_radius`` (ρ = 0 is degenerate)."""
    return [max(float((x_bar - x).abs().mean()) / 2.0, min_radius) for x in xs]


def server_accept(values: Sequence[float], weights: Sequence[float], f_prev: float | None) -> tuple[bool, float]:
    """The code's acceptance test: accept x_cand iff Σ p_i f_i(x_cand) < F(x_{r-1})."""
    p = torch.as_tensor(list(weights), dtype=_F64)
    f_cand = float((p / p.sum() * torch.as_tensor(list(values), dtype=_F64)).sum())
    return (f_prev is None or not math.isfinite(f_prev) or f_cand < f_prev), f_cand


def survivors_ok(n_ok: int, n_total: int, max_failed_fraction: float) -> bool:
    """Whether a round may aggregate with ``n_ok`` of ``n_total`` clients reporting."""
    return n_ok >= 1 and (n_total - n_ok) <= math.floor(max_failed_fraction * n_total + 1e-9)


# --------------------------------------------------------------------------- internals


def gamma_at(params: FZooSParams, t: int, corr: Tensor, own_err: Tensor) -> float:
    """γ_{r,t} for the correction ``corr`` = ∇φᵀ(w̄ − w_i) at local step t.

    * ``"decay"``: 1/(t+1), the official code.
    * ``"adaptive"`` (ours; our reading of Corollary 1 as a shrinkage G²/(G² + E²)):
      G² = ‖corr‖² (the heterogeneity the snapshot sees at x) and E² = 2‖own_err‖², where
      own_err = ∇φᵀw_i − ∇μ_i is how far the snapshot's own surrogate has drifted from the fresh
      trajectory surrogate at x (the global term is assumed equally wrong, hence the 2).
    * a float: fixed.
    """
    if params.gamma == "decay":
        return 1.0 / (t + 1.0)
    if params.gamma == "adaptive":
        g2, e2 = float(corr.square().sum()), 2.0 * float(own_err.square().sum())
        return g2 / (g2 + e2) if g2 + e2 > 0 else 0.0
    return float(params.gamma)


def _prepare_local(state: ClientState, params: FZooSParams) -> ClientState:
    """Compute local step t (surrogate, correction, Adam) and its query batch."""
    x, t, X, y = _t(state, "x"), _i(state, "t"), _t(state, "X"), _t(state, "y")
    idx = _nearest(X, x, params.gp_neighbors)
    fit = sg.fit_gp(X[idx], y[idx], params.grid(), params.gp_noise, params.kernel)  # type: ignore[arg-type]
    g = sg.gp_grad_mean(fit, x)
    w_glob, w_own = _t(state, "w_glob"), _t(state, "w_own")
    gamma = 0.0
    if params.corrected and w_glob.numel() and w_own.numel():  # no correction in round 1 (code)
        omega, b = rff_basis(_rff_seed(state), x.numel(), params.n_features, params.rff_lengthscale, _F64)
        corr = sg.rff_grad(x, w_glob - w_own, omega, b)  # linearity in w: one mat-vec
        own_err = sg.rff_grad(x, w_own, omega, b) - g if params.gamma == "adaptive" else corr[:0]
        gamma = gamma_at(params, t, corr, own_err)
        g = g + gamma * corr
    u, opt = _ADAM.update(g, {k: _t(state, k) for k in ("adam_m", "adam_v")}, t)
    x_new = x - params.lr * u
    pts = x_new[None]
    if t < params.local_iters - 1 and params.explore_points > 0:
        gen = step_generator(_i(state, "seed"), _i(state, "round") * 1024 + t, _stream(_i(state, "client"), _STREAM_LOCAL))
        cand = _explore(state, x_new, params.explore_radius, params.explore_candidates, params.explore_points, gen, params, fit.lengthscale)
        pts = torch.cat((pts, cand))
    new = {**state, **opt, "pending": pts, "gamma_sum": float(state["gamma_sum"]) + gamma}
    new["lengthscale"] = fit.lengthscale
    return new


def _explore(
    state: Mapping[str, StateValue], x: Tensor, radius: float, n_cand: int, k: int,
    gen: torch.Generator, params: FZooSParams, ls: float | None = None,
) -> Tensor:  # fmt: skip
    """The ``k`` of ``n_cand`` uniform candidates in x ± radius with the largest tr dΣ, measured
    against the ``gp_neighbors`` queries nearest x plus x itself (brief pitfall 3: appended)."""
    X, y = _t(state, "X"), _t(state, "y")
    cand = x + (torch.rand(n_cand, x.numel(), generator=gen, dtype=_F64) * 2 - 1) * radius
    idx = _nearest(X, x, params.gp_neighbors)
    if ls is None:  # refit phase: lengthscale from a fresh fit around x_cand
        ls = sg.fit_gp(X[idx], y[idx], params.grid(), params.gp_noise, params.kernel).lengthscale  # type: ignore[arg-type]
    base = torch.cat((X[idx], x[None]))
    var = sg.grad_var_trace(base, cand, ls, params.gp_noise, params.kernel)  # type: ignore[arg-type]
    return cand[torch.topk(var, min(k, n_cand)).indices]


def _append(state: ClientState, pts: Tensor, vals: Tensor, max_history: int) -> ClientState:
    ok = torch.isfinite(vals)  # failed evaluations are counted but never enter the surrogate
    X, y = torch.cat((_t(state, "X"), pts[ok])), torch.cat((_t(state, "y"), vals[ok]))
    state["X"], state["y"] = X[-max_history:], y[-max_history:]  # deviation: bounded history
    state["queries"] = _i(state, "queries") + pts.shape[0]
    state["round_queries"] = _i(state, "round_queries") + pts.shape[0]
    return state


def _nearest(X: Tensor, x: Tensor, k: int) -> Tensor:
    if X.shape[0] <= k:
        return torch.arange(X.shape[0])
    dist = (X - x.reshape(1, -1)).square().sum(-1)
    return torch.topk(dist, k, largest=False).indices


def _row_index(X: Tensor, x: Tensor) -> int:
    hit = torch.nonzero((X == x.reshape(1, -1)).all(-1)).reshape(-1)
    return int(hit[-1]) if hit.numel() else -1


def _rff_seed(state: Mapping[str, StateValue]) -> int:
    return _i(state, "seed") * 7_919 + 17  # shared by every party of the run, never sent


def _stream(client: int, phase: int) -> int:
    return client * 8 + phase


def _t(state: Mapping[str, StateValue], key: str) -> Tensor:
    v = state[key]
    if not isinstance(v, Tensor):
        raise TypeError(f"state[{key!r}] must be a tensor")
    return v


def _i(state: Mapping[str, StateValue], key: str) -> int:
    v = state[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"state[{key!r}] must be an int")
    return v
