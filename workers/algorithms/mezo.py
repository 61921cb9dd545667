"""MeZO: in-place, seed-trick SPSA over a local torch module's parameters.

Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes", Algorithm 1
(brief zo-engine.md §3.1, §5.1–5.3). One step with ``q`` directions j = 0..q−1::

    for each j:  θ += εz_j;  f₊ = L(θ);  θ −= 2εz_j;  f₋ = L(θ);  θ += εz_j    (restore)
                 s_j = (f₊ − f₋) / (2ε)
    θ ← θ − η·((1/q) Σ_j s_j z_j + λ·θ)        (λ only on tensors that decay, §3.1)

Memory stays at inference level: z_j never exists as a whole. Each tensor's slice of it (in
chunks of at most ``chunk`` elements) is regenerated from a counter-based generator
``step_generator(seed, step, stream(j, k, c))`` for direction j, tensor k and chunk c, created on
the tensor's own device, so the largest temporary is one chunk and no pass needs the host.
Every modification is an in-place ``add_``/``addcmul_``.

Host syncs: none per query. Losses stay device tensors, s_j is computed on the device and the
update takes it as a 0-dim tensor (``addcmul_``), so a whole step can run under
``torch.cuda.set_sync_debug_mode("error")``. Reading the returned losses is the caller's sync.

Precision (§5.3): the ``+ε, −2ε, +ε`` cycle returns θ only up to rounding — a few ulps of
``|θ| + 2ε|z|`` per element in fp32/fp64 (documented by the tests), but in fp16/bf16 the drift
is as large as the intended update. Half-precision tensors are therefore refused unless
``allow_half``: keep fp32 master weights for the trainable tensors (and run the forward under
``torch.autocast`` if speed needs it).

Deliberate deviations from the paper's code:

* in-place ``add_`` with ``alpha`` instead of ``p.data = p.data + ...`` (MeZO allocates about
  three temporaries per tensor, §9.4);
* ``fused=True`` merges the restore of the last direction into the update,
  θ ← (1−ηλ)·θ₋ + ((1−ηλ)ε − ηs/q)·z (§5.2): three regenerate-and-modify passes per direction
  instead of four. ``fused=False`` is the paper's order;
* q > 1 stays memory-efficient (the paper's medium-models path stores a dense grad, §3.1);
* per-tensor, per-chunk counter-based generators instead of the global RNG (§5.1, §9.6).

Why this is not an :class:`~workers.algorithms.base.Algorithm`: ``ask`` would have to return
the perturbed points as an ``(n, d)`` tensor — 2q dense copies of every parameter, the very
memory MeZO exists to avoid — and the loss needs the module and its data in the worker's
memory. A :class:`MeZO` stepper therefore evaluates a loss closure itself. Its resumable state
is tiny: ``(seed, step)`` plus the weights, or θ₀ plus the replay log of ``(step, s, lr)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from workers.algorithms.base import step_generator

Directions = Literal["gaussian", "rademacher"]
LossFn = Callable[[], Tensor]
NO_DECAY = ("bias", "layer_norm", "layernorm", "ln")  # name parts excluded from λ (MeZO, ZO2)
_HALF = (torch.float16, torch.bfloat16)
_TENSORS = 1 << 16  # stream layout: (j·2¹⁶ + k)·2²⁰ + c — unique for k < 2¹⁶ tensors, c < 2²⁰ chunks
_CHUNKS = 1 << 20


@dataclass(frozen=True)
class MeZOConfig:
    """Hyperparameters of one MeZO step (defaults: MeZO's full-parameter grid, §4).

    Attributes:
        lr: η; MeZO uses 1e-6 … 1e-7 for full fine-tuning of large models.
        eps: ε, the perturbation radius (MeZO 1e-3).
        q: directions per step (2q forwards).
        weight_decay: λ, applied to tensors whose name has none of :data:`NO_DECAY`.
        directions: law of z: N(0, I) or ±1 (Rademacher, cheaper to draw, §5.2).
        fused: merge the last restore pass into the update (see module docstring).
        chunk: largest number of elements of z drawn at once (bounds the temporary); 0 = auto,
            ``max(2¹⁶, ⌈d/64⌉)`` for d trainable elements, so the temporary is at most 1/64 of the
            weights yet large enough to keep GPU kernels long. z depends on the chunk layout:
            replay with the same value.
        allow_half: permit fp16/bf16 tensors despite the in-place drift (§5.3).
    """

    lr: float = 1e-6
    eps: float = 1e-3
    q: int = 1
    weight_decay: float = 0.0
    directions: Directions = "gaussian"
    fused: bool = True
    chunk: int = 0
    allow_half: bool = False

    def __post_init__(self) -> None:
        if not (self.lr >= 0 and self.eps > 0 and self.q >= 1 and self.weight_decay >= 0):
            raise ValueError("need lr >= 0, eps > 0, q >= 1, weight_decay >= 0")
        if self.directions not in ("gaussian", "rademacher"):
            raise ValueError(f"directions must be 'gaussian' or 'rademacher', got {self.directions!r}")
        if self.chunk < 0:
            raise ValueError("chunk must be >= 0 (0 = auto)")


@dataclass(frozen=True)
class StepOut:
    """One step's device tensors (read them when you want a host sync).

    Attributes:
        losses: ``(q, 2)`` values ``[f₊, f₋]`` per direction.
        slopes: ``(q,)`` projected gradients s_j = (f₊ − f₋) / (2ε).
    """

    losses: Tensor
    slopes: Tensor


def trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The module's parameters that require grad, in registration order (the order z follows)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def decays(names: Sequence[str]) -> list[bool]:
    """Whether weight decay applies to each named tensor: not to biases or norms (§3.1).

    MeZO excludes names containing "bias", "layer_norm" or "layernorm"; ZO2 also "ln". We match
    "ln…" and "norm…" as dotted name parts (GPT-2's ``ln_f``, torch's ``norm1``) rather than any
    substring — deliberate, so that e.g. ``kiln.weight`` still decays.
    """
    out = []
    for name in names:
        low = name.lower()
        parts = low.split(".")
        excluded = any(s in low for s in NO_DECAY[:3]) or any(p.startswith(("ln", "norm")) for p in parts)
        out.append(not excluded)
    return out


def check_precision(params: Sequence[Tensor], allow_half: bool = False) -> None:
    """Refuse half-precision tensors: the in-place cycle's rounding swamps the update (§5.3)."""
    for p in params:
        if not p.is_floating_point():
            raise ValueError(f"MeZO perturbs floating tensors only, got {p.dtype}")
        if p.dtype in _HALF and not allow_half:
            raise ValueError(f"{p.dtype} weights drift under in-place ±εz (brief §5.3); keep fp32 master "
                             "weights for the trainable tensors, or pass allow_half=True")


def chunk_size(params: Sequence[Tensor], cfg: MeZOConfig) -> int:
    """``cfg.chunk``, or the automatic size for these tensors when it is 0."""
    return cfg.chunk or max(1 << 16, -(-sum(p.numel() for p in params) // 64))


def _views(p: Tensor, chunk: int) -> Iterator[Tensor]:
    """Flat in-place views of ``p`` of at most ``chunk`` elements."""
    flat = p.view(-1)  # parameters are contiguous; .view raises (never copies) if not
    for start in range(0, flat.numel(), chunk):
        yield flat[start:start + chunk]


def direction(view: Tensor, seed: int, step: int, j: int, k: int, c: int, kind: Directions,
              out: Tensor | None = None) -> Tensor:
    """z_j's chunk c of tensor k, drawn on ``view``'s device in its dtype from its own generator.

    ``out`` (a flat buffer with at least ``view.numel()`` elements, same device and dtype) is
    filled instead of allocating: the passes reuse one scratch buffer per step, which spares an
    allocation, and on CPU the page faults of a fresh block, per chunk.
    """
    if not (k < _TENSORS and c < _CHUNKS):
        raise ValueError("too many tensors or chunks for the stream layout")
    gen = step_generator(seed, step, (j * _TENSORS + k) * _CHUNKS + c, device=view.device)
    z = (torch.empty(view.numel(), device=view.device, dtype=view.dtype) if out is None
         else out[:view.numel()]).view(view.shape)
    if kind == "rademacher":
        return z.random_(0, 2, generator=gen).mul_(2).sub_(1)
    return z.normal_(generator=gen)


Scratch = dict[tuple[torch.device, torch.dtype], Tensor]


def _buffer(view: Tensor, chunk: int, scratch: Scratch | None) -> Tensor | None:
    """The step's scratch buffer for ``view``'s device and dtype (allocated on first use)."""
    if scratch is None:
        return None
    key = (view.device, view.dtype)
    if key not in scratch:
        scratch[key] = torch.empty(chunk, device=view.device, dtype=view.dtype)
    return scratch[key]


@torch.no_grad()
def perturb_(params: Sequence[Tensor], seed: int, step: int, j: int, scale: float, cfg: MeZOConfig,
             scratch: Scratch | None = None) -> None:
    """θ += scale·z_j in place, tensor by tensor, chunk by chunk (one chunk-sized temporary).

    ``scratch`` (a dict, may start empty) keeps that temporary between calls.
    """
    chunk = chunk_size(params, cfg)
    scratch = {} if scratch is None else scratch
    for k, p in enumerate(params):
        for c, view in enumerate(_views(p, chunk)):
            z = direction(view, seed, step, j, k, c, cfg.directions, _buffer(view, chunk, scratch))
            view.add_(z, alpha=scale)


@torch.no_grad()
def update_(params: Sequence[Tensor], decay: Sequence[bool], seed: int, step: int, slopes: Tensor,
            cfg: MeZOConfig, restore: float = 0.0, lr: float | None = None, scratch: Scratch | None = None) -> None:
    """θ ← (1−ηλ)·(θ + restore·z_{q−1}) − (η/q) Σ_j s_j z_j in place (MeZO Alg. 1 line 11).

    ``restore = ε`` fuses the last direction's restore pass into the update (θ is then the
    minus point θ − εz_{q−1}); ``restore = 0`` expects restored weights. ``slopes`` may live on
    any device; it is never read on the host.
    """
    eta = cfg.lr if lr is None else lr
    q, chunk = slopes.numel(), chunk_size(params, cfg)
    scratch = {} if scratch is None else scratch
    for k, p in enumerate(params):
        shrink = 1.0 - eta * cfg.weight_decay if decay[k] else 1.0
        coef = slopes.to(device=p.device, dtype=p.dtype) * (-eta / q)  # (q,) device tensor, no sync
        if restore:
            coef[q - 1] += shrink * restore
        if shrink != 1.0:
            p.mul_(shrink)
        for c, view in enumerate(_views(p, chunk)):
            for j in range(q):
                z = direction(view, seed, step, j, k, c, cfg.directions, _buffer(view, chunk, scratch))
                view.addcmul_(z, coef[j])


def spsa_step(params: Sequence[Tensor], decay: Sequence[bool], loss_fn: LossFn, seed: int, step: int,
              cfg: MeZOConfig) -> StepOut:
    """One in-place MeZO step on ``params`` (see the module docstring); returns device tensors.

    ``loss_fn()`` evaluates the objective at the current (perturbed) parameters with the SAME
    minibatch for every call of the step (common random numbers); call it in eval mode.
    """
    check_precision(params, cfg.allow_half)
    rows, scratch = [], {}  # type: ignore[var-annotated]
    with torch.no_grad():
        for j in range(cfg.q):
            perturb_(params, seed, step, j, cfg.eps, cfg, scratch)
            f_plus = loss_fn().detach().reshape(())
            perturb_(params, seed, step, j, -2.0 * cfg.eps, cfg, scratch)
            f_minus = loss_fn().detach().reshape(())
            if not (cfg.fused and j == cfg.q - 1):
                perturb_(params, seed, step, j, cfg.eps, cfg, scratch)
            rows.append(torch.stack((f_plus, f_minus)))
        losses = torch.stack(rows)
        slopes = (losses[:, 0] - losses[:, 1]) / (2.0 * cfg.eps)
        update_(params, decay, seed, step, slopes, cfg, restore=cfg.eps if cfg.fused else 0.0, scratch=scratch)
    return StepOut(losses, slopes)


def replay_(params: Sequence[Tensor], decay: Sequence[bool], seed: int, log: Sequence[tuple[int, Tensor, float]],
            cfg: MeZOConfig) -> None:
    """Rebuild θ from θ₀ in place by re-applying logged updates ``(step, slopes, lr)`` (§5.1).

    Equal to the trajectory up to the rounding of the restore passes (bit for bit where those
    are exact), on the same device type and torch version.
    """
    scratch: Scratch = {}
    with torch.no_grad():
        for step, slopes, lr in log:
            update_(params, decay, seed, step, slopes, cfg, lr=lr, scratch=scratch)


class MeZO:
    """A stepper owning ``(seed, step)`` and a replay log; the passes stay the pure functions above."""

    def __init__(self, model: nn.Module, cfg: MeZOConfig, seed: int = 0, keep_log: bool = False) -> None:
        named = trainable(model)
        self.model, self.cfg, self.seed, self.step_count = model, cfg, int(seed), 0
        self.params = [p for _, p in named]
        self.decay = decays([n for n, _ in named])
        check_precision(self.params, cfg.allow_half)
        self.log: list[tuple[int, Tensor, float]] | None = [] if keep_log else None

    def step(self, loss_fn: LossFn) -> StepOut:
        """One step in eval mode (dropout off for every query, as MeZO does); the mode is restored."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = spsa_step(self.params, self.decay, loss_fn, self.seed, self.step_count, self.cfg)
        finally:
            self.model.train(was_training)
        if self.log is not None:
            self.log.append((self.step_count, out.slopes, self.cfg.lr))
        self.step_count += 1
        return out

    def state_dict(self) -> dict[str, int]:
        """The stepper's own state (the weights live in the model's state dict)."""
        return {"seed": self.seed, "step": self.step_count}
