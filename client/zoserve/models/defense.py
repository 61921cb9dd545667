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

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .endpoint import EndpointObjective


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


class ClassifierObjective(BaseModel):
    """A black-box image classifier behind an endpoint, and the images to robustify it on.

    The worker only ever reads the endpoint's raw output rows (logits, or probabilities when
    ``endpoint.scores`` says so) for flattened C·H·W inputs in [0, 1]; the endpoint's
    ``output``/``targets``/``input_mode`` fields are not used (``input_mode`` must be 'direct').
    Data: the bundled ``digits16`` set (scikit-learn digits upsampled to 1×16×16, stratified
    67/33 split, seed 0). Uploaded image sets are not wired yet (issue 7 follow-up).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["classifier"] = "classifier"
    endpoint: EndpointObjective = Field(description="The black box: one output row of num_classes scores per input.")
    num_classes: int = Field(ge=2, le=10_000, description="Classes K of the black box's output rows.")
    input_shape: list[int] = Field(min_length=3, max_length=3, description="One image's shape [C, H, W] (H, W even).")
    data: Literal["digits16"] | None = Field(None, description="Bundled training/certification images (the default).")
    dataset_id: str | None = Field(None, max_length=64, pattern=r"^ds_[0-9a-f]+$",
                                   description="An uploaded image set (.npz: images (N, C, H, W) in [0, 1] and labels (N,)); "
                                               "the last 20% are held out for certification.")
    n_train: int = Field(1203, ge=1, le=100_000, description="Training images used (the first n of the train split).")
    n_test: int = Field(100, ge=1, le=10_000, description="Test images certified (the first n of the test split).")

    @model_validator(mode="after")
    def _check_shapes(self) -> "ClassifierObjective":
        c, h, w = self.input_shape
        if min(c, h, w) < 1 or h % 2 or w % 2:
            raise ValueError(f"input_shape {self.input_shape}: positive C, even H and W required")
        if self.data is not None and self.dataset_id is not None:
            raise ValueError("give data (bundled) or dataset_id (uploaded), not both")
        if self.data is None and self.dataset_id is None:
            self.data = "digits16"
        if self.data == "digits16" and self.input_shape != [1, 16, 16]:
            raise ValueError("data 'digits16' has input_shape [1, 16, 16]")
        if self.endpoint.input_mode != "direct":
            raise ValueError("the classifier's endpoint must use input_mode 'direct'")
        dim = self.endpoint.dim if self.endpoint.dim is not None else len(self.endpoint.base or ())
        if dim != c * h * w:
            raise ValueError(f"endpoint.dim {dim} must equal C·H·W = {c * h * w}")
        return self


class DefensePredictRequest(BaseModel):
    """``POST /v1/defenses/{job_id}/predict``: one image through the trained front end and the black box."""

    model_config = ConfigDict(extra="forbid")

    image: list[list[list[float]]] = Field(description="One image C×H×W, values in [0, 1].")
    n: int | None = Field(None, ge=1, le=100_000, description="Noise samples N (default: the job's certify_n).")
    alpha: float | None = Field(None, gt=0.0, lt=0.5, description="Failure probability α (default: the job's).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the Gaussian noise (same request, same answer).")

    @model_validator(mode="after")
    def _check_image(self) -> "DefensePredictRequest":
        widths = {len(row) for plane in self.image for row in plane}
        if not self.image or len({len(p) for p in self.image}) != 1 or len(widths) != 1:
            raise ValueError("image must be a non-empty C×H×W array")
        if any(not 0.0 <= v <= 1.0 for plane in self.image for row in plane for v in row):
            raise ValueError("image values must lie in [0, 1]")
        return self


class DefensePrediction(BaseModel):
    """CERTIFY (Cohen et al.) of the smoothed, defended classifier at one image."""

    label: int | None = Field(description="The smoothed class, or null when it abstains.")
    radius: float = Field(ge=0.0, description="Certified ℓ2 radius (0 when abstaining).")
    p_lower: float = Field(description="Lower confidence bound on the top class's probability.")
    queries: int = Field(description="Black-box queries spent (N0 + N).")
