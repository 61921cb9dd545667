"""Objective kind -> adapter. The one place that turns a validated spec into an adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Objective

Factory = Callable[[Any, int, Any], Objective]
_FACTORIES: dict[str, Factory] = {}


def register(kind: str) -> Callable[[Factory], Factory]:
    def deco(factory: Factory) -> Factory:
        _FACTORIES[kind] = factory
        return factory

    return deco


@register("builtin")
def _builtin(spec: Any, seed: int, settings: Any) -> Objective:
    from .builtin import BuiltinObjective

    return BuiltinObjective(spec.function, spec.dim, spec.noise, seed, getattr(spec, "latency_ms", 0.0))


@register("client")
def _client(spec: Any, seed: int, settings: Any) -> Objective:
    from .client import ClientObjective

    return ClientObjective(spec.dim)


@register("endpoint")
def _endpoint(spec: Any, seed: int, settings: Any) -> Objective:
    from .endpoint import EndpointObjective

    return EndpointObjective(spec, allow=settings.ssrf_allow)


@register("metric")
def _metric(spec: Any, seed: int, settings: Any) -> Objective:
    from .metric import MetricObjective

    path = None
    if spec.dataset_id:
        import redis

        from workers.celery_app import redis_url
        from workers.datasets import dataset_path

        path = dataset_path(redis.Redis.from_url(redis_url()), settings.data_dir / "datasets", spec.dataset_id)
    return MetricObjective(spec, dataset_path=path, allow=settings.ssrf_allow)


@register("ranking")
def _ranking(spec: Any, seed: int, settings: Any) -> Objective:
    from .ranking import BuiltinRankingOracle, ExternalRankingOracle

    if spec.oracle == "builtin":
        return BuiltinRankingOracle(spec.function, spec.dim, spec.noise, spec.flip_prob, seed, spec.x0)
    if spec.oracle in ("human", "client"):
        renderer = None
        if spec.render == "endpoint":
            from .render import CandidateRenderer

            renderer = CandidateRenderer(str(spec.render_url), spec.render_headers, spec.dim, allow=settings.ssrf_allow)
        return ExternalRankingOracle(spec.dim, seed, spec.render, spec.x0, renderer)
    from .ranking_endpoint import EndpointRankingOracle

    return EndpointRankingOracle(spec, seed, settings)


def build_objective(spec: Any, seed: int, settings: Any) -> Objective:
    """Build the adapter for a validated objective spec (``spec.kind`` picks the factory)."""
    try:
        factory = _FACTORIES[spec.kind]
    except KeyError:
        raise ValueError(f"no adapter for objective kind {spec.kind!r}") from None
    return factory(spec, seed, settings)
