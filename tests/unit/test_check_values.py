"""``check_values``: the per-step guard every objective's answer passes (short and long vectors), and
``check_finite``, its lean form for values an adapter computed itself."""

from __future__ import annotations

import math

import pytest
import torch

from workers.algorithms.base import Query
from workers.objectives.base import ObjectiveInvalid, check_finite, check_values
from workers.objectives.builtin import BuiltinObjective


@pytest.mark.parametrize("n", [3, 300])  # a Python sum up to 256 values, a torch reduction beyond
def test_finite_values_pass_unchanged(n: int) -> None:
    values = torch.linspace(-1, 1, n, dtype=torch.float64)
    assert check_values(values, n) is values


@pytest.mark.parametrize("n", [3, 300])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_is_named_with_its_index(n: int, bad: float) -> None:
    values = torch.zeros(n, dtype=torch.float64)
    values[n - 2] = bad
    with pytest.raises(ObjectiveInvalid, match=rf"non-finite value \({bad}\) at point {n - 2}"):
        check_values(values, n)


@pytest.mark.parametrize("n", [3, 300])
def test_finite_values_whose_sum_overflows_pass(n: int) -> None:
    values = torch.full((n,), 1e308, dtype=torch.float64)  # the sum is inf; no value is
    assert check_values(values, n).tolist() == [1e308] * n


def test_shape_and_dtype_are_normalised_or_refused() -> None:
    assert check_values(torch.tensor([[1.0], [2.0]], dtype=torch.float32), 2).dtype == torch.float64
    assert check_values([1.0, 2.0], 2).tolist() == [1.0, 2.0]  # type: ignore[arg-type]
    with pytest.raises(ObjectiveInvalid, match="expected 3 values, got 2"):
        check_values(torch.zeros(2, dtype=torch.float64), 3)


@pytest.mark.parametrize("n", [3, 300])
def test_check_finite_passes_what_check_values_passes_and_names_what_it_refuses(n: int) -> None:
    ok, huge = torch.linspace(-1, 1, n, dtype=torch.float64), torch.full((n,), 1e308, dtype=torch.float64)
    assert check_finite(ok, n) is ok and check_finite(huge, n).tolist() == [1e308] * n
    bad = ok.clone()
    bad[1] = math.nan
    with pytest.raises(ObjectiveInvalid, match=r"non-finite value \(nan\) at point 1"):
        check_finite(bad, n)


def test_a_builtin_function_that_overflows_fails_the_step_with_the_point() -> None:
    points = torch.tensor([[1.0, 2.0], [1e200, 0.0]], dtype=torch.float64)  # sphere: 1e400 overflows to inf
    with pytest.raises(ObjectiveInvalid, match=r"non-finite value \(inf\) at point 1"):
        BuiltinObjective("sphere", 2).answer(Query(points=points))
