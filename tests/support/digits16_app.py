"""A black-box image classifier for ZO-AE-DS tests: an MLP on 16×16 digits behind ``POST /predict``.

``{"inputs": [[256 pixels in [0, 1]], ...]} -> {"outputs": [[10 logits], ...]}``. Trained once
per process (``workers.algorithms.digits.train_mlp``, 20 epochs, hidden 64, seed 0; ≈ 1 s) on
the bundled train split; serve it with ``tests.support.model_server.serve(create_app())``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from fastapi import FastAPI, Request

from workers.algorithms.digits import load_digits16, train_mlp


@functools.lru_cache(maxsize=1)
def classifier() -> torch.nn.Module:
    data = load_digits16(seed=0)
    return train_mlp(data.x_train, data.y_train, epochs=20, hidden=64, seed=0)


def create_app() -> FastAPI:
    app = FastAPI()
    model = classifier()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        body = await request.json()
        x = torch.tensor(body["inputs"], dtype=torch.float32).reshape(-1, 1, 16, 16)
        with torch.no_grad():
            return {"outputs": model(x).tolist()}

    return app
