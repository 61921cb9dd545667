"""Config of a ZO-AE-DS job (torch-free wire format).

Zhang et al., "How to Robustify Black-Box ML Models? A Zeroth-Order Optimization Perspective",
ICLR 2022: train a denoiser (and the encoder of an autoencoder) in front of a black-box
classifier through queries alone, then certify the smoothed model (Cohen et al. 2019).

Defaults follow the paper where it applies to small images (μ = 0.005, Adam 1e-3, σ = 0.25,
CGE in the latent, certification N0 = 100 / N = 10 000 / α = 0.001) and brief zo-ae-ds.md §6
for the rest (d_z = 16, 15 ZO epochs, 40 AE epochs, batch 64, a 4-layer DnCNN). Measured with
these defaults except σ = 0.5 and N = 500 (``bench/zo_ae_ds.py``, digits 16×16, MLP black box):
see the benchmark's output for the certified accuracy table.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class ZOAEDSConfig(BaseModel):
    """ZO-AE-DS hyperparameters: stages (AE pre-training, optional denoiser pre-training,
    ZO stability training, optional fine-tuning) and the certification budget."""

    model_config = ConfigDict(extra="forbid")

    algorithm: ClassVar[str] = "zo-ae-ds"

    sigma: float = Field(
        0.25, gt=0.0, le=4.0,
        description="Gaussian smoothing noise σ for training and certification (pixels in [0, 1]). "
        "The paper's CIFAR tables use 0.25.",
    )
    latent_dim: int = Field(
        16, ge=1, le=4096, description="Autoencoder latent size d_z: the dimension the ZO gradient is estimated in."
    )
    use_autoencoder: bool = Field(
        True, description="False gives the ZO-DS baseline: ZO in pixel space (d = C·H·W), no autoencoder.",
    )
    estimator: Literal["rge", "cge"] = Field(
        "cge",
        description="'cge': one forward difference per latent coordinate (d_z + 1 queries per sample per step); "
        "'rge': q random unit-sphere directions (q + 1 queries per sample per step).",
    )
    directions: Literal["sphere", "gaussian"] = Field(
        "sphere", description="RGE direction law: uniform on the unit sphere (scaled by d, as the paper) or N(0, I)."
    )
    q: int = Field(16, ge=1, le=4096, description="RGE: random directions per sample per step (ignored by CGE).")
    mu: float = Field(0.005, gt=0.0, le=1.0, description="Finite-difference step μ in the latent.")
    batch_size: int = Field(64, ge=1, le=4096, description="Training minibatch size B.")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate of the ZO stability stage.")
    epochs: int = Field(15, ge=1, le=10_000, description="Epochs of the ZO stability stage (denoiser + encoder).")
    ae_epochs: int = Field(40, ge=0, le=10_000, description="Epochs of autoencoder pre-training (clean MSE).")
    ae_lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate of autoencoder pre-training.")
    denoiser_epochs: int = Field(
        0, ge=0, le=10_000,
        description="Epochs of optional denoiser MSE pre-training (the paper's Table 4 'pre-train + fine-tune' "
        "scheme, which it found worse than the default 0).",
    )
    denoiser_lr: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate of denoiser pre-training.")
    finetune_epochs: int = Field(
        0, ge=0, le=10_000, description="Epochs of an optional second ZO stability stage at finetune_lr."
    )
    finetune_lr: float = Field(1e-4, gt=0.0, le=1.0, description="Adam learning rate of the fine-tuning stage.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 weight decay (the paper's runs used 1e-5).")
    targets: Literal["pseudo", "labels"] = Field(
        "pseudo",
        description="'pseudo': stability targets argmax f(x), one query per training image, no labels needed; "
        "'labels': the uploaded labels.",
    )
    denoiser_layers: int = Field(4, ge=2, le=32, description="DnCNN depth (the paper's CIFAR model has 17).")
    denoiser_channels: int = Field(16, ge=1, le=256, description="DnCNN feature maps (the paper's model has 64).")
    certify_n0: int = Field(100, ge=1, le=100_000, description="CERTIFY: noise samples to select the class (N0).")
    certify_n: int = Field(
        10_000, ge=1, le=1_000_000,
        description="CERTIFY: noise samples to bound its probability (N); the largest certifiable radius is "
        "σ·Φ⁻¹(α^(1/N)). Each certified image costs N0 + N queries.",
    )
    certify_alpha: float = Field(0.001, gt=0.0, lt=0.5, description="CERTIFY failure probability α.")
    certify_batch: int = Field(1000, ge=1, le=100_000, description="Noisy samples per black-box call in certification.")

    def hparams(self) -> dict[str, object]:
        """Keyword arguments for ``workers.algorithms.ae_ds.AEDSConfig``."""
        return self.model_dump()
