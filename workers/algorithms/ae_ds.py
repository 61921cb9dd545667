"""ZO-AE-DS: denoised smoothing trained through a black box by zeroth-order queries.

Zhang et al., "How to Robustify Black-Box ML Models? A Zeroth-Order Optimization Perspective",
ICLR 2022 (brief zo-ae-ds.md). The defended model is x → D_θ → Enc → z → Dec → f, and the
smoothed classifier g(x) = argmax_c P[f(Dec(Enc(D_θ(x+δ)))) = c], δ ~ N(0, σ²I).

Stages (each a sequence of pure steps over a flat state; brief §4):

1. ``autoencoder`` — white-box AE pre-training, min E‖Dec(Enc(x)) − x‖² on clean x.
2. ``denoiser`` (optional; Table 4's "pre-train + fine-tune" scheme) — min E‖D_θ(x+δ) − x‖².
3. ``stability`` — ℓ_Stab = CE(f(Dec(Enc(D_θ(x+δ)))), ŷ) with pseudo-labels ŷ = argmax f(x)
   (the code's ``original_output``; paper eq. 2 with only the stability term). Trains θ and
   the encoder; the decoder is frozen and sits inside the queried function f' = f∘Dec (eq. 6).
   ∂ℓ/∂z is estimated by RGE or CGE in the d_z-dimensional latent (eqs. 3–4) and merged by
   the chain rule (eqs. 7–8): backward on the surrogate (1/B) Σ_b ⟨z_b, stopgrad(a_b)⟩.
4. ``finetune`` (optional) — the stability stage again at ``finetune_lr`` (the paper's
   "Adam 200 epochs, then a second run" schedule, and Table 4's fine-tuning).

Baselines in the same code: ZO-DS (``use_autoencoder=False``: ZO in pixel space, z = D_θ(x+δ))
and FO-DS / FO-AE-DS (:func:`fo_step`, white box, benchmarks only).

Queries. Pseudo-labels are one batched call over the training set at the start of the
stability stage, cached (pitfall 9; the code re-queries them every step). A ZO step sends all
B·m points of its minibatch in ONE call, m = q + 1 (RGE, forward) or d + 1 (CGE, forward,
the paper's form; deliberate: the code's CGE is central, 2d). So a stage costs exactly
:func:`stage_queries` = N·[ŷ] + epochs·N·m.

Randomness comes only from ``step_generator(seed, ·, stream)``: the epoch's permutation
(stream 1), the step's noise δ (stream 2) and RGE directions (stream 3), each offset by 8 per
stage; initial weights use stream 0. A stage resumed from ``dump_state`` replays bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.algorithms.ae_ds_nets import FrontEnd, Shape, build, init_tensors, shape_entries, shape_of
from workers.algorithms.base import State, StateValue, step_generator
from workers.algorithms.estimators import CGEConfig, Estimator, Plan, RGEConfig, cge, estimate, rge

BlackBox = Callable[[Tensor], Tensor]
"""``f_batch(images (n, C, H, W)) -> logits (n, K)``; log-probabilities work too."""
Stage = Literal["autoencoder", "denoiser", "stability", "finetune"]
STAGES: tuple[Stage, ...] = ("autoencoder", "denoiser", "stability", "finetune")
_PERM, _NOISE, _DIRS = 1, 2, 3
_ADAM = "adam."
_BETAS, _EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class AEDSConfig:
    """Hyperparameters (defaults: the paper's μ, σ = 0.25, Adam 1e-3; brief §6's small AE)."""

    sigma: float = 0.25
    latent_dim: int = 16
    use_autoencoder: bool = True
    estimator: Literal["rge", "cge"] = "cge"
    directions: Literal["sphere", "gaussian"] = "sphere"
    q: int = 16
    mu: float = 0.005
    batch_size: int = 64
    lr: float = 1e-3
    epochs: int = 15
    ae_epochs: int = 40
    ae_lr: float = 1e-3
    denoiser_epochs: int = 0
    denoiser_lr: float = 1e-3
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4
    weight_decay: float = 0.0
    targets: Literal["pseudo", "labels"] = "pseudo"
    denoiser_layers: int = 4
    denoiser_channels: int = 16
    certify_n0: int = 100
    certify_n: int = 10_000
    certify_alpha: float = 0.001
    certify_batch: int = 1000

    def estimator_fn(self) -> Estimator:
        """RGE (sphere directions scaled by d, as the paper) or CGE, forward differences."""
        if self.estimator == "rge":
            return rge(RGEConfig(directions=self.directions, q=self.q, mu=self.mu))
        return cge(CGEConfig(mu=self.mu))

    def zo_dim(self, shape: Shape) -> int:
        """d of the ZO-perturbed variable: d_z with the AE, C·H·W without (ZO-DS)."""
        return self.latent_dim if self.use_autoencoder else shape.channels * shape.height * shape.width


class TrainInfo(NamedTuple):
    """One step's diagnostics: mean loss at the base point, queries spent, gradient norm."""

    loss: float
    queries: int
    grad_norm: float


class StabilityPlan(NamedTuple):
    """The ask half of a ZO step: all images to send to the black box in one call."""

    images: Tensor
    plans: tuple[Plan, ...]
    rows_per_sample: int


def init_state(cfg: AEDSConfig, image_shape: tuple[int, int, int], seed: int) -> State:
    """Fresh front end (identity denoiser, random AE), positioned at the start of stage 1."""
    c, h, w = image_shape
    shape = Shape(c, h, w, cfg.latent_dim, cfg.denoiser_layers, cfg.denoiser_channels)
    tensors = init_tensors(shape, step_generator(seed, 0, 0))
    base: dict[str, StateValue] = {**tensors, **shape_entries(shape), "seed": int(seed)}
    return begin_stage(base, "autoencoder", cfg)


def begin_stage(state: State, stage: Stage, cfg: AEDSConfig, *, targets: Tensor | None = None,
                target_queries: int = 0) -> State:
    """The state at step 0 of ``stage``: same weights, fresh counters and Adam moments.

    ``targets`` (ŷ per training image) are required by the first stability stage and kept
    afterwards; ``target_queries`` (N when they are pseudo-labels) opens the stage's count.
    """
    epochs, lr = _stage_schedule(cfg, stage)
    new = {k: v for k, v in state.items() if not k.startswith(_ADAM) and k != "targets"}
    old_targets = state.get("targets")
    if stage in ("stability", "finetune"):
        chosen = targets if targets is not None else old_targets
        if not isinstance(chosen, Tensor):
            raise ValueError(f"stage {stage!r} needs targets (pseudo-labels or labels)")
        new["targets"] = chosen.detach().to(torch.int64).clone()
    elif isinstance(old_targets, Tensor):
        new["targets"] = old_targets
    for name in trainable(build(shape_of(state), state), stage, cfg):
        zeros = torch.zeros_like(new[name])  # type: ignore[arg-type]
        new[_ADAM + "m." + name], new[_ADAM + "v." + name] = zeros, zeros.clone()
    new.update(stage=stage, epoch=0, batch=0, step=0, epochs=epochs, lr=lr, queries=int(target_queries))
    return new


def stage_done(state: State) -> bool:
    """Whether the stage has run all its epochs."""
    return int(state["epoch"]) >= int(state["epochs"])


def stage_queries(cfg: AEDSConfig, stage: Stage, n_train: int, image_shape: tuple[int, int, int],
                  *, white_box: bool = False) -> int:
    """Exact black-box queries of a whole stage: N (pseudo-labels) + epochs·N·m (module doc)."""
    epochs, _ = _stage_schedule(cfg, stage)
    if stage in ("autoencoder", "denoiser"):
        return 0
    labels = n_train if stage == "stability" and cfg.targets == "pseudo" else 0
    return labels + epochs * n_train * rows_per_sample(cfg, image_shape, white_box=white_box)


def rows_per_sample(cfg: AEDSConfig, image_shape: tuple[int, int, int], *, white_box: bool = False) -> int:
    """Black-box rows per training sample per step: the estimator's count, or 1 (white box)."""
    shape = Shape(*image_shape, cfg.latent_dim)
    return 1 if white_box else cfg.estimator_fn().queries(cfg.zo_dim(shape))


def pseudo_labels(f_batch: BlackBox, images: Tensor) -> Tensor:
    """ŷ = argmax f(x) on clean images, one batched call (paper's ``original_output``)."""
    with torch.no_grad():
        return f_batch(images).argmax(dim=1)


def mse_step(state: State, data: Tensor, cfg: AEDSConfig) -> tuple[State, TrainInfo]:
    """One white-box step of the ``autoencoder`` (clean reconstruction) or ``denoiser`` stage."""
    mods, x, noisy = minibatch(state, data, cfg)
    params = trainable(mods, str(state["stage"]), cfg)
    if state["stage"] == "autoencoder":
        loss = F.mse_loss(mods.decoder(mods.encoder(x)), x)
    elif state["stage"] == "denoiser":
        loss = F.mse_loss(mods.denoiser(noisy), x)
    else:
        raise ValueError(f"mse_step cannot run stage {state['stage']!r}")
    grads = torch.autograd.grad(loss, list(params.values()))
    return _update(state, mods, params, grads, float(loss.detach()), 0, data.shape[0], cfg)


def plan_stability(state: State, data: Tensor, cfg: AEDSConfig) -> StabilityPlan:
    """Ask: the B·m decoded query images of this step (deterministic in ``state``).

    Each sample b gets its own estimator plan around z_b (its own RGE directions, eq. 3; the
    unit vectors e_i for CGE, eq. 4); the decoder is part of the black box (eq. 6).
    """
    mods, _, noisy = minibatch(state, data, cfg)
    est = cfg.estimator_fn()
    gen = step_generator(int(state["seed"]), int(state["step"]), _stream(state, _DIRS), device=data.device)
    with torch.no_grad():
        z = latent(mods, noisy, cfg)
        planned = [est.plan(z_b, gen) for z_b in z]
        points = torch.cat([p for p, _ in planned])
        images = decode(mods, points, cfg, noisy.shape[1:])
    return StabilityPlan(images, tuple(a for _, a in planned), points.shape[0] // z.shape[0])


def tell_stability(state: State, data: Tensor, cfg: AEDSConfig, plan: StabilityPlan,
                   logits: Tensor) -> tuple[State, TrainInfo]:
    """Tell: CE per query row → a_b = ∇̂_z ℓ per sample → chain rule (eq. 8) → Adam step."""
    if logits.shape[0] != plan.images.shape[0]:
        raise ValueError(f"expected {plan.images.shape[0]} rows of logits, got {logits.shape[0]}")
    mods, _, noisy = minibatch(state, data, cfg)
    targets = batch_targets(state, data.shape[0], cfg)
    a, loss = latent_gradients(plan, logits, targets)
    params = trainable(mods, str(state["stage"]), cfg)
    grads = surrogate_gradients(mods, noisy, a.to(noisy.dtype), cfg, params)
    return _update(state, mods, params, grads, loss, logits.shape[0], data.shape[0], cfg)


def latent_gradients(plan: StabilityPlan, logits: Tensor, targets: Tensor) -> tuple[Tensor, float]:
    """a_b = ∇̂_z CE(f(Dec(z_b)), ŷ_b) per sample (B, d) from the black box's logits, and the
    mean CE at the base points (forward differences: the unperturbed rows)."""
    m = plan.rows_per_sample
    losses = cross_entropy(logits, targets.repeat_interleave(m))
    found = [estimate(losses[b * m:(b + 1) * m], p) for b, p in enumerate(plan.plans)]
    return torch.stack([g for g, _ in found]), sum(fx for _, fx in found) / len(found)


def zo_step(state: State, data: Tensor, cfg: AEDSConfig, f_batch: BlackBox) -> tuple[State, TrainInfo]:
    """One ZO stability step: plan, ONE batched black-box call, tell."""
    plan = plan_stability(state, data, cfg)
    with torch.no_grad():
        logits = f_batch(plan.images)
    return tell_stability(state, data, cfg, plan, logits)


def fo_step(state: State, data: Tensor, cfg: AEDSConfig, model: BlackBox) -> tuple[State, TrainInfo]:
    """White-box baseline (FO-DS, or FO-AE-DS with the AE): autograd through a torch ``model``.

    Same loss, targets, noise and batches as :func:`zo_step`; B forward queries per step.
    """
    mods, _, noisy = minibatch(state, data, cfg)
    params = trainable(mods, str(state["stage"]), cfg)
    logits = model(decode(mods, latent(mods, noisy, cfg), cfg, noisy.shape[1:]))
    loss = cross_entropy(logits, batch_targets(state, data.shape[0], cfg)).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    return _update(state, mods, params, grads, float(loss.detach()), logits.shape[0], data.shape[0], cfg)


def surrogate_gradients(mods: FrontEnd, noisy: Tensor, a: Tensor, cfg: AEDSConfig,
                        params: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """∇ of (1/B) Σ_b ⟨z_b, a_b⟩ w.r.t. ``params``: (1/B) Σ_b J_bᵀ a_b (eqs. 7–8, App. A)."""
    z = latent(mods, noisy, cfg)
    return torch.autograd.grad((z * a.detach()).sum(dim=1).mean(), list(params.values()))


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-row CE −log softmax(logits)_ŷ (unchanged when ``logits`` are log-probabilities)."""
    return F.cross_entropy(logits.to(torch.float32), target, reduction="none")


def defended(state: State, cfg: AEDSConfig, f_batch: BlackBox) -> BlackBox:
    """The base classifier of the smoothed model: x ↦ f(Dec(Enc(D_θ(x)))) (or f(D_θ(x))), eval mode."""
    mods = build(shape_of(state), state)
    for module in mods:
        module.eval()

    def base(images: Tensor) -> Tensor:
        with torch.no_grad():
            return f_batch(decode(mods, latent(mods, images, cfg), cfg, images.shape[1:]))

    return base


def _stage_schedule(cfg: AEDSConfig, stage: str) -> tuple[int, float]:
    table = {"autoencoder": (cfg.ae_epochs, cfg.ae_lr), "denoiser": (cfg.denoiser_epochs, cfg.denoiser_lr),
             "stability": (cfg.epochs, cfg.lr), "finetune": (cfg.finetune_epochs, cfg.finetune_lr)}
    if stage not in table:
        raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
    return table[stage]


def trainable(mods: FrontEnd, stage: str, cfg: AEDSConfig) -> dict[str, Tensor]:
    """Parameters a stage trains, by state key (the decoder is frozen in the DS stages)."""
    chosen = {"autoencoder": ("enc.", "dec."), "denoiser": ("den.",),
              "stability": ("den.", "enc.") if cfg.use_autoencoder else ("den.",)}
    prefixes = chosen.get(stage, chosen["stability"])
    named = {"den.": mods.denoiser, "enc.": mods.encoder, "dec.": mods.decoder}
    return {p + k: v for p in prefixes for k, v in named[p].named_parameters()}


def batch_targets(state: State, n: int, cfg: AEDSConfig) -> Tensor:
    """The stability targets ŷ of this step's minibatch."""
    targets = state["targets"]
    if not isinstance(targets, Tensor):
        raise ValueError("the state has no targets")
    return targets[_indices(state, n, cfg, targets.device)]


def _indices(state: State, n: int, cfg: AEDSConfig, device: torch.device | str = "cpu") -> Tensor:
    """This step's minibatch: a slice of the epoch's permutation (the last batch may be short), drawn
    on the CPU whatever the data's device, so every device type trains on the same batches; returned on
    ``device``."""
    gen = step_generator(int(state["seed"]), int(state["epoch"]), _stream(state, _PERM))
    perm = torch.randperm(n, generator=gen)
    start = int(state["batch"]) * cfg.batch_size
    return perm[start:start + cfg.batch_size].to(device)


def _stream(state: State, base: int) -> int:
    """A random stream per (purpose, stage), so stages never reuse each other's draws."""
    return base + 8 * STAGES.index(str(state["stage"]))


def minibatch(state: State, data: Tensor, cfg: AEDSConfig) -> tuple[FrontEnd, Tensor, Tensor]:
    """This step's train-mode modules from the state, the clean minibatch and its noisy copy x + δ."""
    if stage_done(state):
        raise ValueError(f"stage {state['stage']!r} is finished")
    targets = state.get("targets")
    if isinstance(targets, Tensor) and targets.shape[0] != data.shape[0]:
        raise ValueError(f"the stage's targets cover {targets.shape[0]} images, data has {data.shape[0]}")
    x = data[_indices(state, data.shape[0], cfg, data.device)]
    gen = step_generator(int(state["seed"]), int(state["step"]), _stream(state, _NOISE), device=x.device)
    delta = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device) * cfg.sigma
    mods = build(shape_of(state), state)
    mods.decoder.eval()  # frozen (pitfall 10); the denoiser's BN runs in train mode (pitfall 12)
    return mods, x, x + delta


def latent(mods: FrontEnd, noisy: Tensor, cfg: AEDSConfig) -> Tensor:
    """z = Enc(D_θ(x+δ)) (B, d_z), or the flattened denoised image for ZO-DS (B, C·H·W)."""
    y: Tensor = mods.denoiser(noisy)
    z: Tensor = mods.encoder(y) if cfg.use_autoencoder else y.flatten(1)
    return z


def decode(mods: FrontEnd, z: Tensor, cfg: AEDSConfig, image: torch.Size) -> Tensor:
    """The images the black box sees for latents z: Dec(z), or z reshaped to ``image`` (ZO-DS)."""
    images: Tensor = mods.decoder(z) if cfg.use_autoencoder else z.reshape(-1, *image)
    return images


def _update(state: State, mods: FrontEnd, params: dict[str, Tensor], grads: tuple[Tensor, ...],
            loss: float, queries: int, n: int, cfg: AEDSConfig) -> tuple[State, TrainInfo]:
    """Adam (torch semantics, coupled L2 decay) on ``params``, BN buffers from this forward,
    counters advanced to the next minibatch."""
    new: dict[str, StateValue] = dict(state)
    new.update({k: v.detach().clone() for k, v in _named_tensors(mods).items() if k not in params})
    t = int(state["step"]) + 1
    lr = float(state["lr"])
    b1, b2 = _BETAS
    for (name, p), g in zip(params.items(), grads):
        g = g + cfg.weight_decay * p.detach() if cfg.weight_decay else g
        m = state[_ADAM + "m." + name] * b1 + g * (1 - b1)  # type: ignore[operator]
        v = state[_ADAM + "v." + name] * b2 + g * g * (1 - b2)  # type: ignore[operator]
        denom = v.sqrt() / math.sqrt(1 - b2**t) + _EPS
        new[name] = p.detach() - (lr / (1 - b1**t)) * m / denom
        new[_ADAM + "m." + name], new[_ADAM + "v." + name] = m, v
    batches = -(-n // cfg.batch_size)
    last = int(state["batch"]) + 1 >= batches
    new.update(step=t, batch=0 if last else int(state["batch"]) + 1,
               epoch=int(state["epoch"]) + int(last), queries=int(state["queries"]) + queries)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    return new, TrainInfo(loss, queries, norm)


def _named_tensors(mods: FrontEnd) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for prefix, module in zip(("den.", "enc.", "dec."), mods):
        out.update({prefix + k: v for k, v in module.state_dict(keep_vars=True).items()})
    return out
