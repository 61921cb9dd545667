"""Small statistics shared by the benches."""

from __future__ import annotations

from math import comb


def median_ci(xs: list[float], level: float = 0.9) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of ``xs``: ``(lo, hi, coverage)``.

    The order statistics ``x(j) ≤ median ≤ x(n+1−j)`` hold with probability ``1 − 2·P(B ≤ j−1)``,
    B ~ Binomial(n, ½), whatever the distribution of the rounds; ``j`` is the largest with a
    coverage of at least ``level`` (so 7 rounds give min–max at 98 %, 11 rounds x(3)–x(9) at 93 %).
    """
    s, n = sorted(xs), len(xs)
    if n == 0:
        raise ValueError("no values")
    tail = 1 / 2**n  # P(B ≤ j − 1)
    j = 1
    while j < (n + 1) // 2:
        nxt = tail + comb(n, j) / 2**n  # P(B ≤ j): the tail if we moved in to j + 1
        if 1 - 2 * nxt < level:
            break
        tail, j = nxt, j + 1
    return s[j - 1], s[n - j], 1 - 2 * tail
