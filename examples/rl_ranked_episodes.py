"""RL by ranked episodes: tune a linear CartPole policy with ZO-RankSGD from rankings alone.

The "oracle" here is a program that watches one episode per candidate policy and ranks them by
how long the pole stayed up. The optimiser never sees a return: only the ranking (as with a
person ranking video clips). Run a server first (`make run`), then:

    python examples/rl_ranked_episodes.py [--url http://127.0.0.1:8000] [--queries 300]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import zoserve

DIM = 4 * 2 + 2  # logits = W·obs + b for 2 actions


def episode_return(theta: np.ndarray, seed: int, max_steps: int = 500) -> float:
    """Return of one episode of the greedy linear policy ``theta`` (seeded environment)."""
    env = gym.make("CartPole-v1", max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    w, b = theta[:8].reshape(2, 4), theta[8:]
    total = 0.0
    for _ in range(max_steps):
        obs, reward, terminated, truncated, _ = env.step(int(np.argmax(w @ obs + b)))
        total += float(reward)
        if terminated or truncated:
            break
    env.close()
    return total


def mean_return(theta: np.ndarray, episodes: int = 10) -> float:
    return float(np.mean([episode_return(theta, seed=1000 + i) for i in range(episodes)]))


def main(url: str | None = None, queries: int = 300, api_key: str | None = None, verbose: bool = True) -> dict[str, float]:
    rounds = {"n": 0}

    def rank(candidates: list[dict]) -> list[str]:
        """The oracle: one episode per candidate (same seed within a query), best first."""
        rounds["n"] += 1
        returns = {c["id"]: episode_return(np.asarray(c["point"]), seed=rounds["n"]) for c in candidates}
        return sorted(returns, key=lambda cid: -returns[cid])

    with zoserve.Client(url, api_key=api_key) as client:
        job = client.jobs.create({
            "algorithm": "zo-ranksgd", "name": "cartpole by ranked episodes",
            "config": {"lr": 0.5, "mu": 0.1},
            "objective": {"kind": "ranking", "oracle": "client", "dim": DIM, "m": 6, "k": 3, "x0": 0.0},
            "budget": {"max_queries": queries}, "seed": 0,
        })
        done = client.jobs.serve(job.id, rank)
    theta = np.asarray(done.result.x_best)
    before, after = mean_return(np.zeros(DIM)), mean_return(theta)
    if verbose:
        print(f"job {done.id}: {done.progress.queries} ranking queries")
        print(f"mean return over 10 episodes: before {before:.1f}, after {after:.1f} (max 500)")
    return {"before": before, "after": after}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default=None)
    p.add_argument("--queries", type=int, default=300)
    args = p.parse_args()
    main(args.url, args.queries)
