"""Reading a finished job back: the SDK's typed ``jobs.get`` ÷ a plain ``httpx.get(...).json()``.

A result carries ``x_best`` (d floats), so at d = 1e5 a job's record is ~400 KB of JSON. For d in
{1e3, 1e4, 1e5} the bench runs a 3-step job (a non-round ``x0``, so every float is long) through the
service, then times, alternating, on one keep-alive connection:

* direct: ``httpx.get(job_url).json()`` (what a script without the SDK does; stdlib ``json``),
* SDK: ``client.jobs.get(id)`` (parsed by pydantic-core and validated into a typed ``Job``),
* page: one ``?after=0`` event page (the poll path; holds the result event too).

The API parses the stored JSON with orjson and the SDK with pydantic-core, so the typed read should not
be slower than the untyped one. Last line: one JSON object; ``ratio`` = direct ÷ SDK at d = 1e5
(target ≥ 1).

    python bench/result_read.py [--reps 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client"), str(ROOT / "bench")]

import httpx  # noqa: E402

from overhead import service  # noqa: E402

DIMS = (1_000, 10_000, 100_000)


def spec(d: int) -> dict[str, Any]:
    x0 = [((i * 7919) % 10007) / 10007 * 3.141592653589793 for i in range(d)]
    return {"algorithm": "zo-sgd", "config": {"q": 2, "lr": 1e-3}, "budget": {"max_steps": 3}, "x0": x0,
            "objective": {"kind": "builtin", "function": "sphere", "dim": d}}


def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each call, the calls alternating rep by rep."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=30)
    args = p.parse_args()
    rows = {}
    with service(30.0) as client, httpx.Client(base_url=str(client._http.base_url)) as http:
        for d in DIMS:
            job = client.jobs.create(spec(d)).wait()
            size = len(http.get(f"/v1/jobs/{job.id}").content)
            t = timed({"direct": lambda: http.get(f"/v1/jobs/{job.id}").json(),
                       "sdk": lambda: client.jobs.get(job.id),
                       "page": lambda: client.jobs.poll_events(job.id, after="0", limit=100)}, args.reps)
            rows[d] = {"bytes": size, **{k: round(v * 1e3, 2) for k, v in t.items()}}
    print(f"finished job read back, median ms of {args.reps} alternating calls")
    print(f"{'d':>8} {'bytes':>9} {'direct httpx+json':>18} {'SDK jobs.get':>13} {'event page':>11} {'direct ÷ SDK':>13}")
    for d, r in rows.items():
        print(f"{d:>8} {r['bytes']:>9} {r['direct']:>18} {r['sdk']:>13} {r['page']:>11} {r['direct'] / r['sdk']:>13.2f}")
    top = rows[DIMS[-1]]
    print(json.dumps({"bench": "result_read", "ratio": round(top["direct"] / top["sdk"], 3), "target": 1.0,
                      "ratio_of": f"httpx.get().json() ÷ client.jobs.get() of a finished d={DIMS[-1]} job (median ms)",
                      "ms": {str(d): r for d, r in rows.items()}}))


if __name__ == "__main__":
    main()
