"""ZO-AE-DS jobs on the worker: stages as segments, certification, artifacts, defended predictions.

Zhang et al., ICLR 2022 (brief zo-ae-ds.md), driven as ``bench/zo_ae_ds.py`` does, but
resumable: a segment runs steps of ``autoencoder → [denoiser] → stability → [finetune]``
(``workers/algorithms/ae_ds.py``), then CERTIFY per test image (Cohen et al.), for at most
``segment_seconds``, then checkpoints the flat state (``ae_ds`` keys + the runner's ``run.*``
tally + ``job.*`` phase keys) with the same fenced commit as the runner and requeues itself.

The black box is only reached through ``EndpointObjective.predict`` (batched, retried,
SSRF-guarded): one call per ZO step with all B·m query images, one for the pseudo-labels, and
``⌈(N0 + N)/certify_batch⌉``-ish calls per certified image. The whole plan is counted up front
(:func:`planned_queries`); a job whose ``max_queries`` cannot cover it fails at once (422).

Finished jobs store three artifacts in Redis (``keys.artifact``): ``frontend.safetensors``
(every ``den.``/``enc.``/``dec.`` tensor; the shape in its metadata), ``certification.json``
and ``certification.png`` (certified accuracy vs ℓ2 radius, drawn with Pillow).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from service import keys
from zoserve.models.events import ResultEvent
from zoserve.models.jobs import JobStatus, Result, job_create_adapter
from zoserve.models.problems import Problem

from .algorithms import ae_ds
from .algorithms.base import step_generator
from .algorithms.certify import ABSTAIN, Certificate, certified_accuracy, certify, max_radius
from .algorithms.checkpoint import dump_state, load_state
from .algorithms.digits import load_digits16
from .celery_app import app
from .defense_plan import (
    frontend_bytes,
    frontend_state,
    planned_queries,
    planned_steps,
    plot_png,
    safetensors_metadata,
    stages,
)
from .device import place_state
from .jobstore import Lease, RedisSink
from .objectives.base import ObjectiveError, ObjectiveRefused
from .objectives.endpoint import EndpointObjective
from .runner import Outcome, SegmentResult, Signal, Tally, dumps, split_state

DEFENSE = frozenset({"zo-ae-ds"})
PREDICT_TASK = "zoserve.defense.predict"
STAGE_CODES = {"autoencoder": 0, "denoiser": 1, "stability": 2, "finetune": 3, "certify": 4}
"""``extra.stage`` of progress events (event extras are numbers)."""
RADII_STEPS = 8  # the report's radius grid: 0 … R_max in this many steps
_CERT_STREAM = 7  # step_generator stream of certification noise (training uses 0–3 + 8·stage)


# ------------------------------------------------------------------ data and plan
@functools.lru_cache(maxsize=2)
def _digits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    d = load_digits16(seed=seed)
    return d.x_train, d.y_train, d.x_test, d.y_test


def data_of(objective: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, test images, test labels), capped at n_train / n_test."""
    x_tr, y_tr, x_te, y_te = _digits(0) if objective.dataset_id is None else _uploaded(objective)
    return x_tr[:objective.n_train], y_tr[:objective.n_train], x_te[:objective.n_test], y_te[:objective.n_test]


def _uploaded(objective: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """An uploaded image set with labels: the last 20% are held out for certification (training
    itself uses the black box's pseudo-labels, as the paper does)."""
    import numpy as np
    import redis

    from .celery_app import redis_url
    from .datasets import dataset_path
    from .tasks import context

    path = dataset_path(redis.Redis.from_url(redis_url()), context().settings.data_dir / "datasets", objective.dataset_id)
    with np.load(path, allow_pickle=False) as npz:
        images = torch.tensor(npz["images"], dtype=torch.float32)
        if "labels" not in npz.files:
            raise ObjectiveRefused("an uploaded image set needs 'labels' to certify accuracy")
        labels = torch.tensor(npz["labels"], dtype=torch.long)
    if tuple(images.shape[1:]) != tuple(objective.input_shape):
        raise ObjectiveRefused(f"dataset images have shape {list(images.shape[1:])}, objective says {objective.input_shape}")
    cut = int(round(0.8 * len(images)))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def black_box(endpoint: EndpointObjective, loop: asyncio.AbstractEventLoop, probabilities: bool) -> ae_ds.BlackBox:
    """``f_batch`` for the pure code: images (n, C, H, W) → scores (n, K) through the endpoint. The images
    go over HTTP from the host; the scores come back on the images' device (a GPU worker trains there)."""
    def f(images: Tensor) -> Tensor:
        flat = images.reshape(images.shape[0], -1).to("cpu", torch.float64)
        out = loop.run_until_complete(endpoint.predict(flat)).to(images.device, torch.float32)
        return torch.log(out.clamp_min(1e-12)) if probabilities else out  # CE wants logits or log-probs

    return f


# ------------------------------------------------------------------ the segment
class _Job:
    """One segment's view of a zo-ae-ds job: spec, config, data, endpoint, state."""

    def __init__(self, ctx: Any, lease: Lease, h: dict[str, str]):
        self.ctx, self.lease, self.h = ctx, lease, h
        self.spec = job_create_adapter.validate_python(json.loads(h["spec"]))
        self.obj = self.spec.objective
        self.cfg = ae_ds.AEDSConfig(**self.spec.config.hparams())
        self.shape: tuple[int, int, int] = tuple(self.obj.input_shape)  # type: ignore[assignment]
        self.device: torch.device = ctx.device  # the worker's (ZOSERVE_DEVICE): the front end trains there
        self.x_tr, self.y_tr, self.x_te, self.y_te = (t.to(self.device) for t in data_of(self.obj))
        self.loop = asyncio.new_event_loop()
        self.endpoint = EndpointObjective(self.obj.endpoint, allow=ctx.settings.ssrf_allow)
        self.f = black_box(self.endpoint, self.loop, self.obj.endpoint.scores == "probabilities")

    def close(self) -> None:
        self.loop.run_until_complete(self.endpoint.aclose())
        self.loop.close()

    def fresh_state(self) -> dict[str, Any]:
        """``init_state`` positions at the AE stage; it counts as opened only when the plan starts there."""
        state = place_state(ae_ds.init_state(self.cfg, self.shape, self.spec.seed), None, self.device)  # same init everywhere
        opened = int(stages(self.cfg)[0] == "autoencoder")
        return {**state, **Tally().to_state(), "job.phase": "train", "job.stage_index": 0, "job.opened": opened,
                "job.cert_index": 0}

    def advance(self, state: dict[str, Any], tally: Tally) -> dict[str, Any]:
        """Open the next stage when the current one is done (pseudo-labels: one batched call),
        or switch to certification after the last."""
        order = stages(self.cfg)
        idx, opened = int(state["job.stage_index"]), bool(state["job.opened"])
        if opened and not ae_ds.stage_done(state):
            return state
        nxt = idx + 1 if opened else idx
        if nxt >= len(order):
            return {**state, "job.phase": "certify"}
        stage, targets, spent = order[nxt], None, 0
        if stage == "stability":
            if self.cfg.targets == "pseudo":
                targets, spent = ae_ds.pseudo_labels(self.f, self.x_tr), self.x_tr.shape[0]
            else:
                targets = self.y_tr
        new = ae_ds.begin_stage(state, stage, self.cfg, targets=targets, target_queries=spent)
        tally.queries += spent
        tally.evaluations += spent
        return {**new, "job.stage_index": nxt, "job.opened": 1}

    def train_step(self, state: dict[str, Any]) -> tuple[dict[str, Any], ae_ds.TrainInfo]:
        if state["stage"] in ("autoencoder", "denoiser"):
            return ae_ds.mse_step(state, self.x_tr, self.cfg)  # type: ignore[return-value]
        return ae_ds.zo_step(state, self.x_tr, self.cfg, self.f)  # type: ignore[return-value]

    def certify_one(self, state: dict[str, Any], i: int) -> Certificate:
        base = ae_ds.defended(state, self.cfg, self.f)
        cfg = self.cfg
        return certify(base, self.x_te[i], sigma=cfg.sigma, n0=cfg.certify_n0, n=cfg.certify_n,
                       alpha=cfg.certify_alpha, num_classes=self.obj.num_classes,
                       gen=step_generator(self.spec.seed, i, _CERT_STREAM, device=self.device), batch=cfg.certify_batch)


def run_defense_segment(ctx: Any, lease: Lease, h: dict[str, str]) -> str:
    """One segment of a zo-ae-ds job (called by ``tasks.execute_segment``)."""
    from .tasks import _fail, _finish, _problem

    try:
        job = _Job(ctx, lease, h)
    except (KeyError, ValueError, ObjectiveError) as exc:
        return _fail(ctx, lease, h, _problem(exc, "Job could not start"))
    try:
        budget = job.spec.budget
        need = planned_queries(job.cfg, job.x_tr.shape[0], job.x_te.shape[0], job.shape)
        steps = planned_steps(job.cfg, job.x_tr.shape[0])
        if (budget.max_queries is not None and need > budget.max_queries) or (
                budget.max_steps is not None and steps > budget.max_steps):
            return _fail(ctx, lease, h, Problem(
                type="urn:zoserve:budget-too-small", title="Budget cannot cover the plan", status=422,
                detail=f"this zo-ae-ds job needs exactly {need} black-box queries ({steps} training steps); "
                       f"budget: max_queries={budget.max_queries}, max_steps={budget.max_steps}"))
        raw = ctx.store.checkpoint(lease.job_id)
        state = place_state(load_state(raw), raw, job.device) if raw else job.fresh_state()
        sink = RedisSink(ctx.store, lease, ctx.cancels)
        try:
            outcome, state, tally = _work(job, state, sink, ctx.settings)
        except ObjectiveError as exc:
            sink.drain()
            return _fail(ctx, lease, h, _problem(exc, "Black box failed"), sink.buffer)
        if sink.drain() is Signal.FENCED:
            return "fenced"
        if outcome is Outcome.DONE:
            return _succeed(job, state, tally, sink.buffer)
        return _finish(ctx, lease, h, sink.buffer, outcome, SegmentResult(outcome, state, tally), None)
    finally:
        job.close()


def _work(job: _Job, state: dict[str, Any], sink: RedisSink, settings: Any) -> tuple[Outcome, dict[str, Any], Tally]:
    """Steps until the time slice, a cancel, or the end of certification."""
    algo_state, tally = split_state(state)
    t0 = last_flush = time.monotonic()
    elapsed0 = tally.elapsed

    def pack() -> dict[str, Any]:
        tally.elapsed = elapsed0 + time.monotonic() - t0
        return {**algo_state, **tally.to_state()}

    while True:
        if sink.cancelled():
            return Outcome.CANCELLED, pack(), tally
        if time.monotonic() - t0 >= settings.segment_seconds:
            return Outcome.CONTINUE, pack(), tally
        extra: dict[str, Any] = {}
        if algo_state["job.phase"] == "train":
            algo_state = job.advance(algo_state, tally)
            if algo_state["job.phase"] == "train":
                stage = str(algo_state["stage"])
                algo_state, info = job.train_step(algo_state)
                extra = _record(tally, info.loss, info.queries, {"stage": STAGE_CODES[stage],
                                                                     "epoch": int(algo_state["epoch"])})
        else:
            i = int(algo_state["job.cert_index"])
            if i >= job.x_te.shape[0]:
                return Outcome.DONE, pack(), tally
            cert = job.certify_one(algo_state, i)
            algo_state = {**algo_state, "job.cert_index": i + 1,
                          f"job.cert.{i}": f"{cert.label}|{cert.radius!r}|{cert.p_lower!r}"}
            extra = _record(tally, tally.value, job.cfg.certify_n0 + job.cfg.certify_n, {"stage": STAGE_CODES["certify"],
                                                                                      "image": i})
        if tally.step > tally.published_step:
            sink.progress([tally.row(extra)])
            tally.published_step = tally.step
        if time.monotonic() - last_flush >= settings.flush_seconds:
            last_flush = time.monotonic()
            if sink.flush() is Signal.CANCEL:
                return Outcome.CANCELLED, pack(), tally


def _record(tally: Tally, loss: float | None, queries: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Count one step (a training step, or one certified image) in the runner's tally."""
    tally.step += 1
    tally.queries += queries
    tally.evaluations += queries
    tally.value = loss
    if loss is not None and (tally.best_value is None or loss < tally.best_value):
        tally.best_value = loss
    return extra


# ------------------------------------------------------------------ results and artifacts
def certificates(state: dict[str, Any], n: int) -> list[Certificate]:
    out = []
    for i in range(n):
        label, radius, p_lower = str(state[f"job.cert.{i}"]).split("|")
        out.append(Certificate(int(label), float(radius), float(p_lower)))
    return out


def report(job: _Job, state: dict[str, Any], tally: Tally) -> dict[str, Any]:
    """The certification report: CA(r) on a radius grid up to R_max, and the budget it used."""
    cfg, n = job.cfg, job.x_te.shape[0]
    certs = certificates(state, n)
    r_max = max_radius(cfg.sigma, cfg.certify_n, cfg.certify_alpha)
    radii = [round(r_max * k / RADII_STEPS, 4) for k in range(RADII_STEPS + 1)]
    acc = certified_accuracy(certs, job.y_te.tolist(), radii)
    return {"method": "ZO-AE-DS" if cfg.use_autoencoder else "ZO-DS", "estimator": cfg.estimator,
            "sigma": cfg.sigma, "n0": cfg.certify_n0, "n": cfg.certify_n, "alpha": cfg.certify_alpha,
            "max_radius": r_max, "points": n, "radii": radii, "certified_accuracy": list(acc),
            "clean_accuracy_smoothed": acc[0], "abstained": sum(c.label == ABSTAIN for c in certs),
            "certification_queries": n * (cfg.certify_n0 + cfg.certify_n), "total_queries": tally.queries,
            "certificates": [{"label": None if c.label == ABSTAIN else c.label, "radius": c.radius,
                              "p_lower": c.p_lower, "true_label": y} for c, y in zip(certs, job.y_te.tolist())]}


def _succeed(job: _Job, state: dict[str, Any], tally: Tally, events: list[tuple[str, str]]) -> str:
    ctx, job_id = job.ctx, job.lease.job_id
    rep = report(job, state, tally)
    blobs = {"frontend.safetensors": (frontend_bytes(state, job.cfg), "application/octet-stream"),
             "certification.json": (json.dumps(rep, indent=1).encode(), "application/json"),
             "certification.png": (plot_png(rep), "image/png")}
    pipe = ctx.store.r.pipeline()
    for name, (data, media) in blobs.items():  # written before the fenced commit that points at them
        pipe.hset(keys.artifact(job_id, name), mapping={"data": data, "media_type": media})
    pipe.execute()
    base = ctx.settings.public_url.rstrip("/") if getattr(ctx.settings, "public_url", None) else ""
    artifacts = [{"name": n, "url": f"{base}/v1/jobs/{job_id}/artifacts/{n}", "media_type": media, "size": len(data)}
                 for n, (data, media) in blobs.items()]
    reason = f"trained {'/'.join(stages(job.cfg))}; certified {rep['points']} images"
    result = Result(x_best=[], value_best=tally.best_value, steps=tally.step, queries=tally.queries, reason=reason,
                    artifacts=artifacts)  # type: ignore[arg-type]
    from service.records import event_json

    events = [*events, ("result", event_json(ResultEvent(time=datetime.now(timezone.utc), result=result)))]
    hset = {"status": JobStatus.succeeded.value, "result": result.model_dump_json(),
            "progress": dumps(tally.progress())}
    ctx.store.commit(job_id, job.lease.token, events=events, hset=hset, ckpt=dump_state(state), release=True)
    return "succeeded"


# ------------------------------------------------------------------ the defended prediction route
@app.task(name=PREDICT_TASK, ignore_result=False, acks_late=False)
def predict_task(job_id: str, image: list[list[list[float]]], n: int | None = None, alpha: float | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """CERTIFY one image with the job's trained front end in front of its black box.

    The API has checked the tenant and that the job succeeded. Costs N0 + N black-box queries
    (not charged to the finished job's budget).
    """
    from .tasks import context

    ctx = context()
    h = ctx.store.job(job_id)
    spec = job_create_adapter.validate_python(json.loads(h["spec"]))
    cfg = ae_ds.AEDSConfig(**spec.config.hparams())
    stored = ctx.store.r.hget(keys.artifact(job_id, "frontend.safetensors"), "data")
    if not isinstance(stored, bytes):
        raise LookupError(f"job {job_id} has no front end")
    state = frontend_state(stored, safetensors_metadata(stored))
    x = torch.tensor(image, dtype=torch.float32)
    if list(x.shape) != list(spec.objective.input_shape):
        raise ValueError(f"image shape {list(x.shape)} != {spec.objective.input_shape}")
    loop = asyncio.new_event_loop()
    endpoint = EndpointObjective(spec.objective.endpoint, allow=ctx.settings.ssrf_allow)
    try:
        f = black_box(endpoint, loop, spec.objective.endpoint.scores == "probabilities")
        n = n or cfg.certify_n
        cert = certify(ae_ds.defended(state, cfg, f), x, sigma=cfg.sigma, n0=cfg.certify_n0, n=n,
                       alpha=alpha or cfg.certify_alpha, num_classes=spec.objective.num_classes,
                       gen=step_generator(seed, 0, _CERT_STREAM), batch=cfg.certify_batch)
    finally:
        loop.run_until_complete(endpoint.aclose())
        loop.close()
    return {"label": None if cert.label == ABSTAIN else cert.label, "radius": max(0.0, cert.radius),
            "p_lower": cert.p_lower if math.isfinite(cert.p_lower) else 0.0, "queries": cfg.certify_n0 + n}
