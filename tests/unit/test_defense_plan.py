"""The pure helpers of ZO-AE-DS jobs: the exact query plan, the front end as safetensors, the plot."""

from __future__ import annotations

from dataclasses import replace

import torch

from workers.algorithms import ae_ds
from workers.defense_plan import (
    frontend_bytes,
    frontend_state,
    planned_queries,
    planned_steps,
    plot_png,
    safetensors_metadata,
    stages,
)

SHAPE = (1, 16, 16)
CFG = ae_ds.AEDSConfig(latent_dim=8, estimator="rge", q=4, batch_size=64, epochs=1, ae_epochs=2,
                       denoiser_layers=2, denoiser_channels=4, certify_n0=20, certify_n=100)


def test_stages_follow_the_config() -> None:
    assert stages(CFG) == ["autoencoder", "stability"]
    assert stages(replace(CFG, use_autoencoder=False)) == ["stability"]
    assert stages(replace(CFG, denoiser_epochs=1, finetune_epochs=2)) == ["autoencoder", "denoiser", "stability",
                                                                          "finetune"]


def test_plan_counts_pseudo_labels_zo_rows_and_certification() -> None:
    assert planned_queries(CFG, 256, 8, SHAPE) == 256 + 256 * (4 + 1) + 8 * 120
    cge = replace(CFG, estimator="cge", finetune_epochs=2)
    assert planned_queries(cge, 100, 0, SHAPE) == 100 + 3 * 100 * (8 + 1)  # stability + 2 finetune epochs
    assert planned_queries(replace(cge, use_autoencoder=False), 10, 0, SHAPE) == 10 + 3 * 10 * (256 + 1)
    assert planned_steps(CFG, 256) == (2 + 1) * 4 and planned_steps(CFG, 257) == 3 * 5


def test_frontend_round_trips_through_safetensors() -> None:
    state = ae_ds.init_state(CFG, SHAPE, seed=1)
    blob = frontend_bytes(state, CFG)
    meta = safetensors_metadata(blob)
    assert meta["shape.latent_dim"] == "8" and '"estimator": "rge"' in meta["config"]
    back = frontend_state(blob, meta)
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    torch.testing.assert_close(ae_ds.defended(back, CFG, f)(x), ae_ds.defended(state, CFG, f)(x))
    assert not any(k.startswith("adam.") for k in back)


def test_plot_is_a_png() -> None:
    png = plot_png({"radii": [0.0, 0.5, 1.0], "certified_accuracy": [0.9, 0.5, 0.1], "sigma": 0.5, "n": 100})
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 500
