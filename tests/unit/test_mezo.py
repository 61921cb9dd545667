"""MeZO in-place seed-trick SPSA: regeneration, restore, the dense formula, descent, replay, CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from workers.algorithms.mezo import (
    MeZO, MeZOConfig, check_precision, decays, direction, perturb_, replay_, spsa_step, trainable,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def mlp(dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.LayerNorm(12), nn.Linear(12, 1)).to(dtype=dtype, device=device)


def batch(dtype: torch.dtype, device: str = "cpu", n: int = 32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g, dtype=dtype)
    y = (x[:, :1] * 0.7 - x[:, 1:2] ** 2 * 0.3 + 0.1)
    return x.to(device), y.to(device)


def flat_z(params: list[Tensor], seed: int, step: int, j: int, cfg: MeZOConfig) -> Tensor:
    """The dense z_j, assembled tensor by tensor in REVERSE order (regeneration is order-free)."""
    parts: list[Tensor] = []
    for k in reversed(range(len(params))):
        chunks = params[k].detach().reshape(-1).split(cfg.chunk)
        zs = [direction(v, seed, step, j, k, c, cfg.directions) for c, v in enumerate(chunks)]
        parts.insert(0, torch.cat(zs))
    return torch.cat(parts)


def flat(params: list[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_cycle_replays_the_regenerated_z_and_restores_up_to_rounding(dtype: torch.dtype, kind: str) -> None:
    cfg = MeZOConfig(eps=1e-3, directions=kind, chunk=5)  # type: ignore[arg-type]
    params = [p for _, p in trainable(mlp(dtype))]
    theta0, z = flat(params), flat_z(params, 7, 3, 0, cfg)
    perturb_(params, 7, 3, 0, cfg.eps, cfg)
    assert torch.equal(flat(params), theta0.add(z, alpha=cfg.eps))  # bitwise: the same z every pass
    perturb_(params, 7, 3, 0, -2 * cfg.eps, cfg)
    perturb_(params, 7, 3, 0, cfg.eps, cfg)
    reference = theta0.add(z, alpha=cfg.eps).add(z, alpha=-2 * cfg.eps).add(z, alpha=cfg.eps)
    assert torch.equal(flat(params), reference)
    # three roundings of values bounded by |θ| + 2ε|z|: at most 1.5 ulp of that, each element
    bound = 2 * torch.finfo(dtype).eps * (theta0.abs() + 2 * cfg.eps * z.abs())
    assert bool(((flat(params) - theta0).abs() <= bound).all())
    assert z.std() > 0.5 and not torch.equal(z, flat_z(params, 7, 4, 0, cfg))  # a new step, a new z


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_restore_is_bitwise_exact_when_the_arithmetic_is(dtype: torch.dtype) -> None:
    """Weights on a 2⁻¹⁰ grid, ε = 2⁻¹⁰ and ±1 directions: every add is exact, so any
    missing, doubled or mis-signed pass (or a z that differs between passes) would show."""
    model = mlp(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 1024) / 1024)
    params = [p for _, p in trainable(model)]
    theta0 = flat(params)
    cfg = MeZOConfig(eps=2.0**-10, directions="rademacher", lr=0.0, q=3, fused=True, chunk=7)
    x, y = batch(dtype)
    out = spsa_step(params, decays([n for n, _ in trainable(model)]), lambda: F.mse_loss(model(x), y), 5, 0, cfg)
    assert torch.equal(flat(params), theta0)
    assert bool((out.losses[:, 0] != out.losses[:, 1]).all())  # the ± points really differed


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("q", [1, 3])
def test_one_step_equals_the_dense_spsa_formula(fused: bool, q: int) -> None:
    dtype, seed, step = torch.float64, 11, 4
    cfg = MeZOConfig(lr=0.05, eps=1e-3, q=q, weight_decay=0.1, fused=fused, chunk=9)
    model = mlp(dtype)
    named = trainable(model)
    names, params = [n for n, _ in named], [p for _, p in named]
    sizes, shapes = [p.numel() for p in params], [p.shape for p in params]
    x, y = batch(dtype)
    theta0 = flat(params)

    def f(theta: Tensor) -> Tensor:
        tensors = {n: v.reshape(s) for n, v, s in zip(names, theta.split(sizes), shapes)}
        return F.mse_loss(functional_call(model, tensors, (x,)), y)

    zs = [flat_z(params, seed, step, j, cfg) for j in range(q)]
    s = torch.stack([(f(theta0 + cfg.eps * z) - f(theta0 - cfg.eps * z)) / (2 * cfg.eps) for z in zs])
    mask = torch.cat([torch.full((n,), float(d), dtype=dtype) for n, d in zip(sizes, decays(names))])
    expected = theta0 - cfg.lr * (sum(sj * z for sj, z in zip(s, zs)) / q + cfg.weight_decay * mask * theta0)

    out = spsa_step(params, decays(names), lambda: F.mse_loss(model(x), y), seed, step, cfg)
    torch.testing.assert_close(out.slopes, s, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(flat(params), expected, rtol=1e-12, atol=1e-13)
    assert not torch.equal(flat(params), theta0)


def test_decay_excludes_bias_and_norms() -> None:
    names = ["0.weight", "0.bias", "2.weight", "ln_f.weight", "h.0.layer_norm.weight", "enc.norm1.weight", "kiln.weight"]
    assert decays(names) == [True, False, True, False, False, False, True]


def test_loss_decreases_on_a_small_regression_model() -> None:
    torch.manual_seed(0)
    model = mlp(torch.float32)
    x, y = batch(torch.float32, n=64)
    loss = lambda: F.mse_loss(model(x), y).detach()  # noqa: E731
    start = float(loss())
    opt = MeZO(model, MeZOConfig(lr=0.02, eps=1e-3, q=4), seed=3)
    for _ in range(150):
        out = opt.step(loss)
    assert float(loss()) < 0.5 * start, (start, float(loss()))
    assert out.losses.shape == (4, 2) and opt.state_dict() == {"seed": 3, "step": 150}
    assert model.training  # the mode is restored after the eval-mode queries


def test_replay_log_rebuilds_the_trajectory() -> None:
    model = mlp(torch.float64)
    theta0 = [p.detach().clone() for p in model.parameters()]
    x, y = batch(torch.float64)
    cfg = MeZOConfig(lr=0.05, q=2, weight_decay=0.01, fused=False, chunk=16)
    opt = MeZO(model, cfg, seed=9, keep_log=True)
    for _ in range(6):
        opt.step(lambda: F.mse_loss(model(x), y))
    assert opt.log is not None and len(opt.log) == 6
    replayed = [t.clone() for t in theta0]
    replay_(replayed, opt.decay, 9, opt.log, cfg)
    # equal up to the restore passes' rounding (§5.1: θ₀ + [(step, s, lr)] is the whole trajectory)
    for a, b, t0 in zip(replayed, model.parameters(), theta0):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)
        assert not torch.equal(a, t0)


def test_half_precision_is_refused_unless_allowed() -> None:
    model = mlp(torch.float16)
    with pytest.raises(ValueError, match="fp32 master"):
        MeZO(model, MeZOConfig())
    check_precision(list(model.parameters()), allow_half=True)
    with pytest.raises(ValueError):
        MeZOConfig(q=0)


@CUDA
def test_cuda_cycle_and_step_match_the_dense_formula() -> None:
    cfg = MeZOConfig(lr=0.05, eps=1e-3, q=2, chunk=9)
    model = mlp(torch.float64, "cuda")
    named = trainable(model)
    params = [p for _, p in named]
    x, y = batch(torch.float64, "cuda")
    theta0 = flat(params)
    zs = [flat_z(params, 1, 0, j, cfg) for j in range(2)]
    assert zs[0].device.type == "cuda"
    perturb_(params, 1, 0, 0, cfg.eps, cfg)
    perturb_(params, 1, 0, 0, -2 * cfg.eps, cfg)
    perturb_(params, 1, 0, 0, cfg.eps, cfg)
    bound = 2 * torch.finfo(torch.float64).eps * (theta0.abs() + 2 * cfg.eps * zs[0].abs())
    assert bool(((flat(params) - theta0).abs() <= bound).all())
    with torch.no_grad():
        for p, t in zip(params, theta0.split([p.numel() for p in params])):
            p.copy_(t.reshape(p.shape))
    out = spsa_step(params, [True] * len(params), lambda: F.mse_loss(model(x), y), 1, 0, cfg)
    expected = theta0 - cfg.lr * sum(sj * z for sj, z in zip(out.slopes, zs)) / 2
    torch.testing.assert_close(flat(params), expected, rtol=1e-10, atol=1e-12)


@CUDA
def test_cuda_step_never_syncs_with_the_host() -> None:
    model = mlp(torch.float32, "cuda")
    x, y = batch(torch.float32, "cuda")
    opt = MeZO(model, MeZOConfig(lr=1e-3, q=2))
    opt.step(lambda: F.mse_loss(model(x), y))  # warm-up (lazy CUDA init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = opt.step(lambda: F.mse_loss(model(x), y))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.slopes.device.type == "cuda" and torch.isfinite(out.slopes).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_engine_bench_exits_cleanly_when_cuda_is_absent() -> None:
    bench = Path(__file__).resolve().parents[2] / "bench" / "engine.py"
    out = subprocess.run([sys.executable, str(bench), "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "CUDA is not available" in lines[0]
    last = json.loads(lines[-1])
    assert last["bench"] == "engine" and last["ratio"] is None and last["target"] == 1.1
