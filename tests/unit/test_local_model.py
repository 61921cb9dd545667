"""ModuleLoss: one step's perturbed parameter sets of a local module in one vmapped forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.algorithms.base import Answer
from workers.algorithms.local import ModuleLoss
from workers.algorithms.zo import ZOSGD


def problem(chunk_size: int | None = None) -> ModuleLoss:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double().eval()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    return ModuleLoss(model, F.mse_loss, x, y, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_batched_values_equal_one_forward_per_point(chunk_size: int | None) -> None:
    f = problem(chunk_size)
    assert f.dim == 5 * 8 + 8 + 8 + 1
    points = f.flat() + 0.1 * torch.randn(7, f.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batched, loop = f.values(points), f.values_loop(points)
    assert batched.shape == (7,) and len(set(batched.tolist())) == 7
    torch.testing.assert_close(batched, loop, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(f.values(f.flat()[None]), f.values_loop(f.flat()[None]))


def test_unflatten_round_trips_and_rejects_bad_shapes() -> None:
    f = problem()
    x = f.flat()
    back = torch.cat([v.reshape(-1) for v in f.unflatten(x).values()])
    assert torch.equal(back, x)
    with pytest.raises(ValueError, match="shape"):
        f.values(x)


def test_zo_sgd_fits_the_model_through_batched_queries() -> None:
    f = problem()
    algo = ZOSGD(lr=0.01, q=8)
    state = algo.init(f.flat(), seed=0)
    start = float(f.values(f.flat()[None]))
    for _ in range(150):
        query = algo.ask(state)
        state, _ = algo.tell(state, query, Answer(values=f.values(query.points)))
    assert float(f.values(algo.x_of(state)[None])) < 0.5 * start
    assert all(torch.equal(a, b) for a, b in zip(f.model.parameters(), problem().model.parameters()))
