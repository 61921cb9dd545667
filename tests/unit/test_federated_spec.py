"""Federated job specs are validated strictly: a misspelt field is an error, not silently dropped."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from zoserve.models.jobs import job_create_adapter

SPEC = {"algorithm": "fzoos", "objective": {"kind": "federated", "family": "quadratic", "n_clients": 5, "dim": 10},
        "budget": {"max_steps": 3}}


def test_a_valid_federated_spec_passes() -> None:
    assert job_create_adapter.validate_python(SPEC).objective.n_clients == 5


@pytest.mark.parametrize("objective", [
    {**SPEC["objective"], "n_client": 5},  # typo of n_clients
    {"kind": "federated", "clients": [{"objective": {"kind": "builtin", "function": "sphere", "dim": 3}, "wieght": 2.0},
                                      {"objective": {"kind": "builtin", "function": "sphere", "dim": 3}}]},
])
def test_unknown_federated_fields_are_refused(objective: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        job_create_adapter.validate_python({**SPEC, "objective": objective})
