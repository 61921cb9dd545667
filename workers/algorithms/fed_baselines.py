"""The ZO federated baselines of FZooS: FedZO, FedProx, SCAFFOLD type I and II (brief fzoos.md §4.1).

All share the official code's local solver: T Adam steps (lr 0.01, state reset each round) on the
RGF estimate with q orthonormal Gaussian directions and forward differences,

    g = (1/q) Σ_k [f_i(x + μu_k) − f_i(x)] / μ · u_k        (q + 1 queries, ONE batch per step)

and differ only in the correction added to g:

* ``none``  — FedZO (Fang et al. 2022): no correction; the server averages x (FedAvg).
* ``prox``  — FedProx: + μ_prox (x − x_{r-1}) from round 2 on (code).
* ``scaffold1`` — SCAFFOLD type I: + (c − c_i) with c_i = client i's RGF estimate at x_{r-1},
  c = Σ p_i c_i, computed after each aggregation (q + 1 queries, counted here; the code does not).
* ``scaffold2`` — SCAFFOLD type II: c_i = mean of client i's own estimates in the previous round.

Query accounting (brief pitfall 11): every evaluation counts, the base point f_i(x) included.
Deviation: a client remembers its last (x, f_i(x)) so the step-0 base point is not re-queried
when the server's acceptance test already asked for it (the test's query is counted instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workers.algorithms import transforms as tf
from workers.algorithms.base import StateValue, step_generator
from workers.algorithms.fzoos import FBatch

__all__ = ["FedZOParams", "CORRECTIONS", "zo_client_init", "zo_local_round", "zo_check", "zo_control"]

CORRECTIONS: tuple[str, ...] = ("none", "prox", "scaffold1", "scaffold2")
ZOState = dict[str, StateValue]
_F64 = torch.float64
_ADAM = tf.adam()
_STREAM_STEP, _STREAM_CONTROL = 4, 5


@dataclass(frozen=True)
class FedZOParams:
    """Local ZO-SGD hyperparameters (official code defaults: lr 0.01, q 20, μ 0.01, T 10)."""

    local_iters: int = 10
    lr: float = 0.01
    q: int = 20
    mu: float = 0.01
    orthogonal: bool = True
    correction: str = "none"
    prox_mu: float = 1.0
    accept_test: bool = False
    max_failed_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.local_iters < 1 or self.q < 1 or self.mu <= 0 or self.lr <= 0:
            raise ValueError("local_iters and q must be >= 1, mu and lr > 0")


def zo_client_init(d: int, client: int, seed: int) -> ZOState:
    """A baseline client: its last known value and its SCAFFOLD control variate (empty at first)."""
    empty = torch.zeros(0, dtype=_F64)
    return {"client": int(client), "seed": int(seed), "x_known": empty, "f_known": float("nan"), "c_own": empty}


def zo_local_round(
    state: ZOState, x_global: Tensor, round_: int, params: FedZOParams, f_batch: FBatch,
    c_global: Tensor | None = None,
) -> tuple[Tensor, ZOState, dict[str, float]]:  # fmt: skip
    """T local steps from ``x_global`` in round ``round_`` (1-based).

    Returns (x_{r,T}^{(i)}, new state, stats with ``queries``); for ``scaffold2`` the new state's
    ``c_own`` is this round's mean estimate.
    """
    x0 = x_global.detach().reshape(-1).to(_F64, copy=True)
    x, opt, queries = x0, _ADAM.init(x0), 0
    known = _known(state, x0)
    g_sum = torch.zeros_like(x0)
    corr = _correction(state, params, c_global)
    for t in range(params.local_iters):
        gen = step_generator(_int(state, "seed"), round_ * 1024 + t, _int(state, "client") * 8 + _STREAM_STEP)
        g, fx, n = _rgf(x, params, f_batch, gen, known if t == 0 else None)
        queries += n
        g_sum += g
        if params.correction == "prox" and round_ > 1:
            g = g + params.prox_mu * (x - x0)
        elif corr is not None:
            g = g + corr
        u, opt = _ADAM.update(g, opt, t)
        x = x - params.lr * u
    new = {**state, "x_known": torch.zeros(0, dtype=_F64), "f_known": float("nan")}
    if params.correction == "scaffold2":
        new["c_own"] = g_sum / params.local_iters
    return x, new, {"queries": float(queries)}


def zo_check(state: ZOState, x: Tensor, f_batch: FBatch) -> tuple[float, ZOState, int]:
    """f_i(x) for the server's acceptance test: (value, new state, queries spent: 0 or 1)."""
    x = x.detach().reshape(-1).to(_F64)
    known = _known(state, x)
    if known is not None:
        return known, dict(state), 0
    f = float(torch.as_tensor(f_batch(x[None])).reshape(-1)[0])
    return f, {**state, "x_known": x.clone(), "f_known": f}, 1


def zo_control(state: ZOState, x: Tensor, round_: int, params: FedZOParams, f_batch: FBatch) -> tuple[Tensor, ZOState, int]:
    """SCAFFOLD type I control variate c_i = RGF estimate of ∇f_i at the new global ``x``."""
    x = x.detach().reshape(-1).to(_F64)
    gen = step_generator(_int(state, "seed"), round_ * 1024, _int(state, "client") * 8 + _STREAM_CONTROL)
    g, fx, n = _rgf(x, params, f_batch, gen, _known(state, x))
    return g, {**state, "c_own": g, "x_known": x.clone(), "f_known": fx}, n


def _rgf(
    x: Tensor, params: FedZOParams, f_batch: FBatch, gen: torch.Generator, f_x: float | None
) -> tuple[Tensor, float, int]:
    """RGF estimate at x in ONE f_batch call: (g, f(x), queries)."""
    d = x.numel()
    u = torch.randn(d, params.q, generator=gen, dtype=_F64)
    if params.orthogonal and params.q <= d:
        u = torch.linalg.qr(u).Q  # Gram-Schmidt (code); q > d falls back to unit Gaussian rows
    else:
        u = u / torch.linalg.vector_norm(u, dim=0, keepdim=True)
    pts = x[None] + params.mu * u.T
    if f_x is None:
        pts = torch.cat((x[None], pts))
    vals = torch.as_tensor(f_batch(pts)).reshape(-1).to(_F64)
    if f_x is None:
        f_x, vals = float(vals[0]), vals[1:]
    g = u @ ((vals - f_x) / params.mu) / params.q
    return g, f_x, pts.shape[0]


def _correction(state: ZOState, params: FedZOParams, c_global: Tensor | None) -> Tensor | None:
    c_own = state["c_own"]
    if params.correction not in ("scaffold1", "scaffold2") or c_global is None:
        return None
    if not isinstance(c_own, Tensor) or c_own.numel() == 0:
        return None
    return c_global.to(_F64) - c_own


def _known(state: ZOState, x: Tensor) -> float | None:
    xk = state["x_known"]
    if isinstance(xk, Tensor) and xk.numel() == x.numel() and bool(torch.equal(xk, x)):
        return float(state["f_known"])
    return None


def _int(state: ZOState, key: str) -> int:
    v = state[key]
    if not isinstance(v, int):
        raise TypeError(f"state[{key!r}] must be an int")
    return v
