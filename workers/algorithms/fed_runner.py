"""In-process federated driver for FZooS and its baselines (tests and benchmarks).

``run_federated`` plays the server and every client in one process, in the order a Celery
orchestration would (FZooS: local chord → aggregate x → refit chord → aggregate w and test;
baselines: local chord → aggregate x [→ acceptance test] [→ SCAFFOLD-I controls]). Clients run
one after another; their randomness depends only on (seed, client, round, step), not the order.

Accounting: ``queries`` counts every point passed to any f_i (a counting wrapper around each
callable, so nothing escapes): the initial batch, server-side acceptance checks and SCAFFOLD-I's
control estimates included. ``bytes`` counts float64 vectors and scalars crossing the network
both ways. ``monitor(x)`` (e.g. the exact gap F(x) − F*) is the harness's measurement of the
global iterate, not a protocol query, and is never counted.

Failures: a client whose f_i raises is dropped for the round (state rolled back to the round
start; FZooS also forgets its own weights, so its next correction is skipped rather than mixing
snapshots) and the server aggregates the survivors with renormalised weights. More than
``max_failed_fraction`` of the clients failing raises :class:`RoundFailed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from workers.algorithms import fed_baselines as fb
from workers.algorithms import fzoos as fz

__all__ = ["METHODS", "RoundFailed", "run_federated"]

METHODS: tuple[str, ...] = ("fzoos", "fedzo", "fedprox", "scaffold1", "scaffold2")
_CORRECTION = {"fedzo": "none", "fedprox": "prox", "scaffold1": "scaffold1", "scaffold2": "scaffold2"}
_B = 8  # bytes per float64
Monitor = Callable[[Tensor], float] | None


class RoundFailed(RuntimeError):
    """Too many clients failed in one round."""


class _Counted:
    """Wraps an f_batch and counts the points it is asked for (failed calls included)."""

    def __init__(self, f: fz.FBatch) -> None:
        self.f, self.n = f, 0

    def __call__(self, X: Tensor) -> Tensor:
        self.n += X.shape[0]
        return self.f(X)


def run_federated(
    method: str,
    clients: Sequence[fz.FBatch],
    x0: Tensor,
    rounds: int,
    cfg: fz.FZooSParams | fb.FedZOParams | Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    weights: Sequence[float] | None = None,
    monitor: Monitor = None,
) -> list[dict[str, Any]]:
    """Run ``rounds`` rounds of ``method``; one JSON-able record per round (round 0 = after init).

    Each record: ``round``, ``queries`` (cumulative), ``round_queries``, ``bytes`` (cumulative),
    ``value`` (the server's Σ p_i f_i(x_r) when the protocol knows it, else None), ``gap``
    (``monitor(x_r)`` or None), ``accepted``, ``failed`` (clients dropped), ``seconds`` (wall
    time of the round, monitor excluded) and ``x_sha`` (hash of x_r's bytes, for replay checks).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    p = list(weights) if weights is not None else [1.0 / len(clients)] * len(clients)
    fs = [_Counted(f) for f in clients]
    x = x0.detach().reshape(-1).to(torch.float64)
    if method == "fzoos":
        if isinstance(cfg, fb.FedZOParams):
            raise TypeError("fzoos needs FZooSParams or a mapping of its fields")
        params = cfg if isinstance(cfg, fz.FZooSParams) else fz.FZooSParams(**dict(cfg or {}))
        return _run_fzoos(params, fs, x, rounds, seed, p, monitor)
    if isinstance(cfg, fz.FZooSParams):
        raise TypeError(f"{method} needs FedZOParams or a mapping of its fields")
    zp = cfg if isinstance(cfg, fb.FedZOParams) else fb.FedZOParams(**dict(cfg or {}))
    return _run_zo(dataclasses.replace(zp, correction=_CORRECTION[method]), fs, x, rounds, seed, p, monitor)


def _run_fzoos(
    params: fz.FZooSParams, fs: list[_Counted], x: Tensor, rounds: int, seed: int, p: list[float], monitor: Monitor
) -> list[dict[str, Any]]:
    t0, n, d = time.perf_counter(), len(fs), x.numel()
    M = params.n_features if params.corrected else 0
    states = [fz.client_run(fz.client_init(x, i, seed, params), params, f) for i, f in enumerate(fs)]
    f_prev = fz.server_accept([fz.client_value_at(s, x) for s in states], p, None)[1]  # x0 is in the init batch
    log = [_record(0, fs, 0, 0, f_prev, monitor, x, True, [], t0)]
    w_glob: Tensor | None = None
    nbytes = 0
    for r in range(1, rounds + 1):
        t0, q0 = time.perf_counter(), _total(fs)
        start = list(states)
        xs: dict[int, Tensor] = {}
        for i, f in enumerate(fs):
            try:
                xs[i], states[i], _ = fz.client_local_round(states[i], x, w_glob, params, f)
            except Exception:  # noqa: BLE001 - any objective failure drops the client for the round
                states[i] = {**start[i], "w_own": torch.zeros(0, dtype=torch.float64)}
        _check(len(xs), n, params.max_failed_fraction, r)
        x_cand, _ = fz.server_aggregate(list(xs.values()), None, [p[i] for i in xs])
        rho = dict(zip(xs, fz.server_radii(x_cand, list(xs.values()), params.min_radius)))
        ws: dict[int, Tensor | None] = {}
        vals: dict[int, float] = {}
        for i in xs:
            try:
                ws[i], vals[i], states[i] = fz.client_refit_round(states[i], x_cand, rho[i], params, fs[i])
            except Exception:  # noqa: BLE001
                states[i] = {**start[i], "w_own": torch.zeros(0, dtype=torch.float64)}
        _check(len(ws), n, params.max_failed_fraction, r)
        ok = list(ws)
        w_ok = [w for w in (ws[i] for i in ok) if w is not None] if params.corrected else None
        _, w_glob = fz.server_aggregate([xs[i] for i in ok], w_ok, [p[i] for i in ok])
        accepted, f_cand = fz.server_accept([vals[i] for i in ok], [p[i] for i in ok], f_prev if params.accept_test else None)
        if accepted:
            x, f_prev = x_cand, f_cand
        # down: x_{r-1} (+ w̄_{r-1} after round 1), then x_cand and ρ_i; up: x_i, then w_i and f_i(x_cand)
        nbytes += n * _B * ((d + (M if r > 1 else 0)) + d + (d + 1) + (M + 1))
        log.append(_record(r, fs, q0, nbytes, f_prev, monitor, x, accepted, sorted(set(range(n)) - set(ok)), t0))
    return log


def _run_zo(
    params: fb.FedZOParams, fs: list[_Counted], x: Tensor, rounds: int, seed: int, p: list[float], monitor: Monitor
) -> list[dict[str, Any]]:
    t0, n, d = time.perf_counter(), len(fs), x.numel()
    states = [fb.zo_client_init(d, i, seed) for i in range(n)]
    f_prev: float | None = None
    if params.accept_test:  # the test needs F(x_0): N counted queries
        f_prev, states, _ = _zo_test(states, fs, x, p, None)
    log = [_record(0, fs, 0, 0, f_prev, monitor, x, True, [], t0)]
    c_glob: Tensor | None = None
    scaffold = params.correction in ("scaffold1", "scaffold2")
    nbytes = 0
    for r in range(1, rounds + 1):
        t0, q0 = time.perf_counter(), _total(fs)
        xs: dict[int, Tensor] = {}
        for i, f in enumerate(fs):
            try:
                xs[i], states[i], _ = fb.zo_local_round(states[i], x, r, params, f, c_glob)
            except Exception:  # noqa: BLE001 - the client keeps its round-start state
                pass
        _check(len(xs), n, params.max_failed_fraction, r)
        x_cand, _ = fz.server_aggregate(list(xs.values()), None, [p[i] for i in xs])
        accepted = True
        if params.accept_test:
            f_cand, states, accepted = _zo_test(states, fs, x_cand, p, f_prev)
            nbytes += n * _B * (d + 1)
            f_prev = f_cand if accepted else f_prev
        if accepted:
            x = x_cand
        if params.correction == "scaffold1":  # control variates at the new global point
            for i, f in enumerate(fs):
                _, states[i], _ = fb.zo_control(states[i], x, r, params, f)
        if scaffold:
            c_glob = fz.server_aggregate([s["c_own"] for s in states], None, p)[0]  # type: ignore[misc]
        nbytes += n * _B * (2 * d + (2 * d if scaffold else 0))
        log.append(_record(r, fs, q0, nbytes, f_prev, monitor, x, accepted, sorted(set(range(n)) - set(xs)), t0))
    return log


def _zo_test(
    states: list[fb.ZOState], fs: list[_Counted], x: Tensor, p: list[float], f_prev: float | None
) -> tuple[float, list[fb.ZOState], bool]:
    checks = [fb.zo_check(s, x, f) for s, f in zip(states, fs)]
    accepted, f_cand = fz.server_accept([c[0] for c in checks], p, f_prev)
    return f_cand, [c[1] for c in checks], accepted


def _check(n_ok: int, n: int, frac: float, r: int) -> None:
    if not fz.survivors_ok(n_ok, n, frac):
        raise RoundFailed(f"round {r}: {n - n_ok} of {n} clients failed (max_failed_fraction={frac})")


def _total(fs: list[_Counted]) -> int:
    return sum(f.n for f in fs)


def _record(
    r: int, fs: list[_Counted], q0: int, nbytes: int, value: float | None, monitor: Monitor,
    x: Tensor, accepted: bool, failed: list[int], t0: float,
) -> dict[str, Any]:  # fmt: skip
    seconds = time.perf_counter() - t0  # the monitor's evaluation is not part of the round
    q = _total(fs)
    return {
        "round": r, "queries": q, "round_queries": q - q0, "bytes": nbytes, "value": value,
        "gap": None if monitor is None else float(monitor(x)), "accepted": accepted, "failed": failed,
        "seconds": seconds, "x_sha": hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16],
    }  # fmt: skip
