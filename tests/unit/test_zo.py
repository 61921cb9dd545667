"""ZO-SGD / ZO-Adam / ZO-SignSGD recipes, the registry, the configs, state checkpoints and the
CUDA path (skipped without CUDA)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from workers.algorithms.base import Algorithm, Answer, State
from workers.algorithms.checkpoint import CheckpointError, dump_state, load_state, state_metadata
from workers.algorithms.estimators import Plan, gradient
from workers.algorithms.registry import ALGORITHMS, build_algorithm, register
from workers.algorithms.zo import ZOSGD, ZOAdam, ZOSignSGD
from zoserve.models.algorithms import ZO_CONFIGS, ZOAdamConfig, ZOSGDConfig, ZOSignSGDConfig

CURV = torch.linspace(1.0, 10.0, 10, dtype=torch.float64)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def quadratic(points: Tensor) -> Tensor:
    """f(x) = ½ Σ c_i x_i², c from 1 to 10 (κ = 10), batched over rows."""
    return 0.5 * (CURV * points * points).sum(1)


def rosenbrock(points: Tensor) -> Tensor:
    """f(x) = Σ 100(x_{i+1} − x_i²)² + (1 − x_i)², batched over rows."""
    x = points
    return (100.0 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1.0 - x[:, :-1]) ** 2).sum(1)


def run(algo: Algorithm, f, x0: Tensor, seed: int, steps: int) -> tuple[State, list[float]]:  # type: ignore[no-untyped-def]
    """``steps`` ask/tell steps; returns the state and the true f of every iterate."""
    state = algo.init(x0, seed)
    trace = [float(f(x0[None]))]
    for _ in range(steps):
        query = algo.ask(state)
        state, _ = algo.tell(state, query, Answer(values=f(query.points)))
        trace.append(float(f(algo.x_of(state)[None])))
    return state, trace


RECIPES = {
    "sgd": lambda: ZOSGD(lr=0.02, q=10),
    "sgd-momentum": lambda: ZOSGD(lr=0.003, momentum=0.9, q=10),
    "sgd-sphere-central": lambda: ZOSGD(lr=0.02, q=10, directions="sphere", difference="central"),
    "sgd-rademacher-clip": lambda: ZOSGD(lr=0.02, q=10, directions="rademacher", clip_norm=5.0),
    "sgd-cge": lambda: ZOSGD(lr=0.05, estimator="cge", difference="central"),
    "adam": lambda: ZOAdam(lr=0.05, q=10),
    "sign-elementwise": lambda: ZOSignSGD(lr=0.05, q=10, lr_schedule="cosine", lr_decay_steps=300),
    "sign-scalar": lambda: ZOSignSGD(lr=0.05, q=10, variant="scalar", lr_schedule="cosine", lr_decay_steps=300),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_converges_on_quadratic(recipe: str) -> None:
    _, trace = run(RECIPES[recipe](), quadratic, torch.ones(10, dtype=torch.float64), seed=0, steps=300)
    assert all(math.isfinite(v) for v in trace)
    assert trace[-1] < 1e-3 * trace[0], trace[-1]


def test_default_zosgd_cuts_rosenbrock20_by_90_percent() -> None:
    cfg = ZOSGDConfig()
    assert cfg.estimator == "rge" and cfg.directions == "gaussian" and cfg.clip_norm is None
    x0 = torch.tensor([-1.2 if i % 2 == 0 else 1.0 for i in range(20)], dtype=torch.float64)
    f0 = float(rosenbrock(x0[None]))
    assert f0 == pytest.approx(4598.0)  # 10 pairs of 24.2 + 9 pairs of 484
    for seed in (0, 1, 2):
        _, trace = run(build_algorithm(cfg.algorithm, cfg.hparams()), rosenbrock, x0, seed, steps=400)
        assert min(trace) < 0.1 * f0, (seed, min(trace))


def test_ask_is_deterministic_and_step_dependent() -> None:
    algo = ZOSGD(q=4)
    state = algo.init(torch.zeros(6), seed=7)
    q1, q2 = algo.ask(state), ZOSGD(q=4).ask(state)
    assert torch.equal(q1.points, q2.points) and q1.kind == "values"
    state2, _ = algo.tell(state, q1, Answer(values=quadratic(torch.zeros(5, 10))[:5] + torch.arange(5.0)))
    assert not torch.equal(algo.ask(state2).points[1:], q1.points[1:])
    other_seed = algo.init(torch.zeros(6), seed=8)
    assert not torch.equal(algo.ask(other_seed).points, q1.points)


def test_tell_does_not_mutate_and_reports_base_value() -> None:
    algo = ZOAdam(q=3)
    state = algo.init(torch.linspace(-1, 1, 10), seed=1)
    snapshot = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in state.items()}
    query = algo.ask(state)
    points = query.points.clone()
    new, info = algo.tell(state, query, Answer(values=quadratic(query.points)))
    assert all(torch.equal(state[k], v) if isinstance(v, Tensor) else state[k] == v for k, v in snapshot.items())
    assert torch.equal(query.points, points)
    assert info.value == float(quadratic(state["x"][None]))  # type: ignore[index]
    assert torch.equal(info.x, state["x"])  # type: ignore[arg-type]
    assert info.extra["grad_norm"] > 0 and new["step"] == 1
    assert new["x"].dtype == torch.float64 and not torch.equal(new["x"], state["x"])  # type: ignore[union-attr]


def test_tell_without_plan_cache_is_bitwise_identical() -> None:
    warm = ZOSignSGD(q=5, variant="scalar")
    state = warm.init(torch.ones(10), seed=3)
    query = warm.ask(state)
    answer = Answer(values=quadratic(query.points))
    a, _ = warm.tell(state, query, answer)
    b, _ = ZOSignSGD(q=5, variant="scalar").tell(state, query, answer)  # fresh instance: re-plans
    assert torch.equal(a["x"], b["x"])  # type: ignore[arg-type]


def test_ask_reuses_its_direction_buffer_but_never_a_query() -> None:
    algo = ZOSGD(q=4, dtype="float32")
    state = algo.init(torch.linspace(-1, 1, 10), seed=5)
    first = algo.ask(state)
    kept = first.points.clone()
    state2, info = algo.tell(state, first, Answer(values=quadratic(first.points)))
    second = algo.ask(state2)
    assert torch.equal(first.points, kept)  # the old query is untouched
    assert torch.equal(second.points, ZOSGD(q=4, dtype="float32").ask(state2).points)
    assert isinstance(info.value, float) and isinstance(info.extra["grad_norm"], float)
    again, _ = ZOSGD(q=4, dtype="float32").tell(state, first, Answer(values=quadratic(first.points)))
    assert torch.equal(again["x"], state2["x"])  # type: ignore[arg-type]  # cache miss: same step


def test_tell_rejects_wrong_value_count() -> None:
    algo = ZOSGD(q=3)
    state = algo.init(torch.zeros(10), 0)
    query = algo.ask(state)
    with pytest.raises(ValueError, match="expected 4 values"):
        algo.tell(state, query, Answer(values=torch.zeros(3)))
    with pytest.raises(ValueError, match="values"):
        algo.tell(state, query, Answer(ranking=(0, 1, 2, 3)))


def test_float32_iterates_stay_float32() -> None:
    algo = ZOSGD(q=3, lr=0.02, dtype="float32")
    state, trace = run(algo, quadratic, torch.ones(10, dtype=torch.float64), seed=0, steps=50)
    assert state["x"].dtype == torch.float32  # type: ignore[union-attr]
    assert trace[-1] < trace[0]


def test_sign_variants_differ() -> None:
    x0 = torch.ones(10, dtype=torch.float64)
    a, _ = run(ZOSignSGD(q=3), quadratic, x0, seed=0, steps=1)
    b, _ = run(ZOSignSGD(q=3, variant="scalar"), quadratic, x0, seed=0, steps=1)
    step = (x0 - a["x"]).abs()  # type: ignore[operator]
    assert torch.allclose(step[step > 0], torch.full_like(step[step > 0], 1e-2))  # elementwise: ±lr
    assert not torch.equal(a["x"], b["x"])  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [lambda: ZOSGD(q=4, momentum=0.9), lambda: ZOAdam(q=4, lr_schedule="cosine"),
                                  lambda: ZOSignSGD(q=2, difference="central")])
def test_checkpoint_resume_is_bitwise(make) -> None:  # type: ignore[no-untyped-def]
    x0 = torch.linspace(-1, 1, 10, dtype=torch.float64)
    straight, _ = run(make(), quadratic, x0, seed=11, steps=12)
    algo = make()
    half, _ = run(algo, quadratic, x0, seed=11, steps=5)
    resumed = load_state(dump_state(half))
    fresh = make()
    for _ in range(7):
        query = fresh.ask(resumed)
        resumed, _ = fresh.tell(resumed, query, Answer(values=quadratic(query.points)))
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        other = resumed[key]
        assert torch.equal(value, other) if isinstance(value, Tensor) else value == other, key


def test_checkpoint_round_trip_keeps_types_and_dtypes() -> None:
    state: dict[str, object] = {
        "x": torch.randn(5, dtype=torch.float64),
        "h": torch.randn(2, 3).to(torch.bfloat16),
        "idx": torch.arange(4),
        "mask": torch.tensor([True, False]),
        "scalar_t": torch.tensor(2.5, dtype=torch.float32),
        "view": torch.zeros(0),
        "step": 3, "seed": 2**40, "lr": 1.0, "tiny": 1e-300, "nan": float("nan"), "inf": float("-inf"),
        "flag": True, "name": "zo-sgd ✓",
    }
    state["alias"] = state["x"]  # shared storage must still serialise
    back = load_state(dump_state(state))  # type: ignore[arg-type]
    assert back.keys() == state.keys()
    for key, value in state.items():
        got = back[key]
        assert type(got) is type(value), key
        if isinstance(value, Tensor):
            assert got.dtype == value.dtype and got.shape == value.shape and torch.equal(got, value), key  # type: ignore[union-attr]
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(got)  # type: ignore[arg-type]
        else:
            assert got == value, key
    meta = state_metadata(dump_state(state))  # type: ignore[arg-type]
    assert meta["torch_version"] == torch.__version__ and meta["device_types"] == "cpu"


def test_checkpoint_rejects_bad_input() -> None:
    with pytest.raises(CheckpointError, match="unsupported"):
        dump_state({"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(CheckpointError):
        load_state(b"\x00" * 4)


def test_registry_builds_every_config_and_rejects_unknowns() -> None:
    assert {"zo-sgd", "zo-adam", "zo-signsgd"} <= set(ALGORITHMS)
    for cfg_cls in ZO_CONFIGS:
        algo = build_algorithm(cfg_cls.algorithm, cfg_cls().hparams())
        assert algo.name == cfg_cls.algorithm
    with pytest.raises(KeyError, match="unknown algorithm 'zo-nope'.*zo-sgd"):
        build_algorithm("zo-nope", {})
    with pytest.raises(ValueError, match="bad hyperparameters"):
        build_algorithm("zo-sgd", {"betas": (0.9, 0.99)})
    with pytest.raises(ValueError, match="mu"):
        build_algorithm("zo-sgd", {"mu": -1.0})


def test_register_adds_and_refuses_shadowing() -> None:
    def factory(**kw: object) -> Algorithm:
        return ZOSGD(**kw)  # type: ignore[arg-type]

    try:
        register("zo-test-only", factory)
        assert isinstance(build_algorithm("zo-test-only", {"q": 2}), ZOSGD)
        with pytest.raises(ValueError, match="already registered"):
            register("zo-sgd", factory)
    finally:
        ALGORITHMS.pop("zo-test-only", None)


def test_configs_validate_and_forward_hparams() -> None:
    cfg = ZOAdamConfig(q=3, betas=(0.8, 0.99), lr_schedule="step")
    assert cfg.hparams()["betas"] == (0.8, 0.99)
    assert ZOSignSGDConfig(variant="scalar").hparams()["variant"] == "scalar"
    for bad in ({"q": 0}, {"mu": 0.0}, {"lr": -1.0}, {"directions": "cauchy"}, {"unknown": 1}, {"momentum": 1.0}):
        with pytest.raises(ValidationError):
            ZOSGDConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ZOAdamConfig(betas=(0.9, 1.0))



@CUDA
@pytest.mark.parametrize("hparams", [{"q": 4}, {"q": 3, "clip_norm": 0.5},
                                     {"q": 3, "directions": "sphere", "difference": "central"}])
def test_cuda_step_stays_on_the_device_syncs_once_and_matches_cpu(hparams: dict[str, object]) -> None:
    curv = CURV.cuda()

    def f(points: Tensor) -> Tensor:
        return 0.5 * (curv * points * points).sum(1)

    algo = ZOSGD(lr=0.02, **hparams)  # type: ignore[arg-type]
    state = algo.init(torch.linspace(-1, 1, 10, dtype=torch.float64).cuda(), seed=2)
    query = algo.ask(state)
    state, _ = algo.tell(state, query, Answer(values=f(query.points)))  # warm-up: lazy CUDA init may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        query = algo.ask(state)  # ask and the objective: no host sync
        values = f(query.points)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            new, info = algo.tell(state, query, Answer(values=values))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, syncs  # one transfer per step: f(x) and ‖ĝ‖ together
    assert all(v.device.type == "cuda" for v in new.values() if isinstance(v, Tensor))
    assert algo._last is not None and algo._last[0] is query.points
    aux = algo._last[1]
    assert aux.directions is not None and aux.directions.device.type == "cuda"
    grad, fx = gradient(values.cpu(), Plan(aux.directions.cpu(), aux.scale, aux.mu, aux.central))
    clip = hparams.get("clip_norm")
    factor = min(1.0, float(clip) / float(grad.norm())) if isinstance(clip, float) else 1.0
    x = state["x"].cpu()  # type: ignore[union-attr]
    torch.testing.assert_close(new["x"].cpu(), x - 0.02 * factor * grad, rtol=1e-12, atol=1e-14)  # type: ignore[union-attr]
    assert info.value == pytest.approx(float(fx), rel=1e-14)
    assert info.extra["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-12)
