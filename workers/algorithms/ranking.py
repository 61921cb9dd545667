"""Ranking-oracle helpers: the comparison DAG of one answer, and a simulated oracle.

An (m, k)-ranking oracle (Tang, Rybin & Chang, ICLR 2024, Definition 1) returns the indices
(i_1, ..., i_k) of the k best of m points, best first. One answer implies the DAG of
"better than" pairs (paper Section 3)::

    E = {(i_p, i_q): p < q <= k}  ∪  {(i_p, j): p <= k, j unranked}

with no edges among unranked points. ``ties`` groups indices the oracle could not separate;
edges inside a tie group are dropped (brief §7.5), every other edge is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

Ranking = tuple[int, ...]
Ties = tuple[tuple[int, ...], ...]


def validate_ranking(ranking: Ranking, ties: Ties, m: int) -> None:
    """Raise ``ValueError`` unless ``ranking``/``ties`` is a consistent answer about m points.

    Rules: indices unique and in ``[0, m)``; every tie group's ranked members occupy
    consecutive positions, and a group holding unranked members must end the ranking (its
    ranked members are then tied with points below the cut, which is still a valid top-k).
    """
    if len(set(ranking)) != len(ranking) or any(not 0 <= i < m for i in ranking):
        raise ValueError(f"ranking must list distinct indices in [0, {m}), got {ranking}")
    pos = {idx: p for p, idx in enumerate(ranking)}
    seen: set[int] = set()
    for group in ties:
        if any(not 0 <= i < m for i in group) or seen.intersection(group) or len(set(group)) != len(group):
            raise ValueError(f"tie groups must be disjoint indices in [0, {m}), got {ties}")
        seen.update(group)
        ranked = sorted(pos[i] for i in group if i in pos)
        if ranked and ranked[-1] - ranked[0] != len(ranked) - 1:
            raise ValueError(f"tie group {group} is not contiguous in the ranking {ranking}")
        if ranked and len(ranked) < len(group) and ranked[-1] != len(ranking) - 1:
            raise ValueError(f"tie group {group} mixes ranked and unranked points but does not end the ranking")


def better_matrix(ranking: Ranking, ties: Ties, m: int) -> Tensor:
    """``B[a, b] = True`` iff the answer says point a is strictly better than point b (the DAG E)."""
    validate_ranking(ranking, ties, m)
    level = torch.full((m,), len(ranking), dtype=torch.long)  # unranked: below every ranked point
    if ranking:
        level[torch.tensor(ranking, dtype=torch.long)] = torch.arange(len(ranking))
    better = level[:, None] < level[None, :]  # unranked vs unranked: equal levels, no edge
    group = torch.arange(m)  # singleton groups by default
    for g, members in enumerate(ties):
        group[torch.tensor(members, dtype=torch.long)] = m + g
    return better & (group[:, None] != group[None, :])


def dag_weights(ranking: Ranking, ties: Ties, m: int) -> tuple[Tensor, int]:
    """Per-candidate weights of the rank estimator and the edge count |E|.

    g̃ = (1/|E|) Σ_{(a,b)∈E} (ξ_b − ξ_a) = (1/|E|) Σ_v w_v ξ_v with w_v = in-degree − out-degree
    (edges point from better to worse). Without ties and for the r-th ranked point (1-based)
    w = 2r − m − 1, every unranked point has w = k, and |E| = k(k−1)/2 + k(m−k); the weights sum
    to zero. (The official ``optimizer.py`` uses m − 2r' with 0-based r', i.e. these weights
    plus one; we follow the paper.)

    Returns:
        ``(w, n_edges)`` with ``w`` a float64 ``(m,)`` tensor.
    """
    better = better_matrix(ranking, ties, m)
    w = better.sum(dim=0) - better.sum(dim=1)  # worse-than-count minus better-than-count
    return w.to(torch.float64), int(better.sum())


def rank_by_values(
    values: Tensor,
    k: int,
    noise: float = 0.0,
    flip_prob: float = 0.0,
    gen: torch.Generator | None = None,
) -> tuple[Ranking, Ties]:
    """Simulated (m, k)-ranking oracle over known values (smaller is better).

    Observed values are ``values + noise·N(0,1)``. Points with exactly equal observed values
    form one level (reported as a tie group); one pass over adjacent levels swaps each pair
    with probability ``flip_prob`` (a sloppy human). The ranking lists the first k indices of
    the resulting order; tie groups that reach into the top k are reported whole, so a tie
    across the cut drops the edge between the k-th point and its unranked twin.

    Args:
        values: ``(m,)`` objective values.
        k: how many best indices to return (1..m).
        noise: std of Gaussian noise on the observed values.
        flip_prob: probability of swapping each pair of adjacent levels.
        gen: generator for noise and flips (required when either is non-zero).

    Returns:
        ``(ranking, ties)``: best-first indices, and the tie groups (each sorted).
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    m = v.numel()
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}], got {k}")
    if (noise > 0.0 or flip_prob > 0.0) and gen is None:
        raise ValueError("a generator is required when noise or flip_prob is non-zero")
    if noise > 0.0:
        v = v + noise * torch.randn(m, generator=gen, dtype=torch.float64)
    order = torch.argsort(v, stable=True).tolist()
    levels: list[list[int]] = []
    for idx in order:
        if levels and float(v[idx]) == float(v[levels[-1][0]]):
            levels[-1].append(idx)
        else:
            levels.append([idx])
    if flip_prob > 0.0:
        flips = torch.rand(max(len(levels) - 1, 0), generator=gen, dtype=torch.float64).tolist()
        for i, u in enumerate(flips):
            if u < flip_prob:
                levels[i], levels[i + 1] = levels[i + 1], levels[i]
    flat = [idx for level in levels for idx in level]
    ranking = tuple(flat[:k])
    top = set(ranking)
    ties = tuple(tuple(sorted(level)) for level in levels if len(level) > 1 and top.intersection(level))
    return ranking, ties
