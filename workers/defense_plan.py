"""Pure helpers of ZO-AE-DS jobs (no Celery, no Redis): the stage plan and its exact query
count, the front end as safetensors, and the certification plot.

Used by ``workers/defense.py``; kept apart so they can be unit-tested without a broker.
"""

from __future__ import annotations

import io
import json
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .algorithms import ae_ds
from .algorithms.ae_ds_nets import PREFIXES, shape_entries, shape_of


def stages(cfg: ae_ds.AEDSConfig) -> list[ae_ds.Stage]:
    """The stages this config runs, in order (the AE stage only with the AE; optional ones when > 0 epochs)."""
    out: list[ae_ds.Stage] = ["autoencoder"] if cfg.use_autoencoder and cfg.ae_epochs > 0 else []
    out += ["denoiser"] if cfg.denoiser_epochs > 0 else []
    return out + ["stability"] + (["finetune"] if cfg.finetune_epochs > 0 else [])


def planned_queries(cfg: ae_ds.AEDSConfig, n_train: int, n_test: int, shape: tuple[int, int, int]) -> int:
    """Exact black-box queries of the whole job: Σ stage_queries + n_test·(N0 + N)."""
    train = sum(ae_ds.stage_queries(cfg, s, n_train, shape) for s in stages(cfg))
    return train + n_test * (cfg.certify_n0 + cfg.certify_n)


def planned_steps(cfg: ae_ds.AEDSConfig, n_train: int) -> int:
    """Training steps of the whole job (epochs · ⌈N / B⌉ per stage)."""
    per_epoch = -(-n_train // cfg.batch_size)
    table = {"autoencoder": cfg.ae_epochs, "denoiser": cfg.denoiser_epochs, "stability": cfg.epochs,
             "finetune": cfg.finetune_epochs}
    return sum(table[s] for s in stages(cfg)) * per_epoch


def frontend_bytes(state: dict[str, Any], cfg: ae_ds.AEDSConfig) -> bytes:
    """safetensors of every front-end tensor; metadata: the shape and the config."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, Tensor) and k.startswith(PREFIXES)}
    meta = {k: str(v) for k, v in shape_entries(shape_of(state)).items()}
    meta["config"] = json.dumps(cfg.__dict__)
    return st_save(tensors, metadata=meta)


def frontend_state(blob: bytes, metadata: dict[str, str]) -> dict[str, Any]:
    """The inverse of :func:`frontend_bytes`: a state :func:`ae_ds.defended` accepts."""
    return {**st_load(blob), **{k: int(v) for k, v in metadata.items() if k.startswith("shape.")}}


def plot_png(rep: dict[str, Any]) -> bytes:
    """Certified accuracy vs radius as a small step plot (Pillow; matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    w, h, m = 480, 320, 48
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.line([(m, m // 2), (m, h - m), (w - m // 2, h - m)], fill="black")
    r_max = max(rep["radii"][-1], 1e-9)

    def xy(r: float, a: float) -> tuple[float, float]:
        return m + (w - 1.5 * m) * r / r_max, h - m - (h - 1.5 * m) * a

    pts = [xy(r, a) for r, a in zip(rep["radii"], rep["certified_accuracy"])]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        d.line([(x0, y0), (x1, y0), (x1, y1)], fill=(31, 119, 180), width=2)
    for a in (0.0, 0.5, 1.0):
        d.text((4, xy(0, a)[1] - 6), f"{a:.1f}", fill="black")
    d.text((m, h - m + 6), "0", fill="black")
    d.text((w - m - 10, h - m + 6), f"{r_max:.2f}", fill="black")
    d.text((w // 2 - 60, h - 20), "l2 radius", fill="black")
    d.text((m + 8, 4), f"certified accuracy, sigma={rep['sigma']}, N={rep['n']}", fill="black")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header size, JSON header)."""
    size = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8:8 + size]).get("__metadata__", {}))
