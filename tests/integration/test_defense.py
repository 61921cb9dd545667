"""ZO-AE-DS through the whole service: a small job against a real classifier server (MLP on
16×16 digits, 127.0.0.1) trains the front end in checkpointed segments, certifies, stores its
artifacts, and the defended route answers; budgets that cannot cover the plan fail at once."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from safetensors.torch import load as st_load

import zoserve
from tests.conftest import API_KEY, OTHER_KEY
from tests.support.digits16_app import create_app
from tests.support.model_server import RunningServer, serve

PLANNED = 256 + 256 * 5 + 8 * (20 + 100)  # pseudo-labels + 1 epoch·N·(q+1) + n_test·(N0+N)


@pytest.fixture(scope="module")
def black_box() -> Iterator[RunningServer]:
    with serve(create_app()) as server:
        yield server


def _spec(url: str, max_queries: int) -> dict:
    config = {"sigma": 0.5, "latent_dim": 8, "estimator": "rge", "q": 4, "batch_size": 64, "epochs": 1,
              "ae_epochs": 2, "denoiser_layers": 2, "denoiser_channels": 4, "certify_n0": 20, "certify_n": 100,
              "certify_batch": 120}
    objective = {"kind": "classifier", "num_classes": 10, "input_shape": [1, 16, 16], "n_train": 256, "n_test": 8,
                 "endpoint": {"kind": "endpoint", "url": url + "/predict", "dim": 256, "batch_size": 512}}
    return {"algorithm": "zo-ae-ds", "config": config, "objective": objective, "budget": {"max_queries": max_queries},
            "seed": 3}


def _http(api_url: str, key: str = API_KEY) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_defense_job_trains_certifies_and_predicts(client: zoserve.Client, api_url: str,
                                                   black_box: RunningServer) -> None:
    job = client.jobs.create(_spec(black_box.url, PLANNED))
    done = client.jobs.wait(job.id)
    assert done.status.value == "succeeded", done.error
    assert done.result is not None and done.result.queries == PLANNED  # exactly the plan
    assert done.progress.step == 2 * 4 + 4 + 8  # AE 2 epochs + ZO 1 epoch (4 batches each) + 8 certified images
    steps = [e.step for e in client.jobs.get(job.id).stream() if e.type == "progress"]
    assert steps == list(range(1, 21))  # one event per step, in order, across checkpointed segments
    arts = {a.name: a for a in done.result.artifacts}
    assert set(arts) == {"frontend.safetensors", "certification.json", "certification.png"}
    with _http(api_url) as http:
        blob = http.get(f"/v1/jobs/{job.id}/artifacts/frontend.safetensors")
        assert blob.status_code == 200 and blob.headers["content-type"] == "application/octet-stream"
        tensors = st_load(blob.content)
        assert {k[:4] for k in tensors} == {"den.", "enc.", "dec."}
        assert len(blob.content) == arts["frontend.safetensors"].size
        rep = http.get(f"/v1/jobs/{job.id}/artifacts/certification.json").json()
        assert rep["points"] == 8 and rep["radii"][0] == 0.0 and len(rep["radii"]) == len(rep["certified_accuracy"])
        assert all(a >= b for a, b in zip(rep["certified_accuracy"], rep["certified_accuracy"][1:]))
        png = http.get(f"/v1/jobs/{job.id}/artifacts/certification.png")
        assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        assert http.get(f"/v1/jobs/{job.id}/artifacts/nope.bin").status_code == 404

        from workers.algorithms.digits import load_digits16

        image = load_digits16(seed=0).x_test[0].tolist()
        out = http.post(f"/v1/defenses/{job.id}/predict", json={"image": image, "n": 100, "seed": 1})
        assert out.status_code == 200, out.text
        body = out.json()
        assert body["label"] is None or 0 <= body["label"] < 10
        assert body["radius"] >= 0.0 and body["queries"] == 120
        again = http.post(f"/v1/defenses/{job.id}/predict", json={"image": image, "n": 100, "seed": 1}).json()
        assert again == body  # seeded noise: same request, same certificate
        bad = http.post(f"/v1/defenses/{job.id}/predict", json={"image": [[[0.5] * 8] * 8]})
        assert bad.status_code == 422
    with _http(api_url, OTHER_KEY) as other:  # another tenant sees nothing
        assert other.get(f"/v1/jobs/{job.id}/artifacts/certification.json").status_code == 404
        assert other.post(f"/v1/defenses/{job.id}/predict", json={"image": image}).status_code == 404


def test_budget_below_the_plan_fails_and_defence_is_not_ready(client: zoserve.Client, api_url: str,
                                                              black_box: RunningServer) -> None:
    job = client.jobs.create(_spec(black_box.url, PLANNED - 1))
    with pytest.raises(zoserve.JobFailed):
        client.jobs.wait(job.id)
    failed = client.jobs.get(job.id)
    assert failed.error is not None and failed.error.status == 422 and str(PLANNED) in (failed.error.detail or "")
    with _http(api_url) as http:
        image = [[[0.0] * 16] * 16]
        assert http.post(f"/v1/defenses/{job.id}/predict", json={"image": image}).status_code == 409


def test_wire_model_pairs_algorithm_and_objective() -> None:
    from zoserve.models.jobs import job_create_adapter

    job_create_adapter.validate_python(_spec("http://127.0.0.1:9", 10_000))
    for change in ({"algorithm": "zo-sgd", "config": {}}, {"objective": {"kind": "builtin", "function": "sphere",
                                                                         "dim": 4}}):
        with pytest.raises(ValueError, match="classifier"):
            job_create_adapter.validate_python({**_spec("http://127.0.0.1:9", 10_000), **change})
    spec = _spec("http://127.0.0.1:9", 10_000)
    spec["objective"]["input_shape"] = [1, 8, 8]
    with pytest.raises(ValueError, match="digits16"):
        job_create_adapter.validate_python(spec)


def test_uploaded_image_set_is_validated_and_trains(client: zoserve.Client, api_url: str,
                                                    black_box: RunningServer) -> None:
    import io

    import numpy as np

    from workers.algorithms.digits import load_digits16

    d = load_digits16(seed=0)
    images = np.concatenate([d.x_train[:256].numpy(), d.x_test[:64].numpy()])
    labels = np.concatenate([d.y_train[:256].numpy(), d.y_test[:64].numpy()])
    with _http(api_url) as h:
        def upload(**arrays: np.ndarray) -> httpx.Response:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            return h.post("/v1/datasets", content=buf.getvalue(), headers={"Content-Type": "application/octet-stream"})

        assert upload(images=images * 2.0, labels=labels).status_code == 422  # values outside [0, 1]
        assert upload(images=images[:, 0]).status_code == 422  # not (N, C, H, W)
        r = upload(images=images, labels=labels)
        assert r.status_code == 201, r.text
        ds = r.json()
    assert ds["kind"] == "images" and ds["shape"] == [1, 16, 16] and ds["n"] == 320 and ds["classes"] == 10
    spec = _spec(black_box.url, PLANNED)
    spec["objective"] = {**spec["objective"], "dataset_id": ds["id"]}
    job = client.jobs.create(spec).wait()
    assert job.status.value == "succeeded" and job.result.queries == PLANNED
