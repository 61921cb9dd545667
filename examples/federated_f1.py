"""Federated, non-differentiable: five clients each hold a label-skewed shard of breast_cancer
and jointly maximise the mean F1 of one shared linear model, with queries only.

Each client's objective is −F1 on its own shard (a metric objective with ``shard``); the server
only ever sees iterates, surrogate weights and counters. Run a server first (`make run`), then:

    python examples/federated_f1.py [--url http://127.0.0.1:8000] [--method fedzo|fzoos] [--rounds 10]
"""

from __future__ import annotations

import argparse

import torch

import zoserve

CLIENTS = 5


def client(i: int) -> dict:
    return {"objective": {"kind": "metric", "metric": "f1", "dataset": "breast_cancer", "model": "logistic",
                          "shard": {"index": i, "count": CLIENTS, "label_skew": 0.8}}}


def test_f1(x: list[float]) -> float:
    """F1 of the shared model on the held-out test split (not seen by the job)."""
    from workers.objectives.metric import MetricObjective
    from zoserve.models.endpoint import MetricObjective as Spec

    spec = Spec.model_validate({k: v for k, v in client(0)["objective"].items() if k != "shard"})
    return MetricObjective(spec).test_metric(torch.tensor(x, dtype=torch.float64))


def main(url: str | None = None, method: str = "fedzo", rounds: int = 10, api_key: str | None = None,
         verbose: bool = True) -> dict[str, float]:
    config = {"rounds": rounds, "local_iters": 5, "lr": 0.05}
    if method == "fedzo":
        config.update(mu=0.05, q=10)
    with zoserve.Client(url, api_key=api_key) as c:
        job = c.jobs.create({"algorithm": method, "config": config, "name": "federated F1",
                             "objective": {"kind": "federated", "clients": [client(i) for i in range(CLIENTS)]},
                             "x0": [0.0] * 31, "budget": {"max_steps": rounds}}).wait(progress=verbose)
    before, after = test_f1([0.0] * 31), test_f1(job.result.x_best)
    if verbose:
        print(f"job {job.id}: test F1 {before:.3f} → {after:.3f} in {job.result.queries} queries over {rounds} rounds")
    return {"before": before, "after": after}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default=None)
    p.add_argument("--method", default="fedzo", choices=["fedzo", "fzoos"])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    main(args.url, args.method, args.rounds)
