"""Engine: batched RGE steps vs a per-query loop, and MeZO memory ÷ one plain forward.

(a) RGE step throughput: ZO-SGD (workers/algorithms/zo.py; RGE, Gaussian, forward, q = 10,
    float32) on the quadratic f(x) = Σ x² for d ∈ {1e3, 1e5, 1e7}: one ask → ONE batched
    objective call on the (q+1, d) points → tell, against a naive loop that draws one direction
    and makes one objective call per perturbation. Plus a small MLP (ModuleLoss): one vmapped
    forward of the q+1 parameter sets vs one forward per set. Both sides alternate in rounds in
    this one process; the median of the per-round ratios counts.
(b) Memory: peak RSS (``VmHWM``, see ``peak_rss_kb``) of a fresh subprocess per case (median
    of 5), minus the RSS after imports and before the model is built, so each figure is the
    weights plus everything the case adds. Cases: one no-grad forward of the loss, one MeZO step
    (q = 1, fused), one backprop SGD step for reference, on an MLP of ~1e7 parameters (the
    headline ``ratio``) and on a small transformer LM. Target: MeZO ≤ 1.1 × forward.
    ``--pin-mmap`` runs the children with glibc's mmap threshold fixed, which removes most of the
    allocator's run-to-run spread (a few MB of freed blocks kept in the heap).
(c) Small transformer LM (~3.7M params, batch 8 × 64 tokens): MeZO queries/s ÷ inference
    forwards/s (a step is 2 forwards + 3 regenerate-and-modify passes).

Timing: on CPU a rate is steps per second of this thread's CPU time (``time.thread_time``;
torch runs one thread here), so time spent waiting for a core on a shared machine does not
count; ``--clock wall`` uses wall time instead. ``--device cuda`` runs the same with wall
timings (synchronised) and ``max_memory_allocated`` instead of RSS; without CUDA it says so
and exits 0. A speedup is the median over rounds of (batched ÷ naive) within each round.
``--pin-heap`` fixes glibc's mmap and trim thresholds in this process (see ``pin_heap``).
``--only a,c`` runs some parts. Last line: one JSON object.

    OMP_NUM_THREADS=1 PYTHONPATH=.:client .venv/bin/python bench/engine.py [--device cuda] [--quick] [--only a]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from workers.algorithms.base import Answer, step_generator  # noqa: E402
from workers.algorithms.local import ModuleLoss  # noqa: E402
from workers.algorithms.mezo import MeZO, MeZOConfig  # noqa: E402
from workers.algorithms.zo import ZOSGD  # noqa: E402

Q, MU, LR = 10, 1e-3, 1e-3
MEM_TARGET = 1.1


def quad(points: Tensor) -> Tensor:
    """The cheap quadratic, batched over rows (a 1-D x gives a scalar)."""
    return (points * points).sum(-1)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CLOCK: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def timed(step: Callable[[], None], device: str, seconds: float, clock: str = "wall") -> Callable[[], float]:
    """A runner that repeats ``step`` for at least ``seconds`` of wall time (and once at least);
    returns steps per second of ``clock`` (``"cpu"``: this thread's CPU time)."""
    now = CLOCK[clock]

    def run() -> float:
        n = 0
        sync(device)
        t0, c0 = time.perf_counter(), now()
        while n == 0 or time.perf_counter() - t0 < seconds:
            step()
            n += 1
            if n % 16 == 0:
                sync(device)
        sync(device)
        return n / (now() - c0)

    return run


def pin_heap() -> bool:
    """Fix glibc's mmap threshold at 32 MiB and its trim threshold at 256 MiB in this process.

    By default glibc raises both with the largest block freed so far, so whether a freed
    4 MB batch of points goes back to the OS (and the next one page-faults in again, ~1000
    faults at d = 1e5) depends on what the process allocated before. Pinned, blocks up to
    32 MiB are reused from the heap. Returns False where glibc's ``mallopt`` is missing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 256 << 20))  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def rge_batched(d: int, device: str, seconds: float, clock: str = "wall") -> Callable[[], float]:
    """ZO-SGD ask/tell with ONE batched objective call per step."""
    algo = ZOSGD(lr=LR, q=Q, mu=MU, dtype="float32")
    state = algo.init(torch.ones(d, device=device), seed=0)

    def step() -> None:
        nonlocal state
        query = algo.ask(state)
        state, _ = algo.tell(state, query, Answer(values=quad(query.points)))

    return timed(step, device, seconds, clock)


def rge_naive(d: int, device: str, seconds: float, clock: str = "wall") -> Callable[[], float]:
    """The same estimate with one direction draw and one objective call per perturbation."""
    x = torch.ones(d, device=device)
    t = 0

    def step() -> None:
        nonlocal x, t
        gen = step_generator(0, t, device=device)
        f0, g = quad(x), torch.zeros_like(x)
        for _ in range(Q):
            u = torch.randn(d, generator=gen, device=device)
            g.add_(u, alpha=float(quad(x + MU * u) - f0) / MU)
        x = x - (LR / Q) * g
        t += 1

    return timed(step, device, seconds, clock)


def mlp_objective(device: str) -> ModuleLoss:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 1)).to(device)
    x = torch.randn(64, 32, device=device)
    return ModuleLoss(model.eval(), F.mse_loss, x, torch.sin(x[:, :1]))


def mlp_runner(batched: bool, device: str, seconds: float, clock: str = "wall") -> Callable[[], float]:
    f = mlp_objective(device)
    algo = ZOSGD(lr=1e-3, q=Q, mu=MU, dtype="float32")
    state = algo.init(f.flat(), seed=0)
    values = f.values if batched else f.values_loop

    def step() -> None:
        nonlocal state
        query = algo.ask(state)
        state, _ = algo.tell(state, query, Answer(values=values(query.points)))

    return timed(step, device, seconds, clock)


def side_by_side(fast: Callable[[], float], slow: Callable[[], float], rounds: int) -> tuple[float, float, list[float]]:
    """Median steps/s of each after one warm-up round, alternating to share the machine's noise,
    and each round's ratio fast ÷ slow (the two halves of a round see about the same load)."""
    fast(), slow()
    a, b = [], []
    for _ in range(rounds):
        a.append(fast())
        b.append(slow())
    return statistics.median(a), statistics.median(b), [x / y for x, y in zip(a, b)]


# ---------------------------------------------------------------- models for memory and speed
def big_mlp(width: int = 912, depth: int = 12) -> nn.Module:
    """~1e7 parameters in 12 equal layers (the largest tensor is 8% of the weights)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers)


class TinyLM(nn.Module):
    """A small causal transformer LM (pre-norm encoder layers with a causal mask)."""

    mask: Tensor

    def __init__(self, vocab: int = 1000, dim: int = 256, layers: int = 4, heads: int = 4, ctx: int = 64) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, dim), nn.Embedding(ctx, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        h = self.emb(tokens) + self.pos(torch.arange(t, device=tokens.device))
        out: Tensor = self.head(self.body(h, mask=self.mask[:t, :t], is_causal=True))
        return out


def make_case(model_kind: str, device: str) -> tuple[nn.Module, Callable[[], Tensor], Callable[[], Tensor]]:
    """(model, bare forward call, loss closure) on a fixed batch."""
    g = torch.Generator().manual_seed(0)
    if model_kind == "mlp":
        model = big_mlp().to(device)
        x = torch.randn(64, 912, generator=g).to(device)
        y = torch.randn(64, 912, generator=g).to(device)
        return model, lambda: model(x), lambda: F.mse_loss(model(x), y)
    model = TinyLM().to(device)
    tokens = torch.randint(0, 1000, (8, 65), generator=g).to(device)
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    return model, lambda: model(inp), lambda: F.cross_entropy(model(inp).flatten(0, 1), tgt.flatten())


def reset_peak_rss() -> None:
    """Lower this process's RSS high-water mark to its current RSS (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the baseline may sit above the case's peak; the figures then read 0


def peak_rss_kb() -> int:
    """The RSS high-water mark in kB: ``VmHWM``, or ``ru_maxrss`` where /proc is missing.

    Not ``ru_maxrss`` first: on Linux it also keeps the high-water mark inherited through
    fork + exec (the parent's RSS at fork), which ``clear_refs`` cannot lower, so a child of
    a big parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_case(model_kind: str, case: str, device: str) -> None:
    """Child process: build the model, run ONE case, print the RSS / CUDA marks as JSON."""
    torch.set_num_threads(1)
    reset_peak_rss()  # import-time transients must not hide the case's own peak
    base = peak_rss_kb()
    if device == "cuda":
        torch.cuda.init()  # type: ignore[no-untyped-call]
    model, forward, loss = make_case(model_kind, device)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    built = peak_rss_kb()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    if case == "forward":  # inference of the same objective the ZO step evaluates
        with torch.no_grad():
            loss().item()
    elif case == "mezo":
        MeZO(model, MeZOConfig(lr=1e-6, q=1)).step(loss).slopes.item()
    elif case == "backprop":
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        loss().backward()  # type: ignore[no-untyped-call]
        opt.step()
    peak = peak_rss_kb()
    out = {"base_kb": base, "built_kb": built, "peak_kb": peak, "params": n_params}
    if device == "cuda":
        out.update(cuda_base=cuda_base, cuda_peak=torch.cuda.max_memory_allocated())
    print(json.dumps(out))


def measure(model_kind: str, case: str, device: str, repeats: int = 1, pin_mmap: bool = False) -> dict[str, float]:
    """One case in a fresh interpreter per repeat (a high-water mark allows one case per
    process); the median total. ``pin_mmap`` fixes glibc's mmap threshold at its default
    128 KiB, so freed multi-MB blocks go back to the OS instead of staying in the heap."""
    cmd = [sys.executable, __file__, "--child", model_kind, case, "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({"MALLOC_MMAP_THRESHOLD_": "131072"} if pin_mmap else {})}
    runs = []
    for _ in range(repeats):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=300)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if device == "cuda":  # device memory: everything allocated (weights included) at the peak
        total = [r["cuda_peak"] / 2**20 for r in runs]
        weights = runs[0]["cuda_base"] / 2**20
    else:
        total = [(r["peak_kb"] - r["base_kb"]) / 1024 for r in runs]
        weights = (runs[0]["built_kb"] - runs[0]["base_kb"]) / 1024
    return {"total_mb": statistics.median(total), "weights_mb": weights, "params": runs[0]["params"]}


def lm_speed(device: str, rounds: int) -> dict[str, float]:
    """Inference forwards/s vs MeZO queries/s (2 forwards per q = 1 step) on the tiny LM."""
    torch.manual_seed(0)
    model, forward, loss = make_case("lm", device)
    model.eval()
    opt = MeZO(model, MeZOConfig(lr=1e-6, q=1))

    def infer() -> float:
        n = 6
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                loss()
        sync(device)
        return n / (time.perf_counter() - t0)

    def zo() -> float:
        n = 3
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            opt.step(loss)
        sync(device)
        return 2 * n / (time.perf_counter() - t0)

    q_s, f_s, _ = side_by_side(zo, infer, rounds)
    return {"queries_per_s": q_s, "forwards_per_s": f_s, "ratio": q_s / f_s,
            "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--only", default="abc", help="parts to run, e.g. 'a' or 'a,c' (default: all)")
    ap.add_argument("--clock", default="auto", choices=("auto", "cpu", "wall"),
                    help="(a)'s rates per second of thread CPU time or of wall time (auto: cpu on CPU)")
    ap.add_argument("--pin-heap", action="store_true", help="fix glibc's mmap/trim thresholds in this process")
    ap.add_argument("--pin-mmap", action="store_true", help="children run with MALLOC_MMAP_THRESHOLD_=131072")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("engine bench: --device cuda asked for but CUDA is not available here; nothing to run.")
        print(json.dumps({"bench": "engine", "device": "cuda", "ratio": None, "target": MEM_TARGET,
                          "skipped": "CUDA not available"}))
        return
    if args.child:
        run_case(args.child[0], args.child[1], args.device)
        return
    torch.set_num_threads(1)
    dev, rounds, secs = args.device, (2 if args.quick else 5), (0.3 if args.quick else 1.0)
    reps = 1 if args.quick else 5
    parts = set(args.only.replace(",", ""))
    clock = ("cpu" if dev == "cpu" else "wall") if args.clock == "auto" else args.clock
    pinned = pin_heap() if args.pin_heap else False
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, torch {torch.__version__}, 1 thread"
    print(f"engine bench on {name}" + (", glibc heap pinned" if pinned else ""))
    out: dict[str, object] = {"bench": "engine", "device": dev, "ratio": None, "target": MEM_TARGET, "q": Q}

    if "a" in parts:
        print(f"\n(a) RGE step throughput: ZO-SGD forward RGE, q = {Q} ({Q + 1} queries/step), float32, f = Σx²;"
              f" steps per {clock} second; speedup = median of per-round ratios (range)")
        print(f"  {'d':>10} {'batched steps/s':>16} {'naive steps/s':>14} {'speedup':>8} {'range':>13}"
              f" {'batched ns/param/query':>23}")
        speedup: dict[str, float] = {}
        for d in (1_000, 100_000, 10_000_000):
            r = rounds if d < 10_000_000 or dev == "cuda" else 3  # ~1-3 s a step on one CPU core
            fast, slow, ratios = side_by_side(rge_batched(d, dev, secs, clock), rge_naive(d, dev, secs, clock), r)
            speedup[str(d)] = round(statistics.median(ratios), 3)
            ns = 1e9 / (fast * (Q + 1) * d)
            print(f"  {d:>10,} {fast:>16.2f} {slow:>14.2f} {speedup[str(d)]:>7.2f}× {min(ratios):>6.2f}–{max(ratios):<5.2f}"
                  f" {ns:>23.3f}")
        f = mlp_objective(dev)
        fast, slow, ratios = side_by_side(mlp_runner(True, dev, secs, clock), mlp_runner(False, dev, secs, clock),
                                          rounds)
        speedup["mlp"] = round(statistics.median(ratios), 3)
        print(f"  {'MLP ' + format(f.dim, ','):>10} {fast:>16.2f} {slow:>14.2f} {speedup['mlp']:>7.2f}×"
              f" {min(ratios):>6.2f}–{max(ratios):<5.2f}   (vmap vs one forward/query)")
        out.update(speedup=speedup, clock=clock, heap_pinned=pinned)

    if "b" in parts:
        print("\n(b) memory: peak " + ("CUDA allocated" if dev == "cuda" else "RSS above the post-import baseline")
              + f", one case per fresh process (median of {reps} for forward/mezo)"
              + (", glibc mmap threshold pinned" if args.pin_mmap else ""))
        print(f"  {'model':<6} {'params':>11} {'case':<9} {'total MB':>9} {'weights MB':>11} {'÷ forward':>10}")
        mem: dict[str, dict[str, float]] = {}
        for kind in ("mlp", "lm"):
            rows = {case: measure(kind, case, dev, 1 if case == "backprop" or dev == "cuda" else reps, args.pin_mmap)
                    for case in ("forward", "mezo", "backprop")}
            for case, row in rows.items():
                ratio = row["total_mb"] / rows["forward"]["total_mb"]
                mem[f"{kind}_{case}"] = {"mb": round(row["total_mb"], 1), "ratio": round(ratio, 3)}
                print(f"  {kind:<6} {int(row['params']):>11,} {case:<9} {row['total_mb']:>9.1f} "
                      f"{row['weights_mb']:>11.1f} {ratio:>9.3f}×")
        out.update(ratio=mem["mlp_mezo"]["ratio"], memory=mem)

    if "c" in parts:
        lm = lm_speed(dev, rounds)
        print(f"\n(c) tiny LM ({lm['params']:,} params, batch 8 × 64): MeZO {lm['queries_per_s']:.1f} queries/s, "
              f"inference {lm['forwards_per_s']:.1f} forwards/s → {lm['ratio']:.3f}×")
        out["lm"] = {k: round(v, 3) for k, v in lm.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
