"""Image preference: steer a procedural image towards "a warm sunset" by ranking rounds.

A stand-in rater prefers warmer, lower suns; swap ``rate`` for your own judgement (or open the
job's ranking form in the browser: /ui/jobs/{id}/rank). Run a server first (`make run`), then:

    python examples/image_preference.py [--url http://127.0.0.1:8000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import math

import zoserve

DIM = 6  # sky hue, sky brightness, sun height, sun size, sun hue, horizon


def warmth(p: list[float]) -> float:
    """How 'warm sunset' a parameter vector looks to our stand-in rater (higher is better)."""
    sig = [1 / (1 + math.exp(-v)) for v in p]
    sky_hue, bright, sun_h, size, sun_hue, horizon = sig
    return -(sky_hue - 0.05) ** 2 - (sun_hue - 0.1) ** 2 - (sun_h - 0.25) ** 2 - 0.5 * (bright - 0.6) ** 2 + 0.1 * size - 0.2 * (horizon - 0.7) ** 2


def main(url: str | None = None, rounds: int = 40, api_key: str | None = None, verbose: bool = True) -> dict[str, float]:
    def rate(candidates: list[dict]) -> list[str]:
        return [c["id"] for c in sorted(candidates, key=lambda c: -warmth(c["point"]))]

    with zoserve.Client(url, api_key=api_key) as client:
        job = client.jobs.create({
            "algorithm": "zo-ranksgd", "name": "warm sunset",
            "objective": {"kind": "ranking", "oracle": "client", "dim": DIM, "m": 4, "k": 1, "render": "image", "x0": 0.0},
            "config": {"lr": 1.0, "mu": 0.3}, "budget": {"max_queries": rounds}, "seed": 0,
        })
        done = client.jobs.serve(job.id, rate)
    start, end = warmth([0.0] * DIM), warmth(done.result.x_best)
    if verbose:
        print(f"job {done.id}: warmth {start:.3f} → {end:.3f} after {done.progress.queries} rankings")
    return {"before": start, "after": end}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", default=None)
    p.add_argument("--rounds", type=int, default=40)
    args = p.parse_args()
    main(args.url, args.rounds)
