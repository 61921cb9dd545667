"""Endpoint objective: a model behind HTTP, called in batches, with retries and an SSRF guard.

One ``evaluate`` call answers all points of a step: the inputs are split into requests of at
most ``batch_size`` rows with up to ``concurrency`` requests in flight on one aiohttp session
(a keep-alive pool of ``concurrency`` HTTP/1.1 connections) whose every connect goes through
the SSRF guard. Deliberate: aiohttp rather than httpx here. Its C parser spends a third of
httpx's CPU per request (``bench/endpoint_throughput.py``), and on a busy worker that CPU is
the step rate; the SDK stays on httpx.

A request that fails with a connect error, a timeout (``timeout_s`` for the
whole attempt), 408, 429 or 5xx is retried (tenacity) with exponential backoff and jitter, or
after ``Retry-After`` when the server sends one. Redirects are followed by hand (at most 3),
each hop re-checked by the guard before it is requested; spec headers are dropped when a
redirect leaves the origin. The loss is computed once per step over all batches' outputs.

Failure mapping (the tree is drawn in ``base.py``):

* retries exhausted, or a non-retryable 4xx -> :class:`ObjectiveError` naming the endpoint,
  the status and a body excerpt (≤ 200 chars); timeouts say "timed out after Ns";
* ``Retry-After`` longer than ``MAX_RETRY_AFTER_S`` -> :class:`ObjectiveTransient` (the
  segment is rescheduled instead of holding the worker);
* wrong shape, NaN or inf -> :class:`ObjectiveInvalid`, or with ``on_invalid="penalize"`` the
  point gets ``penalty`` and counts as failed;
* refused address or bad configuration -> :class:`ObjectiveRefused`.

Header values are secrets: they are never logged and never appear in messages.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import aiohttp
import httpx
import numpy as np
import orjson
import torch
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from torch import Tensor
from yarl import URL
from zoserve.models.endpoint import EndpointObjective as EndpointSpec

from workers.algorithms.base import Answer, Query
from workers.objectives.base import (
    Evaluation,
    ObjectiveError,
    ObjectiveInvalid,
    ObjectiveRefused,
    ObjectiveTransient,
)
from workers.objectives.guard import GuardedResolver, check_url

MAX_REDIRECTS = 3
MAX_RETRY_AFTER_S = 60.0
MAX_RESPONSE_BYTES = 64 * 2**20
EXCERPT_CHARS = 200
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_T = TypeVar("_T")
# A failed attempt that may succeed if repeated: connection trouble, a reset, a truncated answer, a timeout.
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError)


class _Retryable(Exception):
    """An attempt that may succeed if repeated (status 408/429/5xx, or a timeout)."""

    def __init__(self, status: int | None, body: str, retry_after: float | None = None):
        super().__init__(status)
        self.status, self.body, self.retry_after = status, body, retry_after


def answer_from_values(query: Query, values: Tensor) -> Answer:
    """Answer a values query directly, or a ranking query by sorting (equal values are ties)."""
    if query.kind == "values":
        return Answer(values=values)
    order = torch.argsort(values, stable=True)[: query.k or len(values)].tolist()
    ranked = values[order].tolist()
    ties, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or ranked[i] != ranked[start]:
            if i - start > 1:
                ties.append(tuple(order[start:i]))
            start = i
    return Answer(ranking=tuple(order), ties=tuple(ties))


def _tensor(obj: Any) -> Tensor:
    """Parsed JSON numbers as a float64 tensor. Through numpy: half the CPU of ``torch.tensor`` on
    nested lists, and its dtype tells numbers (and booleans) from strings, nulls and ragged rows."""
    try:
        array = np.array(obj)
    except (TypeError, ValueError):  # ragged rows
        array = None
    if array is None or array.dtype.kind not in "biuf":
        raise ObjectiveInvalid("outputs are not a rectangular array of numbers")
    return torch.from_numpy(array.astype(np.float64, copy=False))


def parse_json_outputs(body: Any, m: int, name: str | None = None) -> Tensor:
    """``{"outputs": [...]}`` -> ``(m, k)``: one number or one vector per input."""
    if not isinstance(body, dict) or "outputs" not in body:
        raise ObjectiveInvalid("answer has no 'outputs' field")
    out = _tensor(body["outputs"])
    if out.ndim == 0 or out.shape[0] != m:
        raise ObjectiveInvalid(f"expected outputs for {m} inputs, got shape {list(out.shape)}")
    return out.reshape(m, -1)


def parse_v2_outputs(body: Any, m: int, name: str | None = None) -> Tensor:
    """Open Inference Protocol v2 ``{"outputs": [{"name", "shape", "datatype", "data"}]}`` -> ``(m, k)``."""
    outs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outs, list) or not outs or not all(isinstance(o, dict) for o in outs):
        raise ObjectiveInvalid("answer has no 'outputs' tensors")
    picked = next((o for o in outs if o.get("name") == name), None) if name else outs[0]
    if picked is None:
        raise ObjectiveInvalid(f"answer has no output tensor named {name!r}")
    shape, data = picked.get("shape"), _tensor(picked.get("data")).flatten()
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) for s in shape):
        raise ObjectiveInvalid(f"output tensor has an invalid shape {shape!r}")
    if math.prod(shape) != data.numel() or shape[0] != m:
        raise ObjectiveInvalid(f"expected outputs for {m} inputs, got shape {shape} with {data.numel()} values")
    return data.reshape(m, -1)


def loss_of_outputs(outputs: Tensor, spec: EndpointSpec) -> Tensor:
    """Per-input value to minimise from ``(m, k)`` outputs (scalar, CE, C&W margin or MSE)."""
    m, k = outputs.shape
    if spec.output == "scalar":
        if k != 1:
            raise ObjectiveInvalid(f"expected one number per input, got {k}")
        values = outputs[:, 0]
    elif spec.output == "mse":
        target = torch.tensor(spec.targets, dtype=torch.float64)
        if target.numel() != k:
            raise ObjectiveRefused(f"targets has {target.numel()} values but the endpoint returns {k} per input")
        values = ((outputs - target) ** 2).mean(1)
    else:
        y = int(spec.targets)  # type: ignore[arg-type]  # validated: an int for CE and margin
        if not 0 <= y < k or k < 2:
            raise ObjectiveRefused(f"targets={y} but the endpoint returns {k} classes")
        z = outputs.clamp_min(1e-30).log() if spec.scores == "probabilities" else outputs
        if spec.output == "cross_entropy":
            values = -torch.log_softmax(z, dim=1)[:, y]
        else:  # Carlini & Wagner (2017) f_6, untargeted form: max(z_y - max_{j!=y} z_j, -kappa)
            others = z.clone()
            others[:, y] = -math.inf
            values = (z[:, y] - others.max(1).values).clamp_min(-spec.kappa)
    return -values if spec.negate else values


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One TLS context per process: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set (an internal CA),
    else certifi's bundle (httpx's rules, so the SDK and the worker trust the same CAs). Loading it
    takes ~80 ms, and a segment opens a new session each time."""
    return httpx.create_ssl_context()


def guarded_session(allow: Sequence[str], max_connections: int) -> aiohttp.ClientSession:
    """A session whose every connect goes through :class:`GuardedResolver`; at most ``max_connections``
    connections, kept alive 5 s. No proxies from the environment, no cookies, no automatic redirects
    (:meth:`EndpointObjective._post` follows them after checking each hop), no timeout of its own
    (each attempt runs under ``asyncio.timeout``). Call it inside the event loop that will use it."""
    connector = aiohttp.TCPConnector(limit=max_connections, resolver=GuardedResolver(allow), ssl=ssl_context(),
                                     keepalive_timeout=5.0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False,
                                 cookie_jar=aiohttp.DummyCookieJar())


async def gather_in_order(calls: Iterable[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run ``calls`` concurrently; their results in order. The first failure is raised as itself and
    cancels the rest (not wrapped in an ExceptionGroup)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return [task.result() for task in tasks]


def _loads(data: bytes) -> Any:
    """Parse an answer: orjson (~10x faster than ``json`` on 17-digit floats), else ``json`` for the
    NaN and Infinity tokens that Python servers write and orjson refuses (they are judged later)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _public_url(url: URL | str) -> str:
    """The URL without credentials or query string (those may carry secrets)."""
    return str(URL(str(url)).with_user(None).with_query(None).with_fragment(None))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class EndpointObjective:
    """Adapter from queries to endpoint calls (see module docstring).

    Args:
        spec: the validated endpoint spec.
        allow: operator allow-list for the SSRF guard (host names, IPs, CIDRs).
    """

    def __init__(self, spec: EndpointSpec, *, allow: Sequence[str] = ()):
        self.spec = spec
        self.allow = tuple(allow)
        self.dim: int = spec.dim if spec.dim is not None else len(spec.base or ())
        self.url = str(spec.url)
        if spec.protocol == "v2":
            version = f"/versions/{spec.model_version}" if spec.model_version else ""
            self.url = f"{self.url.rstrip('/')}/v2/models/{spec.model}{version}/infer"
        self._where = f"endpoint {_public_url(self.url)}"  # for messages: no query string or credentials
        self._url = URL(self.url, encoded=True)  # parsed once (pydantic has normalised it): every request starts here
        self._headers = {**spec.header_values(), "Content-Type": "application/json"}  # secrets unwrapped once
        self._base = torch.tensor(spec.base, dtype=torch.float64) if spec.base is not None else None
        self._http: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._checked = False

    def default_x0(self) -> Tensor:
        """Start point: zero perturbation, else ``base`` (clipped), else zeros."""
        if self.spec.input_mode == "perturbation" or self._base is None:
            return torch.zeros(self.dim, dtype=torch.float64)
        return self._clip(self._base.clone())

    def inputs_of(self, points: Tensor) -> Tensor:
        """The inputs sent for ``(n, dim)`` points; perturbation: clip(base + clamp(x, ±eps))."""
        x = torch.as_tensor(points, dtype=torch.float64).reshape(-1, self.dim)
        if self.spec.input_mode == "perturbation":
            assert self._base is not None and self.spec.epsilon is not None
            # Deliberate: a clamp (projection onto the L∞ ball) rather than eps*tanh(x), so the
            # optimiser's steps are in input units; coordinates past ±eps just saturate.
            x = self._base + x.clamp(-self.spec.epsilon, self.spec.epsilon)
        return self._clip(x)

    def _clip(self, x: Tensor) -> Tensor:
        if self.spec.clip_lo is None and self.spec.clip_hi is None:
            return x
        return x.clamp(self.spec.clip_lo, self.spec.clip_hi)

    async def evaluate(self, query: Query) -> Evaluation:
        """Values (or a ranking) for every point of the query, in batched concurrent requests."""
        points = torch.as_tensor(query.points)
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ObjectiveRefused(f"query points have shape {tuple(points.shape)}; expected (n, {self.dim})")
        inputs = self.inputs_of(points)
        results = await self._gather(inputs, self._outputs_or_invalid)
        sizes = [len(c) for c in torch.split(inputs, self.spec.batch_size)]
        values = self._values_of(results, sizes)
        retried = torch.repeat_interleave(torch.tensor([r for _, r in results]), torch.tensor(sizes))
        bad = ~torch.isfinite(values)
        if bool(bad.any()) and self.spec.on_invalid == "fail":
            i = int(bad.nonzero()[0])
            raise ObjectiveInvalid(f"{self._where} gave a non-finite value ({float(values[i])}) at point {i}")
        values = torch.where(bad, torch.full_like(values, self.spec.penalty), values)
        n = len(values)
        failed = int((bad | retried).sum())
        return Evaluation(answer_from_values(query, values), queries=n, failed=failed, evaluations=n)

    async def predict(self, inputs: Tensor) -> Tensor:
        """Raw outputs ``(n, k)`` for ``(n, dim)`` inputs (used by the metric objective)."""
        results = await self._gather(torch.as_tensor(inputs, dtype=torch.float64), self._outputs_chunk)
        return torch.cat([out for out, _ in results])

    async def post(self, body: bytes) -> bytes:
        """One JSON POST of ``body`` with this endpoint's SSRF guard, retries, redirects and size limit; the
        answer's bytes (for adapters that speak another protocol, e.g. the candidate renderer)."""
        await self._ensure_client()
        async with self._slots:
            data, _ = await self._call_with_retries(body)
        return data

    @property
    def where(self) -> str:
        """``endpoint <url>`` for messages (no query string or credentials)."""
        return self._where

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation:
        """Endpoint objectives answer at once; nothing is ever pending."""
        raise NotImplementedError("endpoint objectives never return Pending")

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.close()
        self._http = None

    async def _gather(self, inputs: Tensor, fn: Callable[[Tensor], Coroutine[Any, Any, _T]]) -> list[_T]:
        """Run ``fn`` on each batch of ≤ batch_size rows, ``concurrency`` at a time, in order."""
        if not bool(torch.isfinite(inputs).all()):
            raise ObjectiveInvalid("a query point has non-finite coordinates")
        await self._ensure_client()
        return await gather_in_order(fn(chunk) for chunk in torch.split(inputs, self.spec.batch_size))

    async def _outputs_or_invalid(self, chunk: Tensor) -> tuple[Tensor | None, bool]:
        """Outputs and "needed a retry"; ``None`` for an invalid answer when penalising."""
        try:
            return await self._outputs_chunk(chunk)
        except ObjectiveInvalid:
            if self.spec.on_invalid == "fail":
                raise
            return None, True

    def _values_of(self, results: list[tuple[Tensor | None, bool]], sizes: list[int]) -> Tensor:
        """One loss pass over the whole step; NaN where a batch was invalid (penalise mode)."""
        width = next((out.shape[1] for out, _ in results if out is not None), None)
        if width is None:  # every batch was invalid
            return torch.full((sum(sizes),), math.nan, dtype=torch.float64)
        blocks = []
        for (out, _), m in zip(results, sizes):
            if out is not None and out.shape[1] != width:
                if self.spec.on_invalid == "fail":
                    raise ObjectiveInvalid(f"{self._where} changed its output width ({width} -> {out.shape[1]})")
                out = None
            blocks.append(out if out is not None else torch.full((m, width), math.nan, dtype=torch.float64))
        try:
            return loss_of_outputs(torch.cat(blocks), self.spec)
        except ObjectiveInvalid as exc:
            if self.spec.on_invalid == "fail":
                raise ObjectiveInvalid(f"{self._where}: {exc}") from None
            return torch.full((sum(sizes),), math.nan, dtype=torch.float64)

    async def _outputs_chunk(self, chunk: Tensor) -> tuple[Tensor, bool]:
        body = self._encode(chunk)
        async with self._slots:
            data, attempts = await self._call_with_retries(body)
        try:
            parsed = _loads(data)
        except ValueError:
            excerpt = data[:EXCERPT_CHARS].decode("utf-8", "replace")
            raise ObjectiveInvalid(f"{self._where} answered with invalid JSON: {excerpt!r}") from None
        parse = parse_v2_outputs if self.spec.protocol == "v2" else parse_json_outputs
        try:
            return parse(parsed, len(chunk), self.spec.output_name), attempts > 1
        except ObjectiveInvalid as exc:
            raise ObjectiveInvalid(f"{self._where}: {exc}") from None

    def _encode(self, chunk: Tensor) -> bytes:
        """The request body for one batch (json or Open Inference Protocol v2).

        orjson writes the float64 array straight from numpy, ~25x faster than ``json.dumps`` of
        ``tolist()`` for perturbed points (17 significant digits each). The inputs are finite
        (``_gather`` checks), so none can turn into ``null``.
        """
        spec, m = self.spec, len(chunk)
        shape = [m, *(spec.input_shape or [self.dim])]
        array = (chunk.flatten() if spec.protocol == "v2" else chunk.reshape(shape)).contiguous().numpy()

        def body(data: Any) -> dict[str, Any]:
            if spec.protocol == "v2":
                tensor = {"name": spec.input_name, "shape": shape, "datatype": spec.datatype, "data": data}
                return {"inputs": [tensor], **({"parameters": spec.payload} if spec.payload else {})}
            return {**(spec.payload or {}), "params" if spec.input_mode == "params" else "inputs": data}

        try:
            return orjson.dumps(body(array), option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:  # a payload orjson refuses (e.g. an integer past 64 bits)
            return json.dumps(body(array.tolist()), separators=(",", ":"), allow_nan=False).encode()

    async def _ensure_client(self) -> None:
        loop = asyncio.get_running_loop()
        if self._http is not None and self._loop is loop:
            return
        # A new event loop (e.g. a new asyncio.run per segment): the old pool is unusable there.
        self._loop, self._slots = loop, asyncio.Semaphore(self.spec.concurrency)
        if not self._checked:
            await check_url(self.url, self.allow)
            self._checked = True
        self._http = guarded_session(self.allow, self.spec.concurrency)

    async def _call_with_retries(self, body: bytes) -> tuple[bytes, int]:
        """POST ``body`` with retries; returns the response bytes and the attempts used.

        The first attempt runs bare (the common case costs no retry machinery); tenacity drives
        the retries after a retryable failure.
        """
        try:
            return await self._post(body), 1
        except (*_TRANSPORT_ERRORS, _Retryable) as exc:
            if self.spec.retries == 0:
                raise self._failure(exc, 1) from None
            await asyncio.sleep(self._delay(exc, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.spec.retries),
            wait=lambda rs: self._delay(rs.outcome.exception() if rs.outcome else None, rs.attempt_number + 1),
            retry=retry_if_exception_type((*_TRANSPORT_ERRORS, _Retryable)),
            reraise=True,
        )
        attempts = 1
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number + 1
                    return await self._post(body), attempts
        except (*_TRANSPORT_ERRORS, _Retryable) as exc:
            raise self._failure(exc, attempts) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, exc: BaseException, attempts: int) -> ObjectiveError:
        """The job-failing error once the retry budget is spent."""
        where = self._where
        if isinstance(exc, _Retryable) and exc.status is not None:
            return ObjectiveError(
                f"{where} answered {exc.status} after {attempts} attempts: {exc.body}", status=exc.status, body=exc.body
            )
        if isinstance(exc, (_Retryable, TimeoutError)):
            return ObjectiveError(f"{where} timed out after {self.spec.timeout_s:g}s ({attempts} attempts)")
        return ObjectiveError(f"{where} unreachable after {attempts} attempts: {type(exc).__name__}")

    def _delay(self, exc: BaseException | None, attempt: int) -> float:
        """Retry-After when the server sent one, else exponential backoff with jitter."""
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return float(exc.retry_after)
        backoff = self.spec.backoff_s
        # Jitter from the global RNG on purpose: it must differ between workers, and it never
        # touches the optimisation (algorithms use their own seeded generators).
        return min(30.0, backoff * 2.0 ** (attempt - 1)) + random.uniform(0, backoff)

    async def _post(self, body: bytes) -> bytes:
        """One attempt: POST, following ≤ MAX_REDIRECTS redirects by hand, each hop re-checked."""
        assert self._http is not None
        url, headers = self._url, self._headers
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                for _ in range(MAX_REDIRECTS + 1):
                    async with self._http.post(url, data=body, allow_redirects=False, headers=headers) as response:
                        data = await self._read(response)
                        status, location = response.status, response.headers.get("Location")
                        retry_after = response.headers.get("Retry-After")
                    if status not in _REDIRECTS or location is None:
                        return self._check_status(status, retry_after, data)
                    try:
                        target = url.join(URL(location))
                    except ValueError:
                        raise ObjectiveError(f"{self._where} redirected to an invalid URL") from None
                    await check_url(str(target), self.allow)
                    if target.origin() != url.origin():
                        headers = {"Content-Type": "application/json"}  # never send credentials to another origin
                    # Deliberate: keep POST and the body on 301/302/303 too (curl --post30x):
                    # an inference call has no GET form.
                    url = target
        except TimeoutError:
            raise _Retryable(None, "") from None
        except aiohttp.ClientConnectorCertificateError as exc:  # no retry heals it
            raise ObjectiveError(f"{self._where}: TLS certificate not trusted ({exc.certificate_error})") from None
        raise ObjectiveError(f"{self._where} redirected more than {MAX_REDIRECTS} times")

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        parts, size = [], 0
        async for part in response.content.iter_chunked(2**16):
            size += len(part)
            if size > MAX_RESPONSE_BYTES:
                raise ObjectiveInvalid(f"{self._where} answered more than {MAX_RESPONSE_BYTES} bytes")
            parts.append(part)
        return b"".join(parts)

    def _check_status(self, status: int, retry_after_header: str | None, data: bytes) -> bytes:
        if status < 300:
            return data
        excerpt = data[:EXCERPT_CHARS].decode("utf-8", "replace")
        if status in (408, 429) or status >= 500:
            retry_after = _retry_after(retry_after_header)
            if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                message = f"{self._where} asked to retry after {retry_after:.0f}s"
                raise ObjectiveTransient(message, status=status, body=excerpt)
            raise _Retryable(status, excerpt, retry_after)
        raise ObjectiveError(f"{self._where} answered {status}: {excerpt}", status=status, body=excerpt)
