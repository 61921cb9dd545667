"""The worker's device: choosing it, moving a job's state there, and what objectives receive."""

from __future__ import annotations

import asyncio

import pytest
import torch

from workers.algorithms.base import Answer, Query
from workers.algorithms.checkpoint import dump_state
from workers.algorithms.registry import build_algorithm
from workers.device import DeviceMismatch, place_state, resolve_device
from workers.objectives.base import Evaluation
from workers.objectives.builtin import BuiltinObjective
from workers.runner import Limits, MemorySink, initial_state, run_segment
from zoserve.models.algorithms import ZOSGDConfig

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_picks_what_torch_sees() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no GPU"):
        resolve_device("cuda")


def _state(pending: str) -> dict[str, object]:
    algo = build_algorithm("zo-sgd", ZOSGDConfig(q=2).hparams())
    return {**initial_state(algo, torch.ones(3, dtype=torch.float64), 0), "run.pending": pending}


def test_a_waiting_job_is_not_replayed_on_another_device_type() -> None:
    state = _state("q3")
    raw = dump_state(state)  # drawn on cpu
    with pytest.raises(DeviceMismatch, match="drawn on cpu"):
        place_state(state, raw, torch.device("meta"))
    placed = place_state(state, raw, torch.device("cpu"))
    assert placed["x"].device.type == "cpu"


def test_a_running_job_moves_to_the_workers_device() -> None:
    state = _state("")
    placed = place_state(state, dump_state(state), torch.device("meta"))
    assert placed["x"].device.type == "meta" and placed["step"] == state["step"]


class Recorder:
    """A values objective that computes on the host: it must receive CPU points."""

    def __init__(self) -> None:
        self.devices: set[str] = set()

    async def evaluate(self, query: Query) -> Evaluation:
        self.devices.add(query.points.device.type)
        return Evaluation(Answer(values=(query.points**2).sum(-1)), queries=query.points.shape[0])

    async def aclose(self) -> None:
        return None


@CUDA
def test_cuda_job_keeps_state_on_the_device_and_hands_host_objectives_cpu_points() -> None:
    algo = build_algorithm("zo-sgd", ZOSGDConfig(q=4, lr=1e-2).hparams())
    start = place_state(initial_state(algo, torch.ones(50, dtype=torch.float64), 0), None, torch.device("cuda"))
    on_device = BuiltinObjective("sphere", 50)
    res = asyncio.run(run_segment(algo, start, on_device, MemorySink(), Limits(max_steps=30)))
    assert res.state["x"].device.type == "cuda" and res.tally.best_value < 50.0
    host = Recorder()
    res = asyncio.run(run_segment(algo, start, host, MemorySink(), Limits(max_steps=5)))
    assert host.devices == {"cpu"} and res.state["x"].device.type == "cuda" and res.tally.step == 5
