"""The catalog: every algorithm config and objective spec the API accepts.

Adding an algorithm or an objective kind means adding its class here, nothing else.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, Field

from .algorithms import ZO_CONFIGS
from .defense import ClassifierObjective, ZOAEDSConfig
from .endpoint import EndpointObjective, MetricObjective
from .federated import FEDERATED_CONFIGS, FederatedObjective
from .objectives import BuiltinObjective, ClientObjective
from .ranking import RankingObjective, ZORankSGDConfig

ALGORITHM_CONFIGS: tuple[type[BaseModel], ...] = (*ZO_CONFIGS, ZORankSGDConfig, *FEDERATED_CONFIGS, ZOAEDSConfig)

OBJECTIVE_SPECS: tuple[type[BaseModel], ...] = (
    BuiltinObjective, ClientObjective, EndpointObjective, MetricObjective, RankingObjective, FederatedObjective,
    ClassifierObjective,
)

ObjectiveSpec = Annotated[Union[OBJECTIVE_SPECS], Field(discriminator="kind")]  # type: ignore[valid-type]
"""The ``objective`` field of a job: a discriminated union on ``kind``."""
