"""Update rules against hand-computed values and torch.optim; LR schedules."""

from __future__ import annotations

import math

import pytest
import torch

from workers.algorithms import transforms as tf

G = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([-3.0, 0.0, 1.0], dtype=torch.float64)]


def test_sgd_momentum_hand_computed() -> None:
    t = tf.sgd(0.9)
    state = t.init(torch.zeros(3, dtype=torch.float64))
    u1, state = t.update(G[0], state, 0)
    u2, state = t.update(G[1], state, 1)
    assert torch.equal(u1, G[0])
    assert torch.allclose(u2, 0.9 * G[0] + G[1])
    assert tf.sgd(0.0).init(torch.zeros(3)) == {}  # plain SGD keeps no state


def test_adam_matches_torch_optim_over_three_steps() -> None:
    x = torch.tensor([0.3, -0.1, 2.0], dtype=torch.float64)
    ref = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    t = tf.adam()
    state = t.init(x)
    for step, g in enumerate([G[0], G[1], G[0] * 0.1]):
        u, state = t.update(g, state, step)
        x = x - 0.01 * u
        ref.grad = g.clone()
        opt.step()
        assert torch.allclose(x, ref.detach(), rtol=0, atol=1e-12)
    assert step == 2


def test_adam_first_step_is_sign_like() -> None:
    u, _ = tf.adam().update(G[0], tf.adam().init(G[0]), 0)
    assert torch.allclose(u, torch.sign(G[0]), atol=1e-6)  # m̂/√v̂ = g/|g| at t = 1


def test_sign_and_clip() -> None:
    u, _ = tf.sign().update(G[1], {}, 0)
    assert u.tolist() == [-1.0, 0.0, 1.0]
    clipped, _ = tf.clip_by_norm(1.0).update(G[0], {}, 0)
    assert float(clipped.norm()) == pytest.approx(1.0)
    assert torch.allclose(clipped / clipped.norm(), G[0] / G[0].norm())
    same, _ = tf.clip_by_norm(100.0).update(G[0], {}, 0)
    assert torch.equal(same, G[0])


def test_chain_applies_in_order_and_keeps_inputs() -> None:
    t = tf.chain(tf.clip_by_norm(1.0), tf.sgd(0.5))
    state = t.init(torch.zeros(3, dtype=torch.float64))
    before = {k: v.clone() for k, v in state.items()}
    g = G[0].clone()
    u, new = t.update(g, state, 0)
    assert float(u.norm()) == pytest.approx(1.0)
    assert torch.equal(g, G[0]) and all(torch.equal(state[k], before[k]) for k in state)
    assert set(new) == {"momentum"}


def test_chain_rejects_colliding_state_names() -> None:
    with pytest.raises(ValueError, match="collide"):
        tf.chain(tf.sgd(0.5), tf.sgd(0.9)).init(torch.zeros(2))


def test_schedules() -> None:
    assert tf.make_schedule("constant", 0.1)(10**6) == 0.1
    inv = tf.make_schedule("inverse_sqrt", 0.1, 100)
    assert inv(0) == 0.1 and inv(300) == pytest.approx(0.05)
    cos = tf.make_schedule("cosine", 1.0, 100)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.505) and cos(100) == cos(10**6) == 0.01
    step = tf.make_schedule("step", 1.0, 10)
    assert [step(t) for t in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert all(math.isfinite(cos(t)) for t in range(0, 300, 7))


@pytest.mark.parametrize("bad", [lambda: tf.make_schedule("linear", 0.1), lambda: tf.make_schedule("constant", 0.0),
                                 lambda: tf.sgd(1.0), lambda: tf.adam(b1=1.0), lambda: tf.clip_by_norm(0.0)])
def test_invalid_arguments_raise(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        bad()
