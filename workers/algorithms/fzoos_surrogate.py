"""FZooS gradient surrogates: the derived GP (local, exact) and random Fourier features (shared).

Shu, Lin, Dai & Low, "Federated Zeroth-Order Optimization using Trajectory-Informed Surrogate
Gradients", arXiv 2308.04077 (brief fzoos.md §2; the derived GP is ZoRD's, ICLR 2023).

* Derived GP (§2.1): with α = (K + σ²I)⁻¹ y, ∇μ(x) = Σ_τ α_τ ∇ₓk(x, x_τ), computed with the
  analytic kernel gradient (not the official code's finite differences, pitfall 2). The gradient
  uncertainty is tr dΣ(x, x) = d·k''(0) − tr(dk(x)ᵀ(K + σ²I)⁻¹dk(x)) (pitfall 4: the trace, not
  dimension 0 only), evaluated in O(n²) per point through the identity in :func:`grad_var_trace`.
* RFF (§2.2): φ(x) = √(2/M) cos(Ωx + b), Ω ~ N(0, I/l²), b ~ U[0, 2π], regenerated from a shared
  seed on every party and never sent; w = Φᵀ(ΦΦᵀ + λI)⁻¹y (dual ridge, n ≤ 500 ≪ M) and
  ∇μ̂(x) = −√(2/M) Ωᵀ(sin(Ωx + b) ⊙ w), linear in w.

Everything runs in float64 (the brief's precision for the solves) and is batched over points.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Kernel = Literal["matern52", "se"]
_SQRT5 = math.sqrt(5.0)
_F64 = torch.float64


class GPFit(NamedTuple):
    """A fitted zero-mean GP on normalised values (min-max, then centred).

    Attributes:
        X: ``(n, d)`` inputs, shifted by ``center``.
        center: ``(d,)`` the translation applied to all inputs (the kernels are stationary).
        alpha: ``(n,)`` (K + σ²I)⁻¹ y_norm.
        chol: ``(n, n)`` lower Cholesky factor of K + σ²I (jitter included).
        lengthscale: the marginal-likelihood choice from the grid.
        scale: y_max − y_min, the factor mapping normalised gradients back (0 = flat data).
        kernel: ``"matern52"`` or ``"se"``.
    """

    X: Tensor
    center: Tensor
    alpha: Tensor
    chol: Tensor
    lengthscale: float
    scale: float
    kernel: str


def kernel_of_distance(r: Tensor, ls: Tensor | float, kernel: str) -> Tensor:
    """k(r) with unit amplitude: Matérn-5/2 (the official code's GP) or SE."""
    if kernel == "matern52":
        s = r * (_SQRT5 / ls)  # a fresh tensor: the in-place ops below touch nothing else
        poly = s * s
        poly.mul_(1.0 / 3.0).add_(s).add_(1.0)
        return poly.mul_(torch.exp_(s.neg_()))
    if kernel == "se":
        return torch.exp(-0.5 * (r / ls) ** 2)
    raise ValueError(f"unknown kernel {kernel!r}")


def kernel_grad_factor(r: Tensor, ls: float, kernel: str) -> Tensor:
    """g(r) with ∇ₓk(x, x') = g(‖x − x'‖)·(x − x') (brief §2.1 closed forms)."""
    if kernel == "matern52":
        s = _SQRT5 * r / ls
        return -(5.0 / (3.0 * ls * ls)) * (1.0 + s) * torch.exp(-s)
    return -torch.exp(-0.5 * (r / ls) ** 2) / (ls * ls)


def prior_grad_var(ls: float, kernel: str) -> float:
    """∂²k/∂x_j∂x'_j at x = x': the prior variance of each partial derivative."""
    return 5.0 / (3.0 * ls * ls) if kernel == "matern52" else 1.0 / (ls * ls)


def normalise(y: Tensor) -> tuple[Tensor, float]:
    """Min-max normalise and centre ``y``; returns ``(y_norm, y_max − y_min)``.

    Deviation: the code only min-max normalises; centring removes the constant the zero-mean
    model would otherwise have to explain (it changes no gradient of the data, only the fit).
    """
    span = float(y.max() - y.min()) if y.numel() else 0.0
    if not span > 1e-12 * max(1.0, float(y.abs().max()) if y.numel() else 1.0):
        return torch.zeros_like(y), 0.0
    yn = (y - y.min()) / span
    return yn - yn.mean(), span


def _cholesky(K: Tensor, noise: float) -> tuple[Tensor, Tensor]:
    """Batched Cholesky of K + (noise + jitter)I, raising the jitter until every factor exists."""
    eye = torch.eye(K.shape[-1], dtype=K.dtype)
    jitter = noise
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(K + jitter * eye)
        if bool((info == 0).all()):
            return L, info
        jitter = max(jitter * 10.0, 1e-10)
    return L, info


def fit_gp(X: Tensor, y: Tensor, lengthscales: Tensor, noise: float = 1e-6, kernel: Kernel = "matern52") -> GPFit:
    """Fit the derived-GP surrogate, choosing the lengthscale by marginal likelihood on a grid.

    Deviation (brief §6.1, pitfall 8): a fixed log grid replaces the code's 20-restart optimiser.
    """
    X = X.to(_F64)
    center = X.mean(dim=0)
    Xc = X - center
    yn, span = normalise(y.to(_F64))
    R = torch.cdist(Xc, Xc)
    ls = lengthscales.to(_F64).reshape(-1, 1, 1)
    L, info = _cholesky(kernel_of_distance(R.unsqueeze(0), ls, kernel), noise)
    alpha = torch.cholesky_solve(yn.reshape(1, -1, 1).expand(L.shape[0], -1, 1), L).squeeze(-1)
    logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    lml = -0.5 * (alpha * yn).sum(-1) - logdet
    lml = torch.where(info == 0, lml, torch.full_like(lml, -math.inf))
    k = int(torch.argmax(lml))
    return GPFit(Xc, center, alpha[k], L[k], float(lengthscales[k]), span, kernel)


def gp_grad_mean(fit: GPFit, x: Tensor) -> Tensor:
    """∇μ(x) for ``(m, d)`` or ``(d,)`` points, in the units of the raw values (§2.1)."""
    xs = x.to(_F64).reshape(-1, fit.X.shape[1]) - fit.center
    coef = kernel_grad_factor(torch.cdist(xs, fit.X), fit.lengthscale, fit.kernel) * fit.alpha
    grad = (xs * coef.sum(-1, keepdim=True) - coef @ fit.X) * fit.scale
    return grad.reshape(x.shape)


def gp_mean(fit: GPFit, x: Tensor) -> Tensor:
    """Posterior mean of the normalised, centred values at ``(m, d)`` points (diagnostics)."""
    xs = x.to(_F64).reshape(-1, fit.X.shape[1]) - fit.center
    return kernel_of_distance(torch.cdist(xs, fit.X), fit.lengthscale, fit.kernel) @ fit.alpha


def grad_var_trace(X: Tensor, cand: Tensor, ls: float, noise: float = 1e-6, kernel: Kernel = "matern52") -> Tensor:
    """tr dΣ(x, x) of the derived GP on inputs ``X`` at each row of ``cand``: ``(c,)``.

    With dk_τ = g_τ(x − X_τ), s = X x and G = X Xᵀ,
    tr(dkᵀA dk) = ‖x‖² gᵀAg − 2 (g⊙s)ᵀAg + gᵀ(A⊙G)g, so no (c, n, d) tensor is formed.
    """
    center = cand.mean(dim=0)
    Xc, C = X.to(_F64) - center, cand.to(_F64) - center
    L, _ = _cholesky(kernel_of_distance(torch.cdist(Xc, Xc), ls, kernel), noise)
    A = torch.cholesky_inverse(L)
    g = kernel_grad_factor(torch.cdist(C, Xc), ls, kernel)  # (c, n)
    Ag = g @ A  # A symmetric
    s = C @ Xc.T
    quad = (C * C).sum(-1) * (Ag * g).sum(-1) - 2.0 * (g * s * Ag).sum(-1) + ((g @ (A * (Xc @ Xc.T))) * g).sum(-1)
    return X.shape[1] * prior_grad_var(ls, kernel) - quad


@functools.lru_cache(maxsize=4)
def rff_basis(seed: int, d: int, M: int, lengthscale: float, dtype: torch.dtype = _F64) -> tuple[Tensor, Tensor]:
    """The shared random features (Ω ``(M, d)``, b ``(M,)``) for the SE kernel of ``lengthscale``.

    Deterministic in its arguments on every party (a pinned CPU generator), cached per process;
    the returned tensors are shared, never mutate them.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63 - 1))
    omega = torch.randn(M, d, generator=gen, dtype=_F64) / lengthscale
    b = torch.rand(M, generator=gen, dtype=_F64) * (2.0 * math.pi)
    return omega.to(dtype), b.to(dtype)


def rff_features(X: Tensor, omega: Tensor, b: Tensor) -> Tensor:
    """φ(X) = √(2/M) cos(XΩᵀ + b): ``(n, M)``."""
    return math.sqrt(2.0 / omega.shape[0]) * torch.cos(X.to(omega.dtype) @ omega.T + b)


def rff_fit(X: Tensor, y: Tensor, omega: Tensor, b: Tensor, ridge: float = 1e-6) -> Tensor:
    """RFF weights in raw value units: w = span·Φᵀ(ΦΦᵀ + λI)⁻¹y_norm (§2.2, pitfalls 5–6).

    Deviation: λ > 0 instead of the code's Ridge(alpha=0); a flat neighbourhood gives w = 0.
    """
    yn, span = normalise(y.to(_F64))
    if span == 0.0:
        return torch.zeros(omega.shape[0], dtype=omega.dtype)
    Phi = rff_features(X, omega, b)
    L, _ = _cholesky(Phi @ Phi.T, ridge)
    return (Phi.T @ torch.cholesky_solve(yn.reshape(-1, 1).to(Phi.dtype), L)).squeeze(-1) * span


def rff_grad(x: Tensor, w: Tensor, omega: Tensor, b: Tensor) -> Tensor:
    """∇φ(x)ᵀw = −√(2/M) Ωᵀ(sin(Ωx + b) ⊙ w) for ``(m, d)`` or ``(d,)`` points."""
    xs = x.to(omega.dtype).reshape(-1, omega.shape[1])
    grad = -math.sqrt(2.0 / omega.shape[0]) * ((torch.sin(xs @ omega.T + b) * w) @ omega)
    return grad.reshape(x.shape)
