"""Randomized smoothing: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019 (PREDICT and CERTIFY, their Algorithm/pseudocode p. 4).

The smoothed classifier is g(x) = argmax_c P_{δ~N(0,σ²I)}[f(x+δ) = c] for a base classifier
``base(images (n, C, H, W)) -> logits (n, K)`` (for ZO-AE-DS: f∘Dec∘Enc∘D_θ, see
``ae_ds.defended``). Only argmax labels of the base are used.

* CERTIFY: ĉ_A = the most frequent class among N0 noisy samples; n_A = its count among N fresh
  ones; p̲_A = the one-sided (1 − α) Clopper–Pearson lower bound; if p̲_A < ½ abstain, else
  the certified ℓ2 radius is R = σ Φ⁻¹(p̲_A) (Cohen Thm. 1).
* PREDICT: the two most frequent classes among N samples; abstain unless a two-sided
  binomial test of n_A vs n_A + n_B at p = ½ has p-value ≤ α.
* Certified accuracy CA(r) = fraction of points with ĉ_A = label and R > r (strict, as the
  ZO-AE-DS certify script; abstentions count as wrong, so SA = CA(0)).

Defaults in the paper (brief §4): N0 = 100, N = 10 000, α = 0.001; an image costs N0 + N
queries and R ≤ σ Φ⁻¹(α^{1/N}) (:func:`max_radius`). Noise for point i comes from
``step_generator(seed, i)``, so any point's certificate can be recomputed alone.
The Beta quantile and the binomial test use scipy (torch has no Beta icdf).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor

from workers.algorithms.base import step_generator

Classifier = Callable[[Tensor], Tensor]
ABSTAIN = -1


class Certificate(NamedTuple):
    """CERTIFY's answer for one point: class (``ABSTAIN`` = −1) and ℓ2 radius (0 when abstaining)."""

    label: int
    radius: float
    p_lower: float


class CertifyReport(NamedTuple):
    """Certificates for a set of points, certified accuracy per radius and queries spent."""

    certificates: tuple[Certificate, ...]
    radii: tuple[float, ...]
    accuracy: tuple[float, ...]
    queries: int


def sample_counts(base: Classifier, x: Tensor, num: int, sigma: float, num_classes: int,
                  gen: torch.Generator, batch: int) -> Tensor:
    """Class counts of ``base`` over ``num`` Gaussian-noisy copies of ``x`` (batched calls); the noise is
    drawn on ``x``'s device (``gen`` must live there), the counts are kept on the CPU."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    left = num
    while left > 0:
        b = min(batch, left)
        noise = torch.randn((b, *x.shape), generator=gen, dtype=x.dtype, device=x.device) * sigma
        with torch.no_grad():
            labels = base(x.unsqueeze(0) + noise).argmax(dim=1)
        counts += torch.bincount(labels, minlength=num_classes)[:num_classes].cpu()
        left -= b
    return counts


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound on p from k successes in n trials."""
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def radius_of(p_lower: float, sigma: float) -> float:
    """R = σ Φ⁻¹(p̲_A) (Cohen Thm. 1 with p̄_B = 1 − p̲_A)."""
    return float(sigma * norm.ppf(p_lower))


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest certifiable radius σ Φ⁻¹(α^{1/N}) (all N samples agree)."""
    return radius_of(alpha ** (1.0 / n), sigma)


def certify(base: Classifier, x: Tensor, *, sigma: float, n0: int, n: int, alpha: float,
            num_classes: int, gen: torch.Generator, batch: int = 1000) -> Certificate:
    """Cohen et al.'s CERTIFY for one point ``x`` (C, H, W); costs exactly n0 + n queries."""
    guess = int(sample_counts(base, x, n0, sigma, num_classes, gen, batch).argmax())
    n_a = int(sample_counts(base, x, n, sigma, num_classes, gen, batch)[guess])
    p_lower = lower_confidence_bound(n_a, n, alpha)
    if p_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, p_lower)
    return Certificate(guess, radius_of(p_lower, sigma), p_lower)


def predict(base: Classifier, x: Tensor, *, sigma: float, n: int, alpha: float, num_classes: int,
            gen: torch.Generator, batch: int = 1000) -> int:
    """Cohen et al.'s PREDICT: the top class, or ``ABSTAIN`` when the binomial test fails."""
    counts = sample_counts(base, x, n, sigma, num_classes, gen, batch)
    top2 = torch.topk(counts, k=min(2, num_classes))
    n_a = int(top2.values[0])
    n_b = int(top2.values[1]) if num_classes > 1 else 0
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top2.indices[0])


def certified_accuracy(certs: Sequence[Certificate], labels: Sequence[int], radii: Sequence[float]) -> tuple[float, ...]:
    """CA(r) = #{ĉ = y and R > r} / #points for each r (strict '>', abstain = wrong)."""
    total = max(len(certs), 1)
    return tuple(sum(c.label == y and c.radius > r for c, y in zip(certs, labels)) / total for r in radii)


def certify_dataset(base: Classifier, images: Tensor, labels: Tensor, *, sigma: float, n0: int, n: int,
                    alpha: float, num_classes: int, radii: Sequence[float], seed: int = 0,
                    batch: int = 1000) -> CertifyReport:
    """CERTIFY every image (noise for point i from ``step_generator(seed, i)``) and tabulate CA(r)."""
    certs = tuple(
        certify(base, images[i], sigma=sigma, n0=n0, n=n, alpha=alpha, num_classes=num_classes,
                gen=step_generator(seed, i, device=images.device), batch=batch)
        for i in range(images.shape[0])
    )
    acc = certified_accuracy(certs, [int(y) for y in labels], radii)
    return CertifyReport(certs, tuple(float(r) for r in radii), acc, images.shape[0] * (n0 + n))
