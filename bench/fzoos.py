"""FZooS vs FedZO at equal rounds, in process, one thread (brief fzoos.md §6.1–6.2).

(a) the official code's Quadratic (d = 50, N = 5, div = 0.5, T = 10, acceptance test on):
    queries to reach gap ≤ 1e-3 (brief's numpy reproduction: FZooS ≈ 3 260, FedZO ≈ 7 385);
(b) the shifted-optima quadratic (d = 20, N = 5, div = 2, T = 10, R = 15, no test): final gaps
    (brief: FZooS with the code's γ = 1/(t+1) ≈ 0.02–0.14, FedZO ≈ 0.2–0.74), with the γ = 0
    ablation, which should stall like FedZO, and the cheap ZO baselines for reference;
(c) wall time per round (setting a) of both and their ratio.

Every query counts (initial batch, server-side acceptance checks, SCAFFOLD-I controls); the
gap is an exact, uncounted measurement. ``fzoos`` is the default config (γ "adaptive", ours);
``fzoos-decay`` is the official code's γ schedule. The last line printed is one JSON object.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=.:client .venv/bin/python bench/fzoos.py`` (``--quick``: one seed
and R = 5 in (b); the queries in (a) do not depend on the seed, so ``ratio`` is the same)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from workers.algorithms.fed_problems import make_problem
from workers.algorithms.fed_runner import run_federated

GAP_TARGET = 1e-3
RATIO_TARGET = 0.5  # FZooS should need at most half FedZO's queries (brief: ≈ 0.44)


def run(method: str, family: str, dim: int, rounds: int, seed: int, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    pr = make_problem(family, 5, dim, None, seed)  # type: ignore[arg-type]
    return run_federated(method, pr.clients, pr.x0, rounds, cfg, seed, monitor=pr.gap)


def to_target(hist: list[dict[str, Any]]) -> int | None:
    return next((r["queries"] for r in hist if r["gap"] <= GAP_TARGET), None)


def mean_or_none(xs: list[int | None]) -> float | None:
    return None if any(x is None for x in xs) else statistics.fmean(x for x in xs if x is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds-a", type=int, default=12)
    ap.add_argument("--rounds-b", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="1 seed, R = 5 in (b) (make bench); (a) unchanged")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.rounds_b = 1, 5
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    seeds = list(range(args.seeds))

    print(f"(a) quadratic d=50 N=5 div=0.5 T=10 R={args.rounds_a}, acceptance test on; gap target {GAP_TARGET:g}")
    a_variants: dict[str, tuple[str, dict[str, Any]]] = {"fedzo": ("fedzo", {}), "fzoos": ("fzoos", {}), "fzoos-decay": ("fzoos", {"gamma": "decay"})}
    qt: dict[str, list[int | None]] = {k: [] for k in a_variants}
    final_a: dict[str, list[float]] = {k: [] for k in a_variants}
    sec_round: dict[str, list[float]] = {k: [] for k in a_variants}
    for name, (method, cfg) in a_variants.items():
        for s in seeds:
            h = run(method, "quadratic", 50, args.rounds_a, s, {**cfg, "accept_test": True})
            qt[name].append(to_target(h))
            final_a[name].append(h[-1]["gap"])
            sec_round[name].append(statistics.fmean(r["seconds"] for r in h[1:]))
        print(f"  {name:12s} queries→{GAP_TARGET:g}: {qt[name]}  final gap: {[f'{g:.2e}' for g in final_a[name]]}"
              f"  q/round: {h[-1]['round_queries']}  s/round: {statistics.fmean(sec_round[name]):.3f}", flush=True)  # fmt: skip
    m_fz, m_fed = mean_or_none(qt["fzoos"]), mean_or_none(qt["fedzo"])
    ratio = None if m_fz is None or m_fed is None else m_fz / m_fed

    print(f"(b) shifted quadratic d=20 N=5 div=2 T=10 R={args.rounds_b}, no acceptance test: final gap F(x_R) - F*")
    b_variants: dict[str, tuple[str, dict[str, Any]]] = {
        "fedzo": ("fedzo", {}), "fzoos": ("fzoos", {}), "fzoos-decay": ("fzoos", {"gamma": "decay"}),
        "gamma0": ("fzoos", {"gamma": 0.0}), "fedprox": ("fedprox", {}), "scaffold1": ("scaffold1", {}),
        "scaffold2": ("scaffold2", {}),
    }  # fmt: skip
    shifted: dict[str, list[float]] = {}
    queries_b: dict[str, int] = {}
    for name, (method, cfg) in b_variants.items():
        hs = [run(method, "shifted_quadratic", 20, args.rounds_b, s, cfg) for s in seeds]
        shifted[name] = [round(h[-1]["gap"], 6) for h in hs]
        queries_b[name] = hs[0][-1]["queries"]
        print(f"  {name:12s} gaps: {[f'{g:.3g}' for g in shifted[name]]}  total queries: {queries_b[name]}", flush=True)

    t_fz, t_fed = statistics.fmean(sec_round["fzoos"]), statistics.fmean(sec_round["fedzo"])
    print(f"(c) wall time per round (a): fzoos {t_fz:.3f} s, fedzo {t_fed:.4f} s, ratio {t_fz / t_fed:.0f}x")
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s on 1 thread; ratio (a) = {ratio if ratio is None else round(ratio, 3)} (target <= {RATIO_TARGET})")
    out = {
        "bench": "fzoos", "ratio": None if ratio is None else round(ratio, 4), "target": RATIO_TARGET,
        "gap_target": GAP_TARGET, "queries_to_target": qt, "final_gap_a": {k: [float(f"{g:.3e}") for g in v] for k, v in final_a.items()},
        "shifted": shifted, "shifted_queries": queries_b, "time_ratio": round(t_fz / t_fed, 1),
        "sec_per_round": {k: round(statistics.fmean(v), 4) for k, v in sec_round.items()}, "seconds": round(total, 1), "quick": args.quick,
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
