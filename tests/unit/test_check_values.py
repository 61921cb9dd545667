"""``check_values``: the per-step guard every objective's answer passes (short and long vectors)."""

from __future__ import annotations

import math

import pytest
import torch

from workers.objectives.base import ObjectiveInvalid, check_values


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
