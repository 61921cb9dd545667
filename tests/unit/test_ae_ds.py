"""ZO-AE-DS: chain-rule merge, query accounting, certification, bitwise resume, data, config."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.algorithms import ae_ds
from workers.algorithms.ae_ds import AEDSConfig
from workers.algorithms.ae_ds_nets import FrontEnd, build, shape_of
from workers.algorithms.base import State
from workers.algorithms.certify import (
    ABSTAIN,
    Certificate,
    certified_accuracy,
    certify,
    certify_dataset,
    lower_confidence_bound,
    max_radius,
    predict,
)
from workers.algorithms.checkpoint import dump_state, load_state
from workers.algorithms.digits import load_digits16, train_mlp
from zoserve.models.defense import ZOAEDSConfig

SHAPE = (1, 8, 8)
N = 14


def _images(n: int = N, seed: int = 0) -> Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def _stand_in(seed: int = 1) -> nn.Module:
    """A small differentiable 'black box': 64 → 12 → 5 with tanh."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 5)).eval()


def _cfg(**kw: object) -> AEDSConfig:
    base = dict(sigma=0.3, latent_dim=4, batch_size=5, q=3, mu=1e-3, epochs=2, ae_epochs=1,
                denoiser_channels=6, denoiser_layers=3)
    return AEDSConfig(**{**base, **kw})  # type: ignore[arg-type]


def _stability_state(cfg: AEDSConfig, f: nn.Module, data: Tensor, seed: int = 0) -> State:
    """A stability-stage state whose denoiser is not the identity (so every layer gets gradient)."""
    state = dict(ae_ds.init_state(cfg, SHAPE, seed))
    gen = torch.Generator().manual_seed(seed + 7)
    for k, v in list(state.items()):
        if k.startswith("den.") and k.endswith("weight") and isinstance(v, Tensor):
            state[k] = v + 0.1 * torch.randn(v.shape, generator=gen)
    return ae_ds.begin_stage(state, "stability", cfg, targets=ae_ds.pseudo_labels(f, data), target_queries=N)


def _exact_latent_grad(mods: FrontEnd, z: Tensor, cfg: AEDSConfig, f: nn.Module, y: Tensor) -> Tensor:
    z = z.detach().requires_grad_(True)
    loss = F.cross_entropy(f(ae_ds.decode(mods, z, cfg, torch.Size(SHAPE))), y, reduction="sum")
    return torch.autograd.grad(loss, z)[0]


@pytest.mark.parametrize("use_ae", [True, False])
def test_chain_rule_merge_with_exact_latent_gradient_is_the_true_gradient(use_ae: bool) -> None:
    cfg, f, data = _cfg(use_autoencoder=use_ae), _stand_in(), _images()
    state = _stability_state(cfg, f, data)
    mods, _, noisy = ae_ds.minibatch(state, data, cfg)
    params = ae_ds.trainable(mods, "stability", cfg)
    y = ae_ds.batch_targets(state, N, cfg)
    with torch.no_grad():
        z = ae_ds.latent(mods, noisy, cfg)
    merged = ae_ds.surrogate_gradients(mods, noisy, _exact_latent_grad(mods, z, cfg, f, y), cfg, params)
    full = F.cross_entropy(f(ae_ds.decode(mods, ae_ds.latent(mods, noisy, cfg), cfg, noisy.shape[1:])), y)
    truth = torch.autograd.grad(full, list(params.values()))
    assert set(params) >= ({"enc.net.5.weight"} if use_ae else {"den.body.0.weight"})
    for name, g, t in zip(params, merged, truth):
        assert float(t.abs().max()) > 0, name
        torch.testing.assert_close(g, t, rtol=1e-4, atol=1e-7, msg=name)


def test_cge_latent_estimate_matches_the_exact_gradient() -> None:
    cfg, f, data = _cfg(estimator="cge"), _stand_in(), _images()
    state = _stability_state(cfg, f, data)
    plan = ae_ds.plan_stability(state, data, cfg)
    y = ae_ds.batch_targets(state, N, cfg)
    with torch.no_grad():
        a, _ = ae_ds.latent_gradients(plan, f(plan.images), y)
    mods, _, noisy = ae_ds.minibatch(state, data, cfg)
    with torch.no_grad():
        z = ae_ds.latent(mods, noisy, cfg)
    exact = _exact_latent_grad(mods, z, cfg, f, y)
    assert float(exact.norm()) > 1e-3
    assert float(F.cosine_similarity(a.flatten(), exact.flatten(), dim=0)) > 0.995


@pytest.mark.parametrize(("estimator", "use_ae", "rows"), [("rge", True, 3 + 1), ("cge", True, 4 + 1),
                                                          ("rge", False, 3 + 1), ("cge", False, 64 + 1)])
def test_query_counts_match_the_estimator_formula(estimator: str, use_ae: bool, rows: int) -> None:
    cfg, f, data = _cfg(estimator=estimator, use_autoencoder=use_ae), _stand_in(), _images()
    state = _stability_state(cfg, f, data)
    calls: list[int] = []

    def box(images: Tensor) -> Tensor:
        calls.append(images.shape[0])
        out: Tensor = f(images)
        return out

    while not ae_ds.stage_done(state):
        before = int(state["queries"])
        state, info = ae_ds.zo_step(state, data, cfg, box)
        assert info.queries == calls[-1] == int(state["queries"]) - before
    batches = [5, 5, 4] * 2  # two epochs of 14 images in batches of 5: one call per step
    assert calls == [b * rows for b in batches]
    assert ae_ds.rows_per_sample(cfg, SHAPE) == rows
    assert int(state["queries"]) == N + 2 * N * rows == ae_ds.stage_queries(cfg, "stability", N, SHAPE)


def test_constant_classifier_certifies_sigma_times_probit_of_p_lower() -> None:
    sigma, n, alpha = 0.5, 200, 0.001
    const = lambda im: F.one_hot(torch.full((im.shape[0],), 3), 10).float()  # noqa: E731
    cert = certify(const, torch.zeros(SHAPE), sigma=sigma, n0=10, n=n, alpha=alpha, num_classes=10,
                   gen=torch.Generator().manual_seed(0), batch=64)
    p_lower = alpha ** (1 / n)  # Clopper–Pearson with n_A = n
    radius = sigma * float(torch.special.ndtri(torch.tensor(p_lower, dtype=torch.float64)))
    assert cert.label == 3
    assert cert.p_lower == pytest.approx(p_lower, rel=1e-9)
    assert cert.radius == pytest.approx(radius, rel=1e-9) == pytest.approx(max_radius(sigma, n, alpha))


def test_coin_flip_classifier_abstains() -> None:
    flip = lambda im: torch.stack([im.flatten(1)[:, 0], -im.flatten(1)[:, 0]], dim=1)  # noqa: E731
    kw: dict[str, Any] = dict(sigma=1.0, alpha=0.001, num_classes=2, batch=100)
    assert certify(flip, torch.zeros(SHAPE), n0=50, n=400, gen=torch.Generator().manual_seed(1), **kw) \
        == Certificate(ABSTAIN, 0.0, pytest.approx(lower_confidence_bound(200, 400, 0.001), abs=0.1))  # type: ignore[arg-type]
    assert predict(flip, torch.zeros(SHAPE), n=400, gen=torch.Generator().manual_seed(2), **kw) == ABSTAIN
    assert predict(flip, torch.full(SHAPE, 3.0), n=400, gen=torch.Generator().manual_seed(2), **kw) == 0


def test_clopper_pearson_and_certified_accuracy_counting() -> None:
    assert lower_confidence_bound(0, 10, 0.05) == 0.0
    assert lower_confidence_bound(50, 100, 0.025) == pytest.approx(0.3983, abs=1e-4)  # exact binomial CI
    certs = [Certificate(1, 0.5, 0.9), Certificate(2, 0.2, 0.7), Certificate(ABSTAIN, 0.0, 0.3), Certificate(0, 1.0, 0.99)]
    assert certified_accuracy(certs, [1, 2, 0, 5], [0.0, 0.2, 0.5]) == (0.5, 0.25, 0.0)  # strict '>'


def test_certify_dataset_counts_queries_and_is_reproducible() -> None:
    f, xs = _stand_in(), _images(4)
    ys = f(xs).argmax(1)
    kw: dict[str, Any] = dict(sigma=0.1, n0=20, n=60, alpha=0.01, num_classes=5, radii=(0.0, 0.1), seed=3, batch=25)
    first, again = certify_dataset(f, xs, ys, **kw), certify_dataset(f, xs, ys, **kw)
    assert first == again and first.queries == 4 * 80


@pytest.mark.parametrize("stage", ["autoencoder", "denoiser", "stability", "finetune"])
def test_stage_resumes_bitwise_from_a_checkpoint(stage: str) -> None:
    cfg, f, data = _cfg(estimator="rge", denoiser_epochs=1, finetune_epochs=1), _stand_in(), _images()
    state = ae_ds.init_state(cfg, SHAPE, 5)
    if stage != "autoencoder":
        state = ae_ds.begin_stage(state, stage, cfg, targets=ae_ds.pseudo_labels(f, data))  # type: ignore[arg-type]

    def step(s: State) -> State:
        fn = ae_ds.mse_step if stage in ("autoencoder", "denoiser") else (lambda s, d, c: ae_ds.zo_step(s, d, c, f))
        return fn(s, data, cfg)[0]

    straight = state
    for _ in range(3):
        straight = step(straight)
    resumed: State = load_state(dump_state(step(state)))
    for _ in range(2):
        resumed = step(resumed)
    assert resumed.keys() == straight.keys()
    for k, v in straight.items():
        assert torch.equal(v, resumed[k]) if isinstance(v, Tensor) else v == resumed[k], k  # type: ignore[arg-type]
    trained = ae_ds.trainable(build(shape_of(state), state), stage, cfg)
    assert int(straight["step"]) == 3
    assert all(not torch.equal(straight[k], state[k]) for k in trained)  # type: ignore[arg-type]


def test_steps_are_pure_and_the_decoder_stays_frozen() -> None:
    cfg, f, data = _cfg(), _stand_in(), _images()
    state = _stability_state(cfg, f, data)
    snapshot = {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}
    new, _ = ae_ds.zo_step(state, data, cfg, f)
    for k, v in snapshot.items():
        assert torch.equal(v, state[k]) if isinstance(v, Tensor) else v == state[k], k  # type: ignore[arg-type]
    assert all(torch.equal(v, new[k]) for k, v in state.items() if k.startswith("dec."))  # type: ignore[arg-type]
    assert not torch.equal(new["enc.net.5.weight"], state["enc.net.5.weight"])  # type: ignore[arg-type]
    assert int(new["queries"]) - int(state["queries"]) == 5 * ae_ds.rows_per_sample(cfg, SHAPE)


def test_fo_step_uses_the_same_loss_and_counts_forward_rows() -> None:
    cfg, f, data = _cfg(), _stand_in(), _images()
    state = _stability_state(cfg, f, data)
    new, info = ae_ds.fo_step(state, data, cfg, f)
    assert info.queries == 5 and info.grad_norm > 0
    assert ae_ds.stage_queries(cfg, "stability", N, SHAPE, white_box=True) == N + 2 * N


def test_digits_split_and_black_box_are_deterministic() -> None:
    a, b = load_digits16(seed=0), load_digits16(seed=0)
    assert a.x_train.shape == (1203, 1, 16, 16) and a.x_test.shape == (594, 1, 16, 16)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert torch.bincount(a.y_test).min() >= 17  # stratified
    m1 = train_mlp(a.x_train[:200], a.y_train[:200], epochs=2)
    m2 = train_mlp(a.x_train[:200], a.y_train[:200], epochs=2)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_wire_config_builds_the_algorithm_config() -> None:
    wire = ZOAEDSConfig(sigma=0.5, estimator="rge", q=8)
    cfg = AEDSConfig(**wire.hparams())  # type: ignore[arg-type]
    assert {f.name for f in dataclasses.fields(AEDSConfig)} == set(wire.hparams())
    assert dataclasses.asdict(AEDSConfig()) == {**ZOAEDSConfig().hparams()}
    assert (cfg.sigma, cfg.q, ZOAEDSConfig.algorithm) == (0.5, 8, "zo-ae-ds")
    with pytest.raises(ValueError):
        ZOAEDSConfig(latent_dim=0)
    with pytest.raises(ValueError):
        ZOAEDSConfig(unknown=1)  # type: ignore[call-arg]
    assert math.isclose(max_radius(0.25, 10_000, 0.001), 0.80, abs_tol=0.005)  # brief §4: R_max = 0.80


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@CUDA
@pytest.mark.parametrize("stage", ["autoencoder", "denoiser", "stability"])
def test_a_gpu_worker_trains_and_certifies_on_the_device(stage: str) -> None:
    """State, data, noise, directions and the black box's scores stay on cuda; the minibatches are the
    CPU's (drawn on the host), the checkpoint and the front end's bytes come back to the host."""
    from workers.defense_plan import frontend_bytes
    from workers.device import place_state

    cuda = torch.device("cuda")
    cfg, f, data = _cfg(estimator="rge", denoiser_epochs=1), _stand_in().to(cuda), _images().to(cuda)
    state = place_state(ae_ds.init_state(cfg, SHAPE, 5), None, cuda)
    if stage != "autoencoder":
        state = ae_ds.begin_stage(state, stage, cfg, targets=ae_ds.pseudo_labels(f, data))  # type: ignore[arg-type]
    step = ae_ds.mse_step if stage in ("autoencoder", "denoiser") else (lambda s, d, c: ae_ds.zo_step(s, d, c, f))
    for _ in range(2):
        state, info = step(state, data, cfg)
        assert math.isfinite(info.loss)
    assert all(v.device.type == "cuda" for v in state.values() if isinstance(v, Tensor))
    assert torch.equal(ae_ds._indices(state, N, cfg), ae_ds._indices(load_state(dump_state(state)), N, cfg))
    cert = certify(ae_ds.defended(state, cfg, f), data[0], sigma=0.1, n0=20, n=60, alpha=0.01, num_classes=5,
                   gen=torch.Generator(device=cuda).manual_seed(0), batch=25)
    assert cert.label == ABSTAIN or 0 <= cert.label < 5
    assert frontend_bytes(state, cfg)  # safetensors of host copies


def test_noise_on_a_cpu_worker_is_the_documented_cpu_draw() -> None:
    """Drawing on ``data.device`` keeps a CPU worker's numbers: x + σ·randn from step_generator(seed, step, stream)."""
    from workers.algorithms.base import step_generator

    cfg, f, data = _cfg(estimator="rge"), _stand_in(), _images()
    state = _stability_state(cfg, f, data, seed=3)
    _, x, noisy = ae_ds.minibatch(state, data, cfg)
    gen = step_generator(3, int(state["step"]), ae_ds._stream(state, ae_ds._NOISE))
    assert torch.equal(x, data[ae_ds._indices(state, N, cfg)])
    assert torch.equal(noisy, x + torch.randn(x.shape, generator=gen) * cfg.sigma)
