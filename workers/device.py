"""Which device a worker computes on, and moving a job's state there."""

from __future__ import annotations

from typing import Any

import torch

from .algorithms.checkpoint import state_metadata


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda when torch sees a GPU, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("ZOSERVE_DEVICE=cuda, but torch sees no GPU (is the CUDA build of torch installed?)")
    return torch.device(name)


class DeviceMismatch(Exception):
    """A waiting job's pending query cannot be replayed on this worker's device type."""


def place_state(state: dict[str, Any], raw: bytes | None, device: torch.device) -> dict[str, Any]:
    """Move a job's state to this worker's device. A job waiting on an answer stays where it started: the
    query is replayed from (seed, step) there, and random directions differ between device types."""
    started_on = set(state_metadata(raw).get("device_types", "").split(",")) - {""} if raw else set()
    if state.get("run.pending") and started_on and started_on != {device.type}:
        raise DeviceMismatch(f"this job's pending query was drawn on {','.join(sorted(started_on))} and can only be "
                             f"replayed there; this worker runs on {device.type} (route the job with its queue)")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
