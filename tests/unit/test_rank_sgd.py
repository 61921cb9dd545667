"""ZO-RankSGD (workers.algorithms.rank_sgd) and its ranking helpers (workers.algorithms.ranking)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from workers.algorithms.base import Answer, State
from workers.algorithms.checkpoint import dump_state, load_state
from workers.algorithms.rank_sgd import ZORankSGD
from workers.algorithms.ranking import dag_weights, rank_by_values
from zoserve.models.ranking import RankingObjective, ZORankSGDConfig

torch.set_num_threads(1)


def sphere(points: Tensor) -> Tensor:
    return (points**2).sum(dim=1)


def run(
    alg: ZORankSGD, f: Callable[[Tensor], Tensor], x0: Tensor, seed: int, calls: int, flip_prob: float = 0.0
) -> tuple[State, list[Tensor]]:
    """Drive ``alg`` with the simulated oracle on ``f`` (exact, or with adjacent flips); return the
    final state and all iterates."""
    state = alg.init(x0, seed)
    xs = [alg.x_of(state)]
    gen = torch.Generator().manual_seed(1000 + seed)
    for _ in range(calls):
        query = alg.ask(state)
        k = query.k or query.points.shape[0]
        ranking, ties = rank_by_values(f(query.points), k, flip_prob=flip_prob, gen=gen if flip_prob else None)
        state, _ = alg.tell(state, query, Answer(ranking=ranking, ties=ties))
        xs.append(alg.x_of(state))
    return state, xs


def same_state(a: State, b: State) -> bool:
    """Bitwise equality of two states (tensors via ``torch.equal``, dtypes included)."""
    if a.keys() != b.keys():
        return False
    for key, va in a.items():
        vb = b[key]
        if isinstance(va, Tensor) or isinstance(vb, Tensor):
            if not (isinstance(va, Tensor) and isinstance(vb, Tensor) and va.dtype == vb.dtype and torch.equal(va, vb)):
                return False
        elif type(va) is not type(vb) or va != vb:
            return False
    return True


# -- the comparison DAG --------------------------------------------------------------------


@pytest.mark.parametrize(("m", "k"), [(2, 1), (5, 5), (10, 1), (10, 3), (10, 5), (10, 10)])
def test_dag_weights_match_closed_form(m: int, k: int) -> None:
    ranking = tuple(torch.randperm(m, generator=torch.Generator().manual_seed(m * 31 + k)).tolist()[:k])
    w, n_edges = dag_weights(ranking, (), m)
    assert n_edges == k * (k - 1) // 2 + k * (m - k)
    expected = torch.full((m,), float(k), dtype=torch.float64)  # every unranked point: +k
    for r, idx in enumerate(ranking, start=1):
        expected[idx] = 2 * r - m - 1
    assert torch.equal(w, expected)
    assert float(w.sum()) == 0.0


def test_ties_drop_only_their_edges() -> None:
    # Full ranking 0 > 1 ~ 2 > 3: one edge (1, 2) fewer, and the tied pair gets equal weights.
    w, n_edges = dag_weights((0, 1, 2, 3), ((1, 2),), 4)
    assert n_edges == 5
    assert w.tolist() == [-3.0, 0.0, 0.0, 3.0]
    # A tie across the top-k cut: 0 > 1, and 1 ~ 3 (unranked): edge (1, 3) dropped.
    w, n_edges = dag_weights((0, 1), ((1, 3),), 4)
    assert n_edges == 4
    assert w.tolist() == [-3.0, 0.0, 2.0, 1.0]
    assert float(w.sum()) == 0.0


@pytest.mark.parametrize(
    ("ranking", "ties"),
    [((0, 0), ()), ((0, 4), ()), ((0, 1, 2), ((0, 2),)), ((0, 1, 2), ((0, 3),)), ((0, 1), ((0,), (0, 1)))],
)
def test_inconsistent_answers_are_rejected(ranking: tuple[int, ...], ties: tuple[tuple[int, ...], ...]) -> None:
    with pytest.raises(ValueError):
        dag_weights(ranking, ties, 4)


# -- the simulated oracle ------------------------------------------------------------------


def test_rank_by_values_exact_partial_and_tied() -> None:
    values = torch.tensor([3.0, 1.0, 2.0, 1.0, 5.0])
    assert rank_by_values(values, 5) == ((1, 3, 2, 0, 4), ((1, 3),))
    assert rank_by_values(values, 1) == ((1,), ((1, 3),))  # tie across the cut is reported whole
    assert rank_by_values(values, 3) == ((1, 3, 2), ((1, 3),))
    assert rank_by_values(torch.tensor([2.0, 0.0, 1.0]), 2) == ((1, 2), ())


def test_rank_by_values_noise_and_flips_are_seeded() -> None:
    values = torch.arange(12, dtype=torch.float64)

    def draw(seed: int) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        return rank_by_values(values, 6, noise=1.0, flip_prob=0.3, gen=torch.Generator().manual_seed(seed))

    assert draw(1) == draw(1)
    outcomes = {draw(s)[0] for s in range(20)}
    assert len(outcomes) > 10
    flipped = rank_by_values(values, 12, flip_prob=0.5, gen=torch.Generator().manual_seed(0))[0]
    assert flipped != tuple(range(12)) and sorted(flipped) == list(range(12))
    with pytest.raises(ValueError):
        rank_by_values(values, 3, noise=1.0)  # randomness without a generator


# -- the estimator -------------------------------------------------------------------------


def test_estimator_points_downhill_on_a_quadratic() -> None:
    d = 20
    scales = torch.linspace(0.5, 5.0, d, dtype=torch.float64)
    x = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    grad = 2 * scales * x
    alg = ZORankSGD(m=10, k=3, schedule="fixed", mu=0.01)
    total = torch.zeros(d, dtype=torch.float64)
    cosines = []
    for seed in range(1500):
        state = alg.init(x, seed)
        query = alg.ask(state)
        ranking, ties = rank_by_values((scales * query.points**2).sum(1), 3)
        g, _ = alg.estimate(state, Answer(ranking=ranking, ties=ties))
        total += g
        cosines.append(float(torch.dot(g, grad) / (g.norm() * grad.norm())))
    assert float(torch.dot(total, grad) / (total.norm() * grad.norm())) > 0.9
    assert statistics.mean(cosines) > 0.1  # each single estimate is positively aligned on average
    assert sum(c > 0 for c in cosines) > 0.8 * len(cosines)


def test_estimator_is_the_mean_over_dag_edges() -> None:
    # g̃ = (1/|E|) Σ_{(a,b)∈E} (ξ_b − ξ_a), edges listed by hand for 3 > 0 ~ 5 (top 3 of 6).
    alg = ZORankSGD(m=6, k=3, mu=0.1)
    x = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64)
    state = alg.init(x, 4)
    xi = (alg.ask(state).points - x) / 0.1
    edges = [(3, 0), (3, 5)] + [(a, b) for a in (3, 0, 5) for b in (1, 2, 4)]
    expected = sum((xi[b] - xi[a] for a, b in edges), torch.zeros(9, dtype=torch.float64)) / len(edges)
    g, n_edges = alg.estimate(state, Answer(ranking=(3, 0, 5), ties=((0, 5),)))
    assert n_edges == len(edges)
    assert torch.allclose(g, expected, atol=1e-12)


def test_full_ranking_mean_length_is_2_over_sqrt_pi() -> None:
    # Linear f = <e_1, x>: E[g̃]·e_1 = 2/√π for k = m (brief §2.2 table).
    alg = ZORankSGD(m=10, k=10, schedule="fixed")
    x = torch.zeros(8, dtype=torch.float64)
    proj = []
    for seed in range(6000):
        state = alg.init(x, seed)
        ranking, _ = rank_by_values(alg.ask(state).points[:, 0], 10)
        proj.append(float(alg.estimate(state, Answer(ranking=ranking))[0][0]))
    assert statistics.mean(proj) == pytest.approx(2 / math.sqrt(math.pi), abs=0.03)


# -- invariance, determinism, phases -------------------------------------------------------


ADAPTIVE: dict[str, object] = {"step_adaptation": "adaptive"}


@pytest.mark.parametrize(
    "kw",
    [{"schedule": "fixed", "lr": 0.02}, {}, {"protocol": "two-round"}, ADAPTIVE, {**ADAPTIVE, "protocol": "two-round"}],
)
def test_iterates_are_invariant_to_increasing_transforms(kw: dict[str, object]) -> None:
    alg = ZORankSGD(m=8, k=4, **kw)  # type: ignore[arg-type]
    x0 = torch.full((30,), 0.7, dtype=torch.float64)
    end, base = run(alg, sphere, x0, 3, 200)
    for transform in (lambda p: torch.exp(3 * sphere(p) / 50), lambda p: 3 * sphere(p) + 7):
        other_end, other = run(alg, transform, x0, 3, 200)
        assert all(torch.equal(a, b) for a, b in zip(base, other, strict=True))
        assert same_state(end, other_end)  # the adaptive η_t, μ_t included
    _, decreasing = run(alg, lambda p: -sphere(p), x0, 3, 200)  # sanity: the test can fail
    assert not torch.equal(base[-1], decreasing[-1])


def test_ask_is_deterministic_and_tell_does_not_mutate() -> None:
    alg = ZORankSGD(m=6, k=2)
    x0 = torch.ones(5, dtype=torch.float64)
    state = alg.init(x0, 11)
    q1, q2 = alg.ask(state), alg.ask(alg.init(x0.clone(), 11))
    assert torch.equal(q1.points, q2.points) and (q1.kind, q1.k) == ("ranking", 2)
    assert q1.points.shape == (6, 5)
    assert not torch.equal(q1.points, alg.ask(alg.init(x0, 12)).points)
    before = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in state.items()}
    new, info = alg.tell(state, q1, Answer(ranking=(4, 1)))
    assert same_state(before, state)
    assert info.value is None and info.extra["est_norm"] > 0 and torch.equal(info.x, x0)
    assert (new["phase"], new["oracle_calls"], new["evaluations"]) == ("linesearch", 1, 6)


def test_linesearch_phase_moves_to_the_picked_candidate() -> None:
    alg = ZORankSGD(m=6, k=3, lr=0.5, gamma=0.5, ls_candidates=4)
    state = alg.init(torch.ones(5, dtype=torch.float64), 0)
    state, _ = alg.tell(state, alg.ask(state), Answer(ranking=(2, 0, 5)))
    ls = alg.ask(state)
    assert (ls.points.shape, ls.k) == ((5, 5), 1)
    g = state["direction"]
    assert isinstance(g, Tensor)
    assert torch.equal(ls.points[-1], alg.x_of(state))
    assert torch.allclose(ls.points[2], alg.x_of(state) - 0.125 * g)
    moved, info = alg.tell(state, ls, Answer(ranking=(2,)))
    assert torch.equal(alg.x_of(moved), ls.points[2]) and moved["phase"] == "estimate"
    assert (moved["oracle_calls"], moved["evaluations"], moved["t"]) == (2, 11, 1)
    stayed, _ = alg.tell(state, ls, Answer(ranking=(4,)))
    assert torch.equal(alg.x_of(stayed), alg.x_of(state))


def test_two_round_averages_until_x_moves() -> None:
    alg = ZORankSGD(m=4, k=4, ls_candidates=2, protocol="two-round")
    state = alg.init(torch.ones(3, dtype=torch.float64), 5)
    q = alg.ask(state)
    state, _ = alg.tell(state, q, Answer(ranking=(3, 1, 0, 2)))
    best, first = state["best_perturbed"], state["direction"]
    assert isinstance(best, Tensor) and isinstance(first, Tensor)
    assert torch.equal(best, q.points[3])
    ls = alg.ask(state)
    assert ls.points.shape[0] == 4 and torch.equal(ls.points[2], q.points[3])
    state, _ = alg.tell(state, ls, Answer(ranking=(3,)))  # keep x: D is kept
    state, _ = alg.tell(state, alg.ask(state), Answer(ranking=(0, 1, 2, 3)))
    averaged = state["direction"]
    assert isinstance(averaged, Tensor) and state["n_avg"] == 2 and not torch.equal(averaged, first)
    state, _ = alg.tell(state, alg.ask(state), Answer(ranking=(0,)))  # moved: D reset
    assert state["n_avg"] == 0 and float(state["direction"].abs().sum()) == 0.0  # type: ignore[union-attr]


def test_partial_rankings_and_ties_are_accepted() -> None:
    alg = ZORankSGD(m=5, k=5, schedule="fixed", lr=0.1)
    state = alg.init(torch.zeros(4, dtype=torch.float64), 0)
    q = alg.ask(state)
    short, _ = alg.tell(state, q, Answer(ranking=(3,)))  # a human ranked fewer than k
    assert not torch.equal(alg.x_of(short), alg.x_of(state))
    tied, info = alg.tell(state, q, Answer(ranking=(3, 1, 4), ties=((1, 4),)))
    assert info.extra["n_edges"] == 3 + 3 * 2 - 1
    all_tied, info = alg.tell(state, q, Answer(ranking=(0, 1, 2, 3, 4), ties=((0, 1, 2, 3, 4),)))
    assert torch.equal(alg.x_of(all_tied), alg.x_of(state)) and info.extra["n_edges"] == 0
    with pytest.raises(ValueError):
        alg.tell(state, q, Answer(ranking=(1, 1)))
    with pytest.raises(ValueError):
        alg.tell(state, q, Answer(values=torch.zeros(5)))


def test_checkpoint_round_trip_resumes_identically() -> None:
    alg = ZORankSGD(m=6, k=3, protocol="two-round")
    state, _ = run(alg, sphere, torch.ones(7, dtype=torch.float64), 2, 5)  # mid line search
    assert state["phase"] == "linesearch"
    restored = load_state(dump_state(state))
    assert same_state(restored, state)
    a: State = state
    b: State = restored
    for _ in range(6):  # both phases, a moved and a kept x
        qa, qb = alg.ask(a), alg.ask(b)
        assert torch.equal(qa.points, qb.points) and qa.k == qb.k
        ranking, ties = rank_by_values(sphere(qa.points), qa.k or 6)
        a, _ = alg.tell(a, qa, Answer(ranking=ranking, ties=ties))
        b, _ = alg.tell(load_state(dump_state(b)), qb, Answer(ranking=ranking, ties=ties))
    assert same_state(a, b)


# -- step_adaptation="adaptive" (opt-in deviation from the paper) -------------------------


def test_default_state_has_no_adaptive_keys_and_adaptive_starts_at_lr_mu() -> None:
    x0 = torch.ones(4, dtype=torch.float64)
    assert not {"lr_t", "mu_t"} & ZORankSGD().init(x0, 0).keys()  # the paper's state is untouched
    state = ZORankSGD(lr=0.3, mu=0.02, step_adaptation="adaptive").init(x0, 0)
    assert (state["lr_t"], state["mu_t"]) == (0.3, 0.02)
    with pytest.raises(ValueError):
        ZORankSGD(schedule="fixed", step_adaptation="adaptive")
    with pytest.raises(ValueError):
        ZORankSGD(ls_candidates=4, adapt_center=5, step_adaptation="adaptive")


@pytest.mark.parametrize(("pick", "exponent"), [(0, -2.5), (2, -0.5), (3, 0.5), (4, 1.5), (5, 1.5)])
def test_adaptive_recentres_on_the_pick(pick: int, exponent: float) -> None:
    # L = 4, c = (L + 1)/2 = 2.5: pick i gives η γ^(i − c); keeping x (row 4) counts as i = L.
    alg = ZORankSGD(m=6, k=3, lr=0.4, mu=0.01, gamma=0.5, ls_candidates=4, step_adaptation="adaptive")
    alg2 = ZORankSGD(m=6, k=3, lr=0.4, mu=0.01, gamma=0.5, ls_candidates=4, protocol="two-round",
                     step_adaptation="adaptive")
    for a in (alg, alg2):
        state = a.init(torch.ones(5, dtype=torch.float64), 0)
        state, _ = a.tell(state, a.ask(state), Answer(ranking=(2, 0, 5)))
        ls = a.ask(state)
        last = ls.points.shape[0] - 1
        if pick > last:  # the ranking protocol has no row 5 (x is its row 4)
            continue
        new, info = a.tell(state, ls, Answer(ranking=(pick,)))
        assert new["lr_t"] == pytest.approx(0.4 * 0.5**exponent, rel=1e-15)
        assert new["mu_t"] == pytest.approx(0.01 * 0.5**exponent, rel=1e-15)
        assert info.extra["lr"] == new["lr_t"]
        plain = ZORankSGD(m=6, k=3, mu=float(new["mu_t"]), schedule="fixed")  # same ξ, radius μ_t
        expected = plain.ask({**plain.init(a.x_of(new), 0), "t": new["t"]}).points
        assert torch.allclose(a.ask(new).points, expected, rtol=0, atol=1e-15)


def test_adaptive_step_does_not_collapse_under_an_uninformative_oracle() -> None:
    # Random answers (value noise swamping f): picks are uniform, so η must not shrink to nothing.
    alg = ZORankSGD(m=6, k=3, ls_candidates=8, step_adaptation="adaptive")
    gen = torch.Generator().manual_seed(0)
    state = alg.init(torch.ones(5, dtype=torch.float64), 0)
    for _ in range(400):
        query = alg.ask(state)
        ranking = tuple(torch.randperm(query.points.shape[0], generator=gen).tolist()[: query.k])
        state, _ = alg.tell(state, query, Answer(ranking=ranking))
    assert float(state["lr_t"]) >= 0.5
    centred = ZORankSGD(m=6, k=3, ls_candidates=8, step_adaptation="adaptive", adapt_center=2)
    state = centred.init(torch.ones(5, dtype=torch.float64), 0)  # sanity: a low centre does collapse
    for _ in range(400):
        query = centred.ask(state)
        ranking = tuple(torch.randperm(query.points.shape[0], generator=gen).tolist()[: query.k])
        state, _ = centred.tell(state, query, Answer(ranking=ranking))
    assert float(state["lr_t"]) < 1e-20


@pytest.mark.parametrize("flip_prob", [0.0, 0.1])
def test_adaptive_converges_far_below_the_paper_floor(flip_prob: float) -> None:
    # Sphere d = 20, f(x0) = 20, 600 calls: the paper's fixed grid stalls near 3e-5 (1e-4 with
    # flips); the adaptive variant reaches ≈ 1e-37 (1e-35 with flips) and never blows up.
    x0 = torch.ones(20, dtype=torch.float64)

    def finals(alg: ZORankSGD) -> list[float]:
        return [float(sphere(alg.x_of(run(alg, sphere, x0, s, 600, flip_prob)[0])[None])[0]) for s in range(3)]

    config = ZORankSGDConfig(step_adaptation="adaptive")
    adaptive = finals(ZORankSGD(m=10, k=5, **config.hparams()))  # type: ignore[arg-type]
    paper = finals(ZORankSGD(m=10, k=5, **ZORankSGDConfig().hparams()))  # type: ignore[arg-type]
    assert max(adaptive) < 1e-25
    assert statistics.median(paper) > 1e-6  # sanity: the default keeps its floor


def test_adaptive_checkpoint_round_trip_resumes_identically() -> None:
    alg = ZORankSGD(m=6, k=3, step_adaptation="adaptive")
    state, _ = run(alg, sphere, torch.ones(7, dtype=torch.float64), 2, 41)  # mid line search, η adapted
    assert state["phase"] == "linesearch" and state["lr_t"] != alg.lr
    restored = load_state(dump_state(state))
    assert same_state(restored, state) and isinstance(restored["lr_t"], float)
    a: State = state
    b: State = restored
    for _ in range(10):
        qa, qb = alg.ask(a), alg.ask(b)
        assert torch.equal(qa.points, qb.points) and qa.k == qb.k
        ranking, ties = rank_by_values(sphere(qa.points), qa.k or 6)
        a, _ = alg.tell(a, qa, Answer(ranking=ranking, ties=ties))
        b, _ = alg.tell(load_state(dump_state(b)), qb, Answer(ranking=ranking, ties=ties))
    assert same_state(a, b)


# -- convergence (the acceptance criterion) ---------------------------------------


@pytest.mark.parametrize(
    "config",
    [ZORankSGDConfig(), ZORankSGDConfig(schedule="decay", lr=0.05), ZORankSGDConfig(protocol="two-round")],
)
def test_sphere_d100_m10_k5_3000_calls_reaches_0_1(config: ZORankSGDConfig) -> None:
    alg = ZORankSGD(m=10, k=5, **config.hparams())  # type: ignore[arg-type]
    x0 = torch.ones(100, dtype=torch.float64)  # f(x0) = 100
    finals = [float(sphere(alg.x_of(run(alg, sphere, x0, seed, 3000)[0])[None])[0]) for seed in range(5)]
    assert statistics.median(finals) < 0.1


# -- wire models ---------------------------------------------------------------------------


def test_config_and_objective_validation() -> None:
    assert ZORankSGDConfig.algorithm == "zo-ranksgd"
    assert ZORankSGD(**ZORankSGDConfig(lr=0.1).hparams()).lr == 0.1  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ZORankSGDConfig(protocol="two-round", schedule="fixed")
    with pytest.raises(ValidationError):
        ZORankSGDConfig(gamma=1.0)
    with pytest.raises(ValidationError):
        ZORankSGDConfig(step_adaptation="adaptive", schedule="decay")
    with pytest.raises(ValidationError):
        ZORankSGDConfig(step_adaptation="adaptive", ls_candidates=3, adapt_center=3.5)
    adaptive = ZORankSGDConfig(step_adaptation="adaptive")
    assert ZORankSGD(**adaptive.hparams()).adapt_center == 4.5  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ZORankSGDConfig(m=10)  # type: ignore[call-arg]  # the oracle's shape belongs to the objective
    ok = RankingObjective(oracle="builtin", function="sphere", dim=100, m=10, k=5)
    assert (ok.kind, ok.noise, ok.render) == ("ranking", 0.0, None)
    bad = [
        {"oracle": "builtin", "function": "sphere", "dim": 10, "m": 4, "k": 5},
        {"oracle": "builtin", "dim": 10},
        {"oracle": "endpoint", "dim": 10},
        {"oracle": "human", "dim": 10, "url": "http://127.0.0.1:9/rank"},
        {"oracle": "builtin", "function": "sphere", "dim": 10, "flip_prob": 0.6},
        {"oracle": "human", "dim": 10, "m": 65, "k": 1},
    ]
    for spec in bad:
        with pytest.raises(ValidationError):
            RankingObjective.model_validate(spec)
    ep = RankingObjective.model_validate(
        {"oracle": "endpoint", "dim": 3, "url": "http://127.0.0.1:9/rank", "headers": {"x-key": "v"}}
    )
    assert str(ep.url) == "http://127.0.0.1:9/rank"
