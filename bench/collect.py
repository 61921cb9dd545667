"""Run the CPU benchmark set and gather each bench's last output line (one JSON object).

Each bench runs in its own process, its output shown as it comes. The last line of each is
written, with the command, its wall time and the machine, to ``bench/out/results.jsonl``; a
summary table (bench, ratio, target, met?) ends the run. Exit status 1 if a bench failed or
printed no JSON (a target not met is not a failure).

``result_read`` (reading a finished high-dimensional job back) has no target in the issue; its
own is that the SDK's typed read is no slower than ``httpx.get(...).json()``.
The algorithm benches (ranksgd, fzoos, zo_ae_ds; scaleout with ``--scaleout``) run with
``--quick`` (fewer seeds, steps, points or jobs; same code) unless ``--full``; the others run
with their defaults. ``make bench`` runs this; on the 2-core VM the set costs about 7 min of
CPU, and its wall time grows with the load from other work (bench/RESULTS.md).

    python bench/collect.py [--full] [--scaleout] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "results.jsonl"


@dataclass(frozen=True)
class Bench:
    name: str
    goal: str  # "<=" or ">=": how ratio must compare with target
    quick: tuple[str, ...] = ()  # arguments without --full


SUITE = (
    Bench("overhead", ">="),
    Bench("endpoint_throughput", ">=", ("--rounds", "5", "--round-seconds", "3")),  # 5 shorter rounds: a steadier median
    Bench("events_latency", "<="),
    Bench("engine", "<="),
    Bench("api_load", ">="),
    Bench("result_read", ">="),
    Bench("ranksgd", "<=", ("--quick",)),
    Bench("fzoos", "<=", ("--quick",)),
    Bench("zo_ae_ds", ">=", ("--quick",)),
)
SCALEOUT = Bench("scaleout", ">=", ("--quick",))


def machine() -> dict[str, Any]:
    """What the figures depend on: cores, CPU, Python, load when the bench started."""
    return {"node": platform.node(), "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def run(bench: Bench, full: bool) -> dict[str, Any]:
    """Run one bench, echoing its output; its last line parsed, plus how it ran."""
    cmd = [sys.executable, f"bench/{bench.name}.py", *(() if full else bench.quick)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client"), os.environ.get("PYTHONPATH", "")])}
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    meta = {"command": " ".join(["python", *cmd[1:]]), "machine": machine()}
    start, last = time.perf_counter(), ""
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            last = line.strip() or last
    meta |= {"wall_s": round(time.perf_counter() - start, 1), "rc": proc.returncode}
    try:
        result = json.loads(last)
        assert isinstance(result, dict) and {"bench", "ratio", "target"} <= result.keys()
    except (ValueError, AssertionError):
        result = {"bench": bench.name, "ratio": None, "target": None, "error": f"last line not the JSON: {last[:200]!r}"}
    return result | {"collect": meta}


def met(bench: Bench, result: dict[str, Any]) -> str:
    ratio, target = result.get("ratio"), result.get("target")
    if "error" in result or result["collect"]["rc"]:
        return "FAILED"
    if ratio is None or target is None:
        return "no ratio"
    return "yes" if (ratio <= target if bench.goal == "<=" else ratio >= target) else "no"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="benches to run (default: the whole set)")
    ap.add_argument("--full", action="store_true", help="the algorithm benches at full size (~10 min more)")
    ap.add_argument("--scaleout", action="store_true", help="also bench/scaleout.py (~2 min with --quick)")
    args = ap.parse_args()
    suite = SUITE + ((SCALEOUT,) if args.scaleout or "scaleout" in args.names else ())
    chosen = [b for b in suite if not args.names or b.name in args.names]
    unknown = set(args.names) - {b.name for b in chosen}
    if unknown:
        ap.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    start, rows = time.perf_counter(), []
    with OUT.open("w") as out:
        for bench in chosen:
            result = run(bench, args.full)
            out.write(json.dumps(result) + "\n")
            out.flush()
            rows.append((bench, result))
    print(f"\n{'bench':<22}{'ratio':>10}  {'goal':<9}{'met?':<10}{'wall s':>8}")
    for bench, r in rows:
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.4g}"
        goal = f"{bench.goal} {r['target']:g}" if r.get("target") is not None else "-"
        print(f"{bench.name:<22}{ratio:>10}  {goal:<9}{met(bench, r):<10}{r['collect']['wall_s']:>8}")
    print(f"total {time.perf_counter() - start:.0f} s; results in {OUT.relative_to(ROOT)}")
    sys.exit(1 if any(met(b, r) == "FAILED" for b, r in rows) else 0)


if __name__ == "__main__":
    main()
