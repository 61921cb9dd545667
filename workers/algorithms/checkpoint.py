"""Serialise an algorithm ``State`` to bytes and back, bit for bit.

Format: one safetensors blob. Tensors are stored as safetensors entries (dtype and shape kept
exactly; they come back on CPU — the caller moves them to its device). The non-tensor
values (int, float, bool, str) travel as JSON in the safetensors ``__metadata__`` under
``zoserve.scalars``; JSON keeps the Python type of each (``1`` vs ``1.0`` vs ``true``) and
``repr``-exact floats, NaN and ±inf included. The metadata also records the torch version and
the device types the tensors came from, because replaying random directions is only
bit-exact on the same torch version and device type (brief zo-engine.md §5.1).
"""

from __future__ import annotations

import json
import struct
from typing import Mapping

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

from workers.algorithms.base import State, StateValue

FORMAT = "zoserve-state/1"
_SCALARS = "zoserve.scalars"


class CheckpointError(ValueError):
    """The bytes are not a zoserve state, or the state holds an unsupported value."""


def dump_state(state: State) -> bytes:
    """Serialise ``state`` (tensors + JSON scalars) into one safetensors blob."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, int | float | bool | str] = {}
    devices: set[str] = set()
    seen: set[int] = set()
    for key, value in state.items():
        if key == "__metadata__":
            raise CheckpointError("'__metadata__' is a reserved key")
        if isinstance(value, Tensor):
            t = value.detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            # safetensors refuses tensors that share storage; a copy keeps values identical
            t = t.clone() if ptr in seen and t.numel() else t
            seen.add(t.untyped_storage().data_ptr())
            tensors[key] = t
            devices.add(value.device.type)
        elif isinstance(value, (bool, int, float, str)):
            scalars[key] = value
        else:
            raise CheckpointError(f"state[{key!r}] has unsupported type {type(value).__name__}")
    metadata = {
        "format": FORMAT,
        "torch_version": torch.__version__,
        "device_types": ",".join(sorted(devices)),
        _SCALARS: json.dumps(scalars),
    }
    return _st_save(tensors, metadata=metadata)


def load_state(data: bytes) -> dict[str, StateValue]:
    """Inverse of :func:`dump_state`: tensors on CPU with their exact dtype, scalars typed."""
    metadata = state_metadata(data)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} blob (format={metadata.get('format')!r})")
    state: dict[str, StateValue] = dict(_st_load(data))
    scalars = json.loads(metadata[_SCALARS])
    if not isinstance(scalars, dict):
        raise CheckpointError("corrupt scalar header")
    state.update(scalars)
    return state


def state_metadata(data: bytes) -> Mapping[str, str]:
    """The string metadata of a blob (``format``, ``torch_version``, ``device_types``, ...)."""
    if len(data) < 8:
        raise CheckpointError("checkpoint too short")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise CheckpointError(f"corrupt checkpoint header: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError("checkpoint has no metadata")
    return meta
