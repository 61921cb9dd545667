"""The bundled data set and a small black-box classifier for ZO-AE-DS (brief zo-ae-ds.md §6).

* :func:`load_digits16` — scikit-learn's ``load_digits`` (1797 grey 8×8 images, values 0–16),
  scaled to [0, 1], upsampled bilinearly to 16×16 (d = 256) and clamped to [0, 1]; a
  stratified 67/33 split fixed by ``seed``. (At native 8×8 every method ties; brief §6.)
* :func:`train_mlp` — an MLP d→128→128→10 (ReLU), Adam 1e-3, batch 64, no noise: the
  "normally trained, non-robust" model the owner exposes as a black box (≈ 97% test accuracy).

Deterministic: all randomness comes from explicit generators; a few seconds on one CPU thread.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Split(NamedTuple):
    """Images (n, 1, 16, 16) in [0, 1] with int64 labels, train and test."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits16(seed: int = 0, test_size: float = 0.33, size: int = 16) -> Split:
    """Digits upsampled to ``size``×``size`` and split (stratified, ``random_state=seed``)."""
    from sklearn.datasets import load_digits  # lazy: only data preparation needs scikit-learn
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, random_state=seed, stratify=y.numpy()
    )
    tr, te = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return Split(x[tr].contiguous(), y[tr], x[te].contiguous(), y[te])


def mlp(d: int, classes: int = 10, hidden: int = 128) -> nn.Sequential:
    """Flatten → d→hidden→hidden→classes with ReLUs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def train_mlp(x: Tensor, y: Tensor, *, epochs: int = 100, lr: float = 1e-3, batch: int = 64,
              seed: int = 0, hidden: int = 128) -> nn.Sequential:
    """A normally trained MLP classifier (eval mode, weights from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    model = mlp(x[0].numel(), int(y.max()) + 1, hidden)
    with torch.no_grad():  # torch's default init, drawn from our generator instead of the global one
        for layer in model:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            idx = perm[start:start + batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            torch.autograd.backward(loss)
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())
