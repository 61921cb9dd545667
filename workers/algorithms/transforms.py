"""Gradient transforms as optax-style (init, update) pairs of pure functions, and LR schedules.

A :class:`Transform` maps a gradient estimate ĝ to an update direction u; the recipe then
steps x ← x − η_t·u. Transform state is a flat ``dict[str, Tensor]`` with names unique
within a :func:`chain`, so it drops straight into an algorithm's ``State``. ``update``
never mutates its inputs. ``step`` is the number of updates already applied (0-based).

Rules (brief zo-engine.md §3):

* :func:`sgd` — heavy-ball momentum with torch semantics, m ← β·m + ĝ; u = m
  (ZO-SGD-MMT, §3.2); u = ĝ when β = 0 (ZO-SGD, §3.1).
* :func:`adam` — Kingma & Ba 2015, Algorithm 1: m ← β₁m + (1−β₁)ĝ, v ← β₂v + (1−β₂)ĝ²,
  u = m̂ / (√v̂ + ε) with bias-corrected m̂, v̂ (ZO-Adam, §3.5).
* :func:`sign` — u = sign(ĝ) elementwise (ZO-signSGD, Liu et al. 2019, eq. 3).
* :func:`clip_by_norm` — ĝ ← ĝ·min(1, C/‖ĝ‖₂).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple

import torch
from torch import Tensor

TState = dict[str, Tensor]
Schedule = Callable[[int], float]
SCHEDULES: tuple[str, ...] = ("constant", "inverse_sqrt", "cosine", "step")


class Transform(NamedTuple):
    """``init(x) -> state`` and ``update(g, state, step) -> (u, new_state)``."""

    init: Callable[[Tensor], TState]
    update: Callable[[Tensor, Mapping[str, Tensor], int], tuple[Tensor, TState]]


def identity() -> Transform:
    """u = ĝ (stateless)."""
    return Transform(lambda x: {}, lambda g, state, step: (g, {}))


def sgd(momentum: float = 0.0) -> Transform:
    """Plain or heavy-ball SGD direction (torch ``SGD`` momentum semantics, no dampening)."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if momentum == 0.0:
        return identity()

    def update(g: Tensor, state: Mapping[str, Tensor], step: int) -> tuple[Tensor, TState]:
        m = state["momentum"] * momentum + g  # zero init: m = ĝ at step 0, as torch's buffer
        return m, {"momentum": m}

    return Transform(lambda x: {"momentum": torch.zeros_like(x)}, update)


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam direction m̂/(√v̂ + ε) with bias correction (Kingma & Ba 2015, Alg. 1)."""
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {(b1, b2)!r}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps!r}")

    def init(x: Tensor) -> TState:
        return {"adam_m": torch.zeros_like(x), "adam_v": torch.zeros_like(x)}

    def update(g: Tensor, state: Mapping[str, Tensor], step: int) -> tuple[Tensor, TState]:
        t = step + 1
        m = torch.lerp(state["adam_m"], g, 1.0 - b1)  # β₁m + (1−β₁)ĝ
        v = torch.lerp(state["adam_v"], g * g, 1.0 - b2)
        v_hat = v / (1.0 - b2**t)
        u = (m / (1.0 - b1**t)) / (v_hat.sqrt() + eps)
        return u, {"adam_m": m, "adam_v": v}

    return Transform(init, update)


def sign() -> Transform:
    """Elementwise sign(ĝ) (stateless)."""
    return Transform(lambda x: {}, lambda g, state, step: (torch.sign(g), {}))


def clip_by_norm(max_norm: float) -> Transform:
    """Rescale ĝ so that ‖ĝ‖₂ ≤ ``max_norm`` (stateless)."""
    if not max_norm > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")

    def update(g: Tensor, state: Mapping[str, Tensor], step: int) -> tuple[Tensor, TState]:
        # ĝ / max(1, ‖ĝ‖/C) on the device: no host sync, and ĝ / 1 leaves ĝ bit for bit
        return g / (torch.linalg.vector_norm(g) / max_norm).clamp(min=1.0), {}

    return Transform(lambda x: {}, update)


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` left to right; their state names must not collide."""

    def init(x: Tensor) -> TState:
        state: TState = {}
        for tr in transforms:
            part = tr.init(x)
            if state.keys() & part.keys():
                raise ValueError(f"transform state names collide: {sorted(state.keys() & part.keys())}")
            state.update(part)
        return state

    def update(g: Tensor, state: Mapping[str, Tensor], step: int) -> tuple[Tensor, TState]:
        new: TState = {}
        for tr in transforms:
            g, part = tr.update(g, state, step)
            new.update(part)
        return g, new

    return Transform(init, update)


def make_schedule(name: str, lr: float, decay_steps: int = 1000) -> Schedule:
    """Learning rate η_t for step t (0-based).

    * ``constant``: η (MeZO, ZO-Bench).
    * ``inverse_sqrt``: η / √(1 + t/T) (the O(1/√t) rate of ZO-SGD theory).
    * ``cosine``: η·(0.01 + 0.99·½(1 + cos(π·min(t, T)/T))), i.e. down to 1% of η at T and
      flat after (DeepZero uses cosine; the 1% floor keeps a run that outlives T moving).
    * ``step``: η·0.5^⌊t/T⌋.
    """
    if not lr > 0.0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps!r}")
    if name == "constant":
        return lambda t: lr
    if name == "inverse_sqrt":
        return lambda t: lr / math.sqrt(1.0 + t / decay_steps)
    if name == "cosine":
        return lambda t: lr * (0.01 + 0.495 * (1.0 + math.cos(math.pi * min(t, decay_steps) / decay_steps)))
    if name == "step":
        return lambda t: lr * 0.5 ** (t // decay_steps)
    raise ValueError(f"unknown lr schedule {name!r}; expected one of {SCHEDULES}")
