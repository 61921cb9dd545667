"""The white-box front end of ZO-AE-DS: a DnCNN denoiser and a convolutional autoencoder.

Zhang et al., "How to Robustify Black-Box ML Models? A Zeroth-Order Optimization Perspective",
ICLR 2022, Fig. 3: x → D_θ → Enc → z → Dec → f (black box). Brief zo-ae-ds.md §2 and §6.

* :class:`Denoiser` — DnCNN (Zhang et al. 2017) scaled down: ``layers`` 3×3 convs of
  ``channels`` feature maps, conv+ReLU, (layers − 2)·[conv (no bias) → BN(eps 1e-4,
  momentum 0.95) → ReLU], conv (no bias); residual output D(x) = x − body(x). Orthogonal
  init with the last conv zeroed, so D starts as the identity (code archs/dncnn.py).
  (Deliberate: 4 layers × 16 channels instead of 17 × 64, for 16×16 grey digits; brief §6.)
* :class:`Encoder` / :class:`Decoder` — the brief's §6 autoencoder for small images:
  conv C→16 (k3, p1) + ReLU, conv 16→32 (k4, s2, p1) + ReLU, linear → d_z + ReLU (z ≥ 0 as
  in the paper's encoders); the decoder mirrors it and ends in a Sigmoid (output in [0, 1]).
  (Deliberate: the paper's CIFAR AE is all-convolutional with a 192×1×1 latent; a linear
  bottleneck lets any d_z be chosen for small images.)

Parameters live in a flat state under the prefixes ``den.``, ``enc.`` and ``dec.``;
:func:`build` makes modules on the meta device and loads private copies of those tensors,
so rebuilding from a state never re-runs an initialiser and never aliases the state.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
from torch import Tensor, nn

from workers.algorithms.base import StateValue

PREFIXES = ("den.", "enc.", "dec.")


class Shape(NamedTuple):
    """Architecture of one front end: image (C, H, W), latent size and denoiser size."""

    channels: int
    height: int
    width: int
    latent_dim: int
    denoiser_layers: int = 4
    denoiser_channels: int = 16


class Denoiser(nn.Module):
    """DnCNN with a residual output D(x) = x − body(x) (paper §4, archs/dncnn.py)."""

    def __init__(self, channels: int, layers: int, features: int) -> None:
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU()]
        for _ in range(layers - 2):
            body += [nn.Conv2d(features, features, 3, padding=1, bias=False),
                     nn.BatchNorm2d(features, eps=1e-4, momentum=0.95), nn.ReLU()]
        body.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x - self.body(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return out


class Encoder(nn.Module):
    """Image (C, H, W) → latent z ∈ R^{d_z}, z ≥ 0 (H and W even)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        flat = 32 * (shape.height // 2) * (shape.width // 2)
        self.net = nn.Sequential(
            nn.Conv2d(shape.channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, shape.latent_dim), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.net(x)
        return z


class Decoder(nn.Module):
    """Latent z → image in [0, 1]^{C×H×W} (the mirror of :class:`Encoder`, Sigmoid output)."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.hidden = (32, shape.height // 2, shape.width // 2)
        self.fc = nn.Sequential(nn.Linear(shape.latent_dim, math.prod(self.hidden)), nn.ReLU())
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, shape.channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).reshape(-1, *self.hidden)
        # channels-last: ~2× faster CPU convs on the large query batches (same function)
        out: Tensor = self.conv(h.contiguous(memory_format=torch.channels_last))
        return out.contiguous()


class FrontEnd(NamedTuple):
    """The three white-box modules."""

    denoiser: Denoiser
    encoder: Encoder
    decoder: Decoder


def _modules(shape: Shape) -> FrontEnd:
    if shape.height % 2 or shape.width % 2:
        raise ValueError(f"image height and width must be even, got {shape.height}×{shape.width}")
    if shape.denoiser_layers < 2:
        raise ValueError("the denoiser needs at least 2 layers")
    return FrontEnd(Denoiser(shape.channels, shape.denoiser_layers, shape.denoiser_channels),
                    Encoder(shape), Decoder(shape))


def init_tensors(shape: Shape, gen: torch.Generator) -> dict[str, Tensor]:
    """Freshly initialised front-end tensors (parameters and BN buffers), keyed ``den.``/``enc.``/``dec.``.

    Linear and conv layers of the AE get torch's default init drawn from ``gen`` (kaiming
    uniform, a = √5); the denoiser's convs are orthogonal and its last conv is zero.
    """
    mods = _modules(shape)
    with torch.no_grad():
        for module in (*mods.encoder.modules(), *mods.decoder.modules()):
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                fan_in = nn.init._calculate_fan_in_and_fan_out(module.weight)[0]
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)
        convs = [m for m in mods.denoiser.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.orthogonal_(conv.weight, generator=gen)
            if conv.bias is not None:
                conv.bias.zero_()
        convs[-1].weight.zero_()
    return flatten(mods)


def flatten(mods: FrontEnd) -> dict[str, Tensor]:
    """All tensors of the modules (detached copies), keyed by prefix + state-dict name."""
    out: dict[str, Tensor] = {}
    for prefix, module in zip(PREFIXES, mods):
        out.update({prefix + k: v.detach().clone() for k, v in module.state_dict().items()})
    return out


def build(shape: Shape, state: Mapping[str, StateValue]) -> FrontEnd:
    """Modules holding private copies of the ``den.``/``enc.``/``dec.`` tensors of ``state``."""
    with torch.device("meta"):
        mods = _modules(shape)
    for prefix, module in zip(PREFIXES, mods):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict({k: t.clone() for k, t in sub.items() if isinstance(t, Tensor)}, assign=True)
    return mods


def shape_of(state: Mapping[str, StateValue]) -> Shape:
    """The :class:`Shape` recorded in a state (keys ``shape.<field>``)."""
    return Shape(**{f: int(state["shape." + f]) for f in Shape._fields})


def shape_entries(shape: Shape) -> dict[str, int]:
    """``shape.<field>`` state entries for ``shape``."""
    return {"shape." + f: int(v) for f, v in shape._asdict().items()}
