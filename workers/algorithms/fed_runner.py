"""In-process federated driver for FZooS and its baselines (tests and benchmarks).

``run_federated`` plays the server and every client in one process, in the order a Celery
orchestration would (FZooS: local chord → aggregate x → refit chord → aggregate w; baselines:
local chord → aggregate x [→ acceptance test] [→ SCAFFOLD-I controls]). Clients run one after
another; their randomness depends only on (seed, client, round, step), never on the order.

Accounting: ``queries`` counts every evaluation of every f_i, the initial batch, the server-side
acceptance checks and SCAFFOLD-I's control estimates included; ``bytes`` counts float64 vectors
and scalars crossing the network both ways. ``monitor(x)`` (e.g. the exact gap F(x) − F*) is the
harness's measurement of the global iterate, not a protocol query, and is never counted.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from workers.algorithms import fed_baselines as fb
from workers.algorithms import fzoos as fz

__all__ = ["METHODS", "run_federated"]

METHODS: tuple[str, ...] = ("fzoos", "fedzo", "fedprox", "scaffold1", "scaffold2")
_CORRECTION = {"fedzo": "none", "fedprox": "prox", "scaffold1": "scaffold1", "scaffold2": "scaffold2"}
_B = 8  # bytes per float64


def run_federated(
    method: str,
    clients: Sequence[fz.FBatch],
    x0: Tensor,
    rounds: int,
    cfg: fz.FZooSParams | fb.FedZOParams | Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    weights: Sequence[float] | None = None,
    monitor: Callable[[Tensor], float] | None = None,
) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds; returns one JSON-able record per round (round 0 = after init).

    Each record: ``round``, ``queries`` (cumulative), ``round_queries``, ``bytes`` (cumulative),
    ``value`` (the server's Σ p_i f_i(x) when known, else None), ``gap`` (``monitor(x_r)`` or None),
    ``accepted``, ``seconds`` (wall time of the round), ``x_sha`` (hash of x_r's bytes).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    p = list(weights) if weights is not None else [1.0 / len(clients)] * len(clients)
    if method == "fzoos":
        params = cfg if isinstance(cfg, fz.FZooSParams) else fz.FZooSParams(**dict(cfg or {}))
        return _run_fzoos(params, clients, x0, rounds, seed, p, monitor)
    kw = dict(cfg or {}) if not isinstance(cfg, fb.FedZOParams) else None
    zp = cfg if kw is None else fb.FedZOParams(**{**kw, "correction": _CORRECTION[method]})
    return _run_zo(zp, clients, x0, rounds, seed, p, monitor)  # type: ignore[arg-type]


def _run_fzoos(
    params: fz.FZooSParams, clients: Sequence[fz.FBatch], x0: Tensor, rounds: int, seed: int,
    p: list[float], monitor: Callable[[Tensor], float] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    t0 = time.perf_counter()
    x = x0.detach().reshape(-1).to(torch.float64)
    d, M = x.numel(), params.n_features if params.corrected else 0
    states = [fz.client_run(fz.client_init(x, i, seed, params), params, f) for i, f in enumerate(clients)]
    queries = sum(int(s["queries"]) for s in states)
    f_prev = fz.server_accept([fz.client_value_at(s, x) for s in states], p, None)[1]  # x0 is in the init batch
    log = [_record(0, queries, queries, 0, f_prev, monitor, x, True, t0)]
    w_glob: Tensor | None = None
    nbytes = 0
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        xs = []
        for i, f in enumerate(clients):
            xi, states[i], _ = fz.client_local_round(states[i], x, w_glob, params, f)
            xs.append(xi)
        x_cand, _ = fz.server_aggregate(xs, None, p)
        rho = fz.server_radii(x_cand, xs, params.min_radius)
        ws, fs = [], []
        for i, f in enumerate(clients):
            wi, fi, states[i] = fz.client_refit_round(states[i], x_cand, rho[i], params, f)
            ws.append(wi)
            fs.append(fi)
        _, w_glob = fz.server_aggregate(xs, ws if params.corrected else None, p)
        accepted, f_cand = fz.server_accept(fs, p, f_prev if params.accept_test else None)
        if accepted:
            x, f_prev = x_cand, f_cand
        rq = sum(int(s["round_queries"]) for s in states)
        queries += rq
        # down: x_{r-1}, w̄_{r-1}, then x_cand and ρ_i; up: x_i, then w_i and f_i(x_cand)
        nbytes += len(clients) * _B * ((d + (M if r > 1 else 0)) + d + (d + 1) + (M + 1))
        log.append(_record(r, queries, rq, nbytes, f_prev, monitor, x, accepted, t0))
    return log


def _run_zo(
    params: fb.FedZOParams, clients: Sequence[fz.FBatch], x0: Tensor, rounds: int, seed: int,
    p: list[float], monitor: Callable[[Tensor], float] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    t0 = time.perf_counter()
    x = x0.detach().reshape(-1).to(torch.float64)
    d, n = x.numel(), len(clients)
    states = [fb.zo_client_init(d, i, seed) for i in range(n)]
    queries, nbytes, f_prev = 0, 0, None
    if params.accept_test:  # the test needs F(x_0): N counted queries
        checks = [fb.zo_check(s, x, f) for s, f in zip(states, clients)]
        states = [c[1] for c in checks]
        queries += sum(c[2] for c in checks)
        f_prev = fz.server_accept([c[0] for c in checks], p, None)[1]
    log = [_record(0, queries, queries, 0, f_prev, monitor, x, True, t0)]
    c_glob: Tensor | None = None
    scaffold = params.correction in ("scaffold1", "scaffold2")
    for r in range(1, rounds + 1):
        t0, rq = time.perf_counter(), 0
        xs = []
        for i, f in enumerate(clients):
            xi, states[i], st = fb.zo_local_round(states[i], x, r, params, f, c_glob)
            xs.append(xi)
            rq += int(st["queries"])
        x_cand, _ = fz.server_aggregate(xs, None, p)
        accepted = True
        if params.accept_test:
            checks = [fb.zo_check(s, x_cand, f) for s, f in zip(states, clients)]
            states = [c[1] for c in checks]
            rq += sum(c[2] for c in checks)
            accepted, f_cand = fz.server_accept([c[0] for c in checks], p, f_prev)
            nbytes += n * _B * (d + 1)
        if accepted:
            x = x_cand
            f_prev = f_cand if params.accept_test else None
        if params.correction == "scaffold1":  # control variates at the new global point
            for i, f in enumerate(clients):
                _, states[i], nq = fb.zo_control(states[i], x, r, params, f)
                rq += nq
        if scaffold:
            c_glob = fz.server_aggregate([s["c_own"] for s in states], None, p)[0]  # type: ignore[misc]
        queries += rq
        nbytes += n * _B * (2 * d + (2 * d if scaffold else 0))
        log.append(_record(r, queries, rq, nbytes, f_prev, monitor, x, accepted, t0))
    return log


def _record(
    r: int, queries: int, rq: int, nbytes: int, value: float | None,
    monitor: Callable[[Tensor], float] | None, x: Tensor, accepted: bool, t0: float,
) -> dict[str, Any]:  # fmt: skip
    seconds = time.perf_counter() - t0  # the monitor's evaluation is not part of the round
    return {
        "round": r, "queries": queries, "round_queries": rq, "bytes": nbytes, "value": value,
        "gap": None if monitor is None else float(monitor(x)), "accepted": accepted,
        "seconds": seconds, "x_sha": hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16],
    }  # fmt: skip
