"""Metric objective: tune a model's parameters for a non-differentiable metric (MeZO-style use).

The value to minimise is −metric on the train split (``test_metric`` reports the held-out one).
All points of a step are scored in one vectorised pass: the parameter vectors are stacked into
``(P, D)`` and each layer runs as one batched matmul over ``(P, N, ·)``, then the confusion
matrices of all P models come from a single ``scatter_add``.

Metrics follow scikit-learn's definitions with ``zero_division=0``: accuracy, precision,
recall, f1, jaccard (binary: positive label 1; macro: mean over all classes of the dataset)
and ROC AUC (binary, or macro one-vs-rest on softmax scores), with ties given average ranks.

Models (parameter layout, per layer: weight ``(out, in)`` row-major, then bias ``(out,)``):
``logistic``/``linear`` (aliases: the metrics only see decisions and score orderings, on which
the two agree), ``mlp`` (tanh hidden layers) — one output for two classes, else one per
class — and ``endpoint``: one offset per class added to the served model's outputs, which are
fetched once per adapter (threshold tuning of a deployed classifier).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from zoserve.models.endpoint import MetricObjective as MetricSpec

from workers.algorithms.base import Query
from workers.objectives.base import Evaluation, ObjectiveInvalid, ObjectiveRefused
from workers.objectives.endpoint import EndpointObjective, answer_from_values

_CHUNK_FLOATS = 2**24  # cap on P_chunk * N * width per forward pass (128 MiB in float64)


@dataclass(frozen=True)
class Split:
    """A standardised, stratified train/test split with labels in ``0..n_classes-1``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int


def _load_arrays(dataset: str | None, path: str | None) -> tuple[np.ndarray, np.ndarray]:
    if dataset is not None:
        import sklearn.datasets as skd

        data = getattr(skd, f"load_{dataset}")()
        return np.asarray(data.data, dtype=np.float64), np.asarray(data.target)
    if path is None:
        raise ObjectiveRefused("the uploaded dataset was not found")
    with np.load(path, allow_pickle=False) as npz:
        if "X" not in npz or "y" not in npz:
            raise ObjectiveRefused("the .npz dataset needs arrays 'X' and 'y'")
        x, y = np.asarray(npz["X"]), np.asarray(npz["y"])
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(x.dtype, np.number):
        raise ObjectiveRefused(f"dataset arrays have shapes X{x.shape}, y{y.shape}; need X (n, f) numeric and y (n,)")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ObjectiveRefused("dataset X has non-finite values")
    return x, y


@functools.lru_cache(maxsize=16)
def _cached_split(
    dataset: str | None, path: str | None, mtime: int, seed: int, test_fraction: float, standardize: bool
) -> Split:
    from sklearn.model_selection import train_test_split

    x, y_raw = _load_arrays(dataset, path)
    classes, y = np.unique(y_raw, return_inverse=True)
    if not 2 <= len(classes) <= 1000:
        raise ObjectiveRefused(f"dataset has {len(classes)} classes; need 2..1000")
    try:
        parts = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class too small to stratify: plain random split
        parts = train_test_split(x, y, test_size=test_fraction, random_state=seed)
    x_tr, x_te, y_tr, y_te = parts
    if standardize:
        mean, std = x_tr.mean(0), x_tr.std(0)
        std[std == 0] = 1.0
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    t = functools.partial(torch.tensor, dtype=torch.float64)
    return Split(t(x_tr), torch.tensor(y_tr), t(x_te), torch.tensor(y_te), len(classes))


def shard_rows(y: Tensor, index: int, count: int, skew: float, seed: int) -> Tensor:
    """Rows of shard ``index``: each row goes, with probability ``skew``, to a shard whose home
    class (``shard % n_classes``) is its label, otherwise to a uniformly random shard."""
    gen = torch.Generator().manual_seed(seed)
    n_classes = int(y.max()) + 1
    homes = [[s for s in range(count) if s % n_classes == c] or list(range(count)) for c in range(n_classes)]
    owner = torch.randint(count, (len(y),), generator=gen)
    skewed = torch.rand(len(y), generator=gen) < skew
    pick = torch.rand(len(y), generator=gen)
    for i in skewed.nonzero().flatten().tolist():
        home = homes[int(y[i])]
        owner[i] = home[int(pick[i] * len(home))]
    return (owner == index).nonzero().flatten()


def load_split(dataset: str | None, path: str | None, seed: int, test_fraction: float, standardize: bool) -> Split:
    """Load a bundled or uploaded dataset and split it (cached per process)."""
    mtime = os.stat(path).st_mtime_ns if path is not None and os.path.exists(path) else 0
    return _cached_split(dataset, path, mtime, seed, test_fraction, standardize)


# --- metrics, batched over P prediction rows ------------------------------------------------


def confusion(pred: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Confusion matrices ``(P, C, C)`` indexed ``[p, predicted, true]`` for ``pred (P, N)``."""
    index = pred * n_classes + y
    counts = torch.zeros(pred.shape[0], n_classes * n_classes, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    return counts.reshape(-1, n_classes, n_classes)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))


def auc(scores: Tensor, positive: Tensor) -> Tensor:
    """ROC AUC per row of ``scores (R, N)`` (Mann–Whitney U with average ranks for ties)."""
    ordered = scores.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, scores.contiguous(), side="left")
    upto = torch.searchsorted(ordered, scores.contiguous(), side="right")
    ranks = (below + upto + 1).to(torch.float64) / 2
    n_pos = positive.sum(1).to(torch.float64)
    n_neg = scores.shape[1] - n_pos
    u = (ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2
    return _ratio(u, n_pos * n_neg).where((n_pos > 0) & (n_neg > 0), torch.full_like(u, 0.5))


def metric_of(name: str, average: str, pred: Tensor, scores: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Metric ``(P,)`` of predictions ``(P, N)``; ``scores`` are ``(P, N)`` (binary) or ``(P, N, C)``."""
    if name == "auc":
        if scores.ndim == 2:
            return auc(scores, (y == 1).expand_as(scores))
        p, n, c = scores.shape
        one_vs_rest = (y[None, :] == torch.arange(c)[:, None]).repeat(p, 1)
        per_class = auc(scores.permute(0, 2, 1).reshape(p * c, n), one_vs_rest)
        return per_class.reshape(p, c).mean(1)
    conf = confusion(pred, y, n_classes)
    tp = conf.diagonal(dim1=1, dim2=2)
    predicted, actual = conf.sum(2), conf.sum(1)
    if name == "accuracy":
        return tp.sum(1) / pred.shape[1]
    per_class = {
        "precision": lambda: _ratio(tp, predicted),
        "recall": lambda: _ratio(tp, actual),
        "f1": lambda: _ratio(2 * tp, predicted + actual),
        "jaccard": lambda: _ratio(tp, predicted + actual - tp),
    }[name]()
    return per_class[:, 1] if average == "binary" else per_class.mean(1)


# --- models ----------------------------------------------------------------------------------


def layer_shapes(n_features: int, hidden: Sequence[int], n_out: int) -> list[tuple[int, int]]:
    """``(out, in)`` per layer."""
    sizes = [n_features, *hidden, n_out]
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]


def forward(params: Tensor, x: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
    """Outputs ``(P, N, out)`` of P stacked models on ``x (N, F)``; tanh between layers."""
    h, offset = x, 0
    for i, (out, inp) in enumerate(shapes):
        weight = params[:, offset : offset + out * inp].reshape(-1, out, inp)
        offset += out * inp
        bias = params[:, offset : offset + out]
        offset += out
        h = torch.matmul(h, weight.transpose(1, 2)) + bias[:, None, :]
        if i < len(shapes) - 1:
            h = torch.tanh(h)
    return h


def decisions(outputs: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """Predicted labels ``(P, N)`` and AUC scores: ``(P, N)`` for two classes, else softmax ``(P, N, C)``."""
    if outputs.shape[2] == 1:
        score = outputs[..., 0]
        return (score > 0).long(), score
    pred = outputs.argmax(2)
    if n_classes == 2:
        return pred, outputs[..., 1] - outputs[..., 0]
    return pred, torch.softmax(outputs, dim=2)


# --- the adapter -----------------------------------------------------------------------------


class MetricObjective:
    """Adapter: query points are parameter vectors; value = −metric on the train split.

    Args:
        spec: the validated metric spec.
        dataset_path: the ``.npz`` file behind ``spec.dataset_id`` (resolved by the service).
        allow: the SSRF allow-list, passed to the endpoint adapter (``model="endpoint"``).
    """

    def __init__(
        self,
        spec: MetricSpec,
        *,
        dataset_path: str | None = None,
        allow: Sequence[str] = (),
    ):
        self.spec = spec
        self.split = load_split(spec.dataset, dataset_path, spec.split_seed, spec.test_fraction, spec.standardize)
        if spec.shard is not None:
            rows = shard_rows(self.split.y_train, spec.shard.index, spec.shard.count, spec.shard.label_skew, spec.shard.seed)
            self.split = Split(self.split.x_train[rows], self.split.y_train[rows], self.split.x_test, self.split.y_test,
                               self.split.n_classes)
        self.n_classes = self.split.n_classes
        self.average = spec.average or ("binary" if self.n_classes == 2 else "macro")
        if self.average == "binary" and self.n_classes != 2:
            raise ObjectiveRefused(f"average 'binary' needs two classes; the dataset has {self.n_classes}")
        n_features = self.split.x_train.shape[1]
        self.endpoint: EndpointObjective | None = None
        self._outputs: dict[str, Tensor] = {}
        if spec.model == "endpoint":
            assert spec.endpoint is not None
            self.endpoint = EndpointObjective(spec.endpoint, allow=allow)
            if self.endpoint.dim != n_features:
                raise ObjectiveRefused(f"endpoint dim={self.endpoint.dim} but the dataset has {n_features} features")
            self.shapes: list[tuple[int, int]] = []
            self.dim = self.n_classes
        else:
            n_out = 1 if self.n_classes == 2 else self.n_classes
            self.shapes = layer_shapes(n_features, spec.hidden if spec.model == "mlp" else [], n_out)
            self.dim = sum(out * inp + out for out, inp in self.shapes)

    def default_x0(self) -> Tensor:
        """Seeded N(0, 1/fan_in) weights with zero biases; zero offsets for an endpoint model."""
        x0 = torch.zeros(self.dim, dtype=torch.float64)
        gen = torch.Generator().manual_seed(self.spec.split_seed)
        offset = 0
        for out, inp in self.shapes:
            weights = torch.randn(out * inp, generator=gen, dtype=torch.float64)
            x0[offset : offset + out * inp] = weights / math.sqrt(inp)
            offset += out * inp + out
        return x0

    async def prefetch(self) -> None:
        """Fetch the endpoint model's outputs on both splits once (no-op for local models)."""
        if self.endpoint is None or self._outputs:
            return
        for name, x in (("train", self.split.x_train), ("test", self.split.x_test)):
            out = await self.endpoint.predict(x)
            if out.shape[1] == 1 and self.n_classes == 2:  # one score: the logit of class 1
                out = torch.cat([torch.zeros_like(out), out], dim=1)
            if out.shape[1] != self.n_classes:
                message = f"endpoint returns {out.shape[1]} outputs; the dataset has {self.n_classes} classes"
                raise ObjectiveRefused(message)
            if self.endpoint.spec.scores == "probabilities":
                out = out.clamp_min(1e-30).log()
            self._outputs[name] = out

    def metric_values(self, params: Tensor, split: str = "train") -> Tensor:
        """The metric ``(P,)`` of each parameter vector in ``params (P, dim)`` on a split."""
        params = torch.as_tensor(params, dtype=torch.float64).reshape(-1, self.dim)
        x, y = (self.split.x_train, self.split.y_train) if split == "train" else (self.split.x_test, self.split.y_test)
        width = max([out for out, _ in self.shapes] + [self.n_classes])
        step = max(1, _CHUNK_FLOATS // (len(x) * width))
        return torch.cat([self._metric_chunk(chunk, x, y, split) for chunk in torch.split(params, step)])

    def _metric_chunk(self, params: Tensor, x: Tensor, y: Tensor, split: str) -> Tensor:
        if self.endpoint is not None:
            if split not in self._outputs:
                raise RuntimeError("call `await prefetch()` before scoring an endpoint model")
            outputs = self._outputs[split][None, :, :] + params[:, None, :]
        else:
            outputs = forward(params, x, self.shapes)
        pred, scores = decisions(outputs, self.n_classes)
        return metric_of(self.spec.metric, self.average, pred, scores, y, self.n_classes)

    def test_metric(self, x: Tensor) -> float:
        """The metric of one parameter vector on the held-out split (for reporting)."""
        return float(self.metric_values(torch.as_tensor(x).reshape(1, -1), split="test")[0])

    async def evaluate(self, query: Query) -> Evaluation:
        """−metric on the train split for every point, in one batched pass."""
        points = torch.as_tensor(query.points)
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ObjectiveRefused(f"query points have shape {tuple(points.shape)}; expected (n, {self.dim})")
        if not bool(torch.isfinite(points).all()):
            raise ObjectiveInvalid("a query point has non-finite coordinates")
        await self.prefetch()
        values = -self.metric_values(points)
        n = len(values)
        return Evaluation(answer_from_values(query, values), queries=n, evaluations=n)

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation:
        """Metric objectives answer at once; nothing is ever pending."""
        raise NotImplementedError("metric objectives never return Pending")

    async def aclose(self) -> None:
        """Close the endpoint's connection pool, if any."""
        if self.endpoint is not None:
            await self.endpoint.aclose()
