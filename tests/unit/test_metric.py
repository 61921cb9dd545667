"""Metric objective: metrics agree with scikit-learn, batching changes nothing, layouts are as documented."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from sklearn import metrics as skm
from zoserve.models.endpoint import MetricObjective as MetricSpec

from workers.algorithms.base import Query
from workers.objectives.base import ObjectiveRefused
from workers.objectives.metric import MetricObjective, auc, decisions, forward, metric_of

SKLEARN = {
    "accuracy": lambda y, p, avg: skm.accuracy_score(y, p),
    "precision": lambda y, p, avg: skm.precision_score(y, p, average=avg, zero_division=0),
    "recall": lambda y, p, avg: skm.recall_score(y, p, average=avg, zero_division=0),
    "f1": lambda y, p, avg: skm.f1_score(y, p, average=avg, zero_division=0),
    "jaccard": lambda y, p, avg: skm.jaccard_score(y, p, average=avg, zero_division=0),
}


@pytest.mark.parametrize("name", sorted(SKLEARN))
@pytest.mark.parametrize(("n_classes", "average"), [(2, "binary"), (2, "macro"), (4, "macro")])
def test_label_metrics_agree_with_sklearn(name: str, n_classes: int, average: str) -> None:
    gen = torch.Generator().manual_seed(n_classes)
    y = torch.arange(60) % n_classes  # every class present, as in a stratified split
    pred = torch.randint(0, n_classes, (12, 60), generator=gen)
    pred[0] = 0  # degenerate rows: one class only (zero-division paths)
    pred[1] = y
    got = metric_of(name, average, pred, torch.zeros(12, 60), y, n_classes)
    want = [SKLEARN[name](y.numpy(), row.numpy(), average) for row in pred]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_auc_agrees_with_sklearn_including_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(80, generator=gen) < 0.4).long()
    scores = torch.randint(0, 6, (9, 80), generator=gen).double()  # many ties
    got = auc(scores, (y == 1).expand_as(scores))
    want = [skm.roc_auc_score(y.numpy(), row.numpy()) for row in scores]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_multiclass_auc_is_macro_one_vs_rest() -> None:
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(45) % 3
    probs = torch.softmax(torch.randn(5, 45, 3, generator=gen, dtype=torch.float64), dim=2)
    got = metric_of("auc", "macro", probs.argmax(2), probs, y, 3)
    want = [skm.roc_auc_score(y.numpy(), p.numpy(), multi_class="ovr", average="macro") for p in probs]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)


def test_logistic_f1_batched_equals_per_point() -> None:
    obj = MetricObjective(MetricSpec(metric="f1", dataset="breast_cancer", model="logistic"))
    assert obj.dim == 31 and obj.average == "binary"
    params = torch.randn(40, obj.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.2
    batched = obj.metric_values(params)
    single = torch.cat([obj.metric_values(p[None]) for p in params])
    assert torch.equal(batched, single) and len(set(batched.tolist())) > 5
    pred = (obj.split.x_train @ params[7, :30] + params[7, 30] > 0).long()
    assert float(batched[7]) == pytest.approx(skm.f1_score(obj.split.y_train.numpy(), pred.numpy()), abs=1e-12)


def test_mlp_layout_matches_a_torch_module() -> None:
    obj = MetricObjective(MetricSpec(metric="accuracy", dataset="iris", model="mlp", hidden=[5, 4]))
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
    ).double()
    flat = torch.cat([t.detach().flatten() for t in net.parameters()])  # weight, bias per layer
    assert obj.dim == flat.numel() == 4 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3
    with torch.no_grad():
        want = net(obj.split.x_train)
    torch.testing.assert_close(forward(flat[None], obj.split.x_train, obj.shapes)[0], want)
    pred, _ = decisions(want[None], 3)
    assert float(obj.metric_values(flat[None])[0]) == pytest.approx(skm.accuracy_score(obj.split.y_train, pred[0]))


def test_evaluate_minimises_minus_the_train_metric_and_ranks_ties() -> None:
    obj = MetricObjective(MetricSpec(metric="accuracy", dataset="wine"))
    x0 = obj.default_x0()
    assert torch.equal(x0, MetricObjective(MetricSpec(metric="accuracy", dataset="wine")).default_x0())
    points = torch.stack([x0, x0, torch.zeros_like(x0)])
    ev = asyncio.run(obj.evaluate(Query(points=points)))
    assert ev.answer.values is not None and (ev.queries, ev.failed) == (3, 0)
    torch.testing.assert_close(ev.answer.values, -obj.metric_values(points))
    ranked = asyncio.run(obj.evaluate(Query(points=points, kind="ranking")))
    assert (0, 1) in ranked.answer.ties
    assert 0.0 <= obj.test_metric(x0) <= 1.0


def test_split_is_stratified_standardised_and_seeded() -> None:
    a = MetricObjective(MetricSpec(metric="accuracy", dataset="digits", split_seed=3)).split
    b = MetricObjective(MetricSpec(metric="accuracy", dataset="digits", split_seed=4)).split
    assert len(a.y_test) == 450 and a.n_classes == 10
    totals = torch.bincount(torch.cat([a.y_train, a.y_test])).double()
    assert bool(((torch.bincount(a.y_test) - 0.25 * totals).abs() <= 1).all())  # stratified
    torch.testing.assert_close(a.x_train.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-12, rtol=0)
    assert not torch.equal(a.y_test, b.y_test)


def test_uploaded_npz_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    path = tmp_path / "data.npz"
    np.savez(path, X=x, y=np.where(x[:, 0] > 0, "yes", "no"))
    spec = MetricSpec(metric="accuracy", dataset_id="ds1", model="linear", standardize=False)
    obj = MetricObjective(spec, dataset_path=str(path))
    perfect = torch.tensor([10.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # x0 > 0 -> class 1 ("yes")
    assert obj.test_metric(perfect) == 1.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=x)
    with pytest.raises(ObjectiveRefused, match="'X' and 'y'"):
        MetricObjective(spec, dataset_path=str(bad))


def test_spec_validation() -> None:
    with pytest.raises(pydantic.ValidationError, match="two-class"):
        MetricSpec(metric="f1", dataset="digits", average="binary")
    with pytest.raises(pydantic.ValidationError, match="hidden"):
        MetricSpec(metric="f1", dataset="digits", model="mlp")
    with pytest.raises(pydantic.ValidationError, match="exactly one"):
        MetricSpec(metric="f1", dataset="digits", dataset_id="x")
    with pytest.raises(pydantic.ValidationError, match="endpoint"):
        MetricSpec(metric="f1", dataset="digits", model="endpoint")
