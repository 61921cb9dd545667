"""Public algorithm names → factories of pure :class:`~workers.algorithms.base.Algorithm` objects.

Other modules add their algorithms with ``register("name", factory)`` at import time; the
module that wires the worker imports them. A factory takes the plain hyperparameters that
the matching config model's ``hparams()`` returns, as keyword arguments.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from workers.algorithms.base import Algorithm
from workers.algorithms.rank_sgd import ZORankSGD
from workers.algorithms.zo import ZOSGD, ZOAdam, ZOSignSGD

AlgorithmFactory = Callable[..., Algorithm]

ALGORITHMS: dict[str, AlgorithmFactory] = {
    "zo-sgd": ZOSGD,
    "zo-adam": ZOAdam,
    "zo-signsgd": ZOSignSGD,
    "zo-ranksgd": ZORankSGD,
}


def register(name: str, factory: AlgorithmFactory, *, replace: bool = False) -> None:
    """Make ``factory`` buildable as ``name``; refuses to shadow a name unless ``replace``."""
    if not name or name != name.strip():
        raise ValueError(f"invalid algorithm name {name!r}")
    if name in ALGORITHMS and ALGORITHMS[name] is not factory and not replace:
        raise ValueError(f"algorithm {name!r} is already registered")
    ALGORITHMS[name] = factory


def build_algorithm(name: str, hparams: Mapping[str, Any]) -> Algorithm:
    """Instantiate algorithm ``name`` with keyword hyperparameters ``hparams``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the known names).
        ValueError: the factory rejects ``hparams`` (unknown keyword or bad value).
    """
    try:
        factory = ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(sorted(ALGORITHMS))}") from None
    try:
        return factory(**dict(hparams))
    except TypeError as exc:  # unexpected or missing keyword
        raise ValueError(f"bad hyperparameters for {name!r}: {exc}") from exc
