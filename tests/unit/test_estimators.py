"""RGE and CGE: unbiasedness, exactness on quadratics / linear functions, query counts,
buffer reuse, and the CUDA path (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from workers.algorithms.estimators import (
    CGEConfig,
    Plan,
    RGEConfig,
    cge,
    estimate,
    gradient,
    rge,
    sample_directions,
    slopes,
)

D = 12
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _quadratic(seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random SPD matrix A and vector b for f(x) = ½xᵀAx + bᵀx."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(D, D, generator=g, dtype=torch.float64)
    return m @ m.T / D + torch.eye(D, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)


def _f(points: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return 0.5 * ((points @ a) * points).sum(1) + points @ b


def _x0() -> Tensor:
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
@pytest.mark.parametrize("difference", ["forward", "central"])
def test_rge_mean_matches_true_gradient(directions: str, difference: str) -> None:
    a, b = _quadratic()
    x = _x0()
    true = a @ x + b
    est = rge(RGEConfig(directions, q=6000, mu=1e-3, difference=difference))  # type: ignore[arg-type]
    points, aux = est.plan(x, torch.Generator().manual_seed(1))
    grad, _ = est.gradient(_f(points, a, b), aux)  # the mean over q = 6000 draws
    cosine = float(grad @ true / (grad.norm() * true.norm()))
    assert cosine > 0.9
    # the scale must be right too (the sphere needs its d factor): ‖mean − g‖ ≈ √((d+1)/q)‖g‖ ≈ 0.05‖g‖
    assert float((grad - true).norm() / true.norm()) < 0.15


@pytest.mark.parametrize("mu", [1e-4, 1e-2, 1.0])
def test_central_rge_exact_per_sample_on_quadratic(mu: float) -> None:
    a, b = _quadratic(3)
    x = _x0()
    est = rge(RGEConfig("gaussian", q=200, mu=mu, difference="central"))
    points, aux = est.plan(x, torch.Generator().manual_seed(2))
    s, fx = slopes(_f(points, a, b), aux)
    assert aux.directions is not None
    exact = aux.directions @ (a @ x + b)
    assert torch.allclose(s, exact, rtol=0, atol=1e-7 * (1 + float(exact.abs().max())))
    assert fx == pytest.approx(float(_f(x[None], a, b)), abs=mu * mu * 50)


def test_forward_rge_slope_is_directional_derivative_plus_curvature() -> None:
    a, b = _quadratic(4)
    x, mu = _x0(), 1e-2
    est = rge(RGEConfig("gaussian", q=50, mu=mu, difference="forward"))
    points, aux = est.plan(x, torch.Generator().manual_seed(5))
    values = _f(points, a, b)
    s, fx = slopes(values, aux)
    u = aux.directions
    assert u is not None
    expected = u @ (a @ x + b) + 0.5 * mu * ((u @ a) * u).sum(1)  # s = uᵀg + (μ/2)uᵀAu exactly
    assert torch.allclose(s, expected, atol=1e-9)
    assert fx == float(values[0]) == float(_f(x[None], a, b))


@pytest.mark.parametrize("difference", ["forward", "central"])
@pytest.mark.parametrize("mu", [5e-3, 0.5])
def test_cge_exact_on_linear(difference: str, mu: float) -> None:
    coef = torch.arange(1.0, D + 1, dtype=torch.float64) * torch.tensor([1.0, -1.0]).repeat(D // 2).double()
    est = cge(CGEConfig(mu=mu, difference=difference))  # type: ignore[arg-type]
    points, aux = est.plan(_x0(), torch.Generator())
    grad, _ = est.gradient(points @ coef + 3.0, aux)
    assert float((grad - coef).abs().max()) <= 1e-9


def test_central_cge_exact_on_quadratic_forward_is_not() -> None:
    a, b = _quadratic(6)
    x = _x0()
    true = a @ x + b
    central, fwd = cge(CGEConfig(0.1, "central")), cge(CGEConfig(0.1, "forward"))
    pts_c, aux_c = central.plan(x, torch.Generator())
    g_c, _ = central.gradient(_f(pts_c, a, b), aux_c)
    pts_f, aux_f = fwd.plan(x, torch.Generator())
    g_f, _ = fwd.gradient(_f(pts_f, a, b), aux_f)
    assert float((g_c - true).abs().max()) < 1e-9
    assert float((g_f - true - 0.05 * torch.diagonal(a)).abs().max()) < 1e-9  # forward: + (μ/2)·A_ii


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: rge(RGEConfig(q=7, difference="forward")), 8),
        (lambda: rge(RGEConfig(q=7, difference="central")), 14),
        (lambda: rge(RGEConfig(q=1, difference="forward")), 2),
        (lambda: cge(CGEConfig(difference="forward")), D + 1),
        (lambda: cge(CGEConfig(difference="central")), 2 * D),
    ],
)
def test_query_counts_match_formulas(make, expected: int) -> None:  # type: ignore[no-untyped-def]
    est = make()
    x = _x0()
    points, _ = est.plan(x, torch.Generator().manual_seed(0))
    assert points.shape == (expected, D) and est.queries(D) == expected
    assert points.dtype == x.dtype


def test_forward_plans_put_the_base_point_first() -> None:
    x = _x0()
    for est in (rge(RGEConfig(q=3)), cge(CGEConfig())):
        points, _ = est.plan(x, torch.Generator().manual_seed(0))
        assert torch.equal(points[0], x)


def test_direction_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    sphere = sample_directions("sphere", 100, D, g, torch.float64, torch.device("cpu"))
    assert torch.allclose(sphere.norm(dim=1), torch.ones(100, dtype=torch.float64))
    rad = sample_directions("rademacher", 100, D, g, torch.float64, torch.device("cpu"))
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    many = sample_directions("rademacher", 4000, 31 * 3 + 1, g, torch.float64, torch.device("cpu"))
    assert float(many.mean(0).abs().max()) < 0.07  # every bit position is a fair coin
    assert float((many.T @ many / 4000 - torch.eye(94, dtype=torch.float64)).abs().max()) < 0.08  # E[uuᵀ] = I
    gauss = sample_directions("gaussian", 2000, D, g, torch.float64, torch.device("cpu"))
    assert abs(float(gauss.pow(2).mean()) - 1.0) < 0.03
    again = sample_directions("gaussian", 2000, D, torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    first = sample_directions("gaussian", 2000, D, torch.Generator().manual_seed(0), torch.float64, torch.device("cpu"))
    assert torch.equal(again, first)


def test_slope_map_applies_before_combination() -> None:
    a, b = _quadratic(7)
    x = _x0()
    est = rge(RGEConfig("gaussian", q=5))
    points, aux = est.plan(x, torch.Generator().manual_seed(8))
    values = _f(points, a, b)
    grad, _ = estimate(values, aux, torch.sign)
    s, _ = slopes(values, aux)
    assert aux.directions is not None
    assert torch.allclose(grad, (torch.sign(s)[:, None] * aux.directions).mean(0))


def test_sphere_scaling_is_d() -> None:
    x = _x0()
    est = rge(RGEConfig("sphere", q=4, mu=0.1))
    points, aux = est.plan(x, torch.Generator().manual_seed(0))
    assert aux.scale == D
    s, _ = slopes(points.sum(1), aux)  # linear f = Σx: Δf/μ = Σu
    assert aux.directions is not None
    assert torch.allclose(s, D * aux.directions.sum(1))


@pytest.mark.parametrize(
    "bad",
    [dict(q=0), dict(mu=0.0), dict(directions="uniform"), dict(difference="backward")],
)
def test_rge_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RGEConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plan_into_a_buffer_is_bitwise_a_fresh_plan(directions: str, dtype: torch.dtype) -> None:
    est = rge(RGEConfig(directions, q=5, difference="central"))  # type: ignore[arg-type]
    x = _x0().to(dtype)
    points, aux = est.plan(x, torch.Generator().manual_seed(4))
    buf = torch.full((5, D), 7.0, dtype=dtype)
    points_b, aux_b = est.plan(x, torch.Generator().manual_seed(4), buf)
    assert aux_b.directions is buf and aux.directions is not None
    assert torch.equal(points_b, points) and torch.equal(buf, aux.directions)
    wrong = torch.zeros(5, D + 1, dtype=dtype)  # a buffer that does not fit is left alone
    _, aux_w = est.plan(x, torch.Generator().manual_seed(4), wrong)
    assert aux_w.directions is not wrong and not wrong.any()
    if dtype == torch.float32 and directions == "gaussian":  # float32: straight into the buffer, as randn
        assert torch.equal(buf, torch.randn(5, D, generator=torch.Generator().manual_seed(4)))


def test_gradient_keeps_f_x_as_a_tensor_and_estimate_gives_a_float() -> None:
    a, b = _quadratic(9)
    est = rge(RGEConfig(q=4))
    points, aux = est.plan(_x0(), torch.Generator().manual_seed(1))
    values = _f(points, a, b)
    grad, fx = gradient(values, aux)
    grad_f, fx_f = estimate(values, aux)
    assert isinstance(fx, torch.Tensor) and fx.ndim == 0 and isinstance(fx_f, float)
    assert float(fx) == fx_f == float(values[0]) and torch.equal(grad, grad_f)


@CUDA
@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
@pytest.mark.parametrize("difference", ["forward", "central"])
def test_cuda_plan_and_gradient_stay_on_the_device_and_match_cpu(directions: str, difference: str) -> None:
    a, b = _quadratic(10)
    a_dev, b_dev, x = a.cuda(), b.cuda(), _x0().cuda()
    est = rge(RGEConfig(directions, q=6, difference=difference))  # type: ignore[arg-type]
    gen = torch.Generator(device="cuda").manual_seed(3)
    est.plan(x, gen)  # warm-up: lazy CUDA initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        points, aux = est.plan(x, gen)
        values = _f(points, a_dev, b_dev)
        grad, fx = gradient(values, aux)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert aux.directions is not None
    assert {t.device.type for t in (points, aux.directions, grad, fx)} == {"cuda"}
    u = aux.directions.cpu()
    sign = -1.0 if difference == "central" else 1.0  # the last row is x ∓ μu_q
    torch.testing.assert_close(points[-1].cpu(), _x0() + sign * aux.mu * u[-1], rtol=0, atol=1e-15)
    grad_cpu, fx_cpu = gradient(values.cpu(), Plan(u, aux.scale, aux.mu, aux.central))
    torch.testing.assert_close(grad.cpu(), grad_cpu, rtol=1e-12, atol=1e-12)
    assert float(fx) == pytest.approx(float(fx_cpu), rel=1e-14)
