"""Contract battery for objective adapters, then endpoint specifics against a real uvicorn server.

The battery (answer shape, cost, determinism, batch order, rankings, bad dimensions) runs on
every factory in ``FACTORIES``; add an adapter there to hold it to the same contract.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
import torch
from fastapi import FastAPI, Request, Response
from zoserve.models.endpoint import EndpointObjective as EndpointSpec
from zoserve.models.endpoint import MetricObjective as MetricSpec

from tests.support.model_server import TOKEN, RunningServer, digits_data, predict, serve
from workers.algorithms.base import Query
from workers.objectives.base import (
    Evaluation,
    ObjectiveError,
    ObjectiveInvalid,
    ObjectiveRefused,
    ObjectiveTransient,
)
from workers.objectives.endpoint import EndpointObjective, guarded_session, ssl_context
from workers.objectives.guard import check_url, check_url_static
from workers.objectives.metric import MetricObjective

ALLOW = ["127.0.0.1"]  # the test server; nothing else is ever contacted


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve() as running:
        yield running


def digits(n: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_data()
    return x[start : start + n].double(), y[start : start + n]


def endpoint(server: RunningServer, path: str = "/predict", **kw: Any) -> EndpointObjective:
    fields: dict[str, Any] = {"dim": 64, "output": "cross_entropy", "targets": 3, "backoff_s": 0.01, **kw}
    return EndpointObjective(EndpointSpec(url=server.url + path, **fields), allow=ALLOW)


@contextmanager
def answering(respond: Callable[[Any], Response]) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """A real server whose every POST is answered by ``respond(json_body)``; yields its URL and the
    (path with query, body) of each request it got."""
    seen: list[tuple[str, Any]] = []
    app = FastAPI()

    @app.post("/{path:path}")
    async def anything(request: Request) -> Response:
        body = json.loads(await request.body())
        seen.append((request.url.path + (f"?{request.url.query}" if request.url.query else ""), body))
        return respond(body)

    with serve(app) as running:
        yield running.url, seen


def evaluate(obj: Any, points: torch.Tensor, kind: str = "values", k: int | None = None) -> Evaluation:
    async def go() -> Evaluation:
        try:
            ev: Evaluation = await obj.evaluate(Query(points=points, kind=kind, k=k))  # type: ignore[arg-type]
            return ev
        finally:
            await obj.aclose()

    return asyncio.run(go())


# --- the battery ---------------------------------------------------------------------------

Factory = Callable[[RunningServer], tuple[Any, torch.Tensor]]


def _json(server: RunningServer) -> tuple[Any, torch.Tensor]:
    return endpoint(server, batch_size=3, concurrency=2), digits(7)[0]


def _v2(server: RunningServer) -> tuple[Any, torch.Tensor]:
    return endpoint(server, "", protocol="v2", model="digits", batch_size=3, output="margin"), digits(7)[0]


def _params(server: RunningServer) -> tuple[Any, torch.Tensor]:
    obj = endpoint(server, "/sphere", dim=5, input_mode="params", output="scalar", targets=None, batch_size=2)
    return obj, torch.linspace(-2, 2, 35, dtype=torch.float64).reshape(7, 5)


def _metric(server: RunningServer) -> tuple[Any, torch.Tensor]:
    obj = MetricObjective(MetricSpec(metric="f1", dataset="breast_cancer"))
    gen = torch.Generator().manual_seed(0)
    return obj, torch.randn(7, obj.dim, generator=gen, dtype=torch.float64)


FACTORIES: dict[str, Factory] = {"endpoint-json": _json, "endpoint-v2": _v2, "endpoint-params": _params, "metric": _metric}


@pytest.fixture(params=sorted(FACTORIES))
def adapter(request: pytest.FixtureRequest, server: RunningServer) -> Callable[[], tuple[Any, torch.Tensor]]:
    return lambda: FACTORIES[request.param](server)


def test_answer_has_one_finite_value_per_point_and_costs_n(adapter: Callable[[], tuple[Any, torch.Tensor]]) -> None:
    obj, points = adapter()
    ev = evaluate(obj, points)
    assert ev.answer.values is not None and ev.answer.values.shape == (7,)
    assert bool(torch.isfinite(ev.answer.values).all())
    assert (ev.queries, ev.failed) == (7, 0)


def test_batches_keep_point_order_and_are_deterministic(adapter: Callable[[], tuple[Any, torch.Tensor]]) -> None:
    obj, points = adapter()
    batched = evaluate(obj, points).answer.values
    one_by_one = torch.cat([evaluate(adapter()[0], p[None]).answer.values for p in points])  # type: ignore[misc]
    assert batched is not None and len(set(batched.tolist())) > 1  # distinct values, so order matters
    # The server computes in float32, where the batch size changes the rounding.
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evaluate(adapter()[0], points).answer.values, batched)


def test_ranking_query_is_answered_best_first(adapter: Callable[[], tuple[Any, torch.Tensor]]) -> None:
    obj, points = adapter()
    values = evaluate(obj, points).answer.values
    ev = evaluate(adapter()[0], points, kind="ranking", k=3)
    assert ev.answer.values is None and ev.answer.ranking is not None and len(ev.answer.ranking) == 3
    assert values is not None
    assert [values[i] for i in ev.answer.ranking] == sorted(values.tolist())[:3]
    assert ev.queries == 7


def test_wrong_dimension_is_refused(adapter: Callable[[], tuple[Any, torch.Tensor]]) -> None:
    obj, points = adapter()
    with pytest.raises(ObjectiveRefused, match="expected"):
        evaluate(obj, torch.cat([points, points[:, :1]], dim=1))


# --- endpoint: protocols and losses ---------------------------------------------------------


def test_json_and_v2_agree_with_the_local_model(server: RunningServer) -> None:
    x, y = digits(6)
    logits = predict(x).double()
    ce = -torch.log_softmax(logits, 1)[:, 3]
    json_values = evaluate(endpoint(server), x).answer.values
    v2_values = evaluate(endpoint(server, "", protocol="v2", model="digits", datatype="FP64"), x).answer.values
    torch.testing.assert_close(json_values, ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v2_values, ce, rtol=1e-5, atol=1e-5)


def test_margin_mse_and_negate(server: RunningServer) -> None:
    x, y = digits(5)
    z = predict(x).double()
    others = z.clone()
    others[:, 3] = -torch.inf
    margin = (z[:, 3] - others.max(1).values).clamp_min(-2.0)
    got = evaluate(endpoint(server, output="margin", kappa=2.0), x).answer.values
    torch.testing.assert_close(got, margin, rtol=1e-5, atol=1e-5)
    target = [float(i) for i in range(10)]
    mse = ((z - torch.tensor(target, dtype=torch.float64)) ** 2).mean(1)
    got = evaluate(endpoint(server, output="mse", targets=target, negate=True), x).answer.values
    torch.testing.assert_close(got, -mse, rtol=1e-5, atol=1e-5)


def test_params_mode_sends_the_fixed_payload(server: RunningServer) -> None:
    obj = endpoint(server, "/sphere", dim=3, input_mode="params", output="scalar", targets=None, payload={"center": 2.0})
    got = evaluate(obj, torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, 2.0]], dtype=torch.float64)).answer.values
    torch.testing.assert_close(got, torch.tensor([0.0, 5.0], dtype=torch.float64))


@pytest.mark.parametrize("protocol", ["json", "v2"])
def test_request_bodies_carry_every_digit_and_the_payload(protocol: str) -> None:
    def respond(body: Any) -> Response:
        n = len(body["inputs"]) if protocol == "json" else body["inputs"][0]["shape"][0]
        v2 = [{"name": "y", "shape": [n, 1], "datatype": "FP64", "data": [1.0] * n}]
        return Response(json.dumps({"outputs": [[1.0]] * n if protocol == "json" else v2}), media_type="application/json")

    payload = {"big": 2**70, "tag": "x"} if protocol == "json" else {"tag": "x"}  # 2**70: past orjson's integers
    fields: dict[str, Any] = {"model": "m"} if protocol == "v2" else {}
    points = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e-3 + 7.0
    with answering(respond) as (url, seen):
        spec = EndpointSpec(url=url + "/p", dim=3, output="scalar", targets=None, batch_size=2,
                            protocol=protocol, payload=payload, concurrency=1, **fields)
        evaluate(EndpointObjective(spec, allow=ALLOW), points)
    bodies = [body for _, body in seen]
    if protocol == "json":
        assert [b["inputs"] for b in bodies] == [points[:2].tolist(), points[2:].tolist()]  # exact round trip
        assert all(b["big"] == 2**70 and b["tag"] == "x" for b in bodies)
    else:
        assert [b["inputs"][0]["data"] for b in bodies] == [points[:2].flatten().tolist(), points[2].tolist()]
        assert [b["inputs"][0]["shape"] for b in bodies] == [[2, 3], [1, 3]]
        assert all(b["parameters"] == {"tag": "x"} for b in bodies)


def test_perturbation_inputs_stay_within_epsilon_and_bounds() -> None:
    spec = EndpointSpec(url="http://127.0.0.1:1/", base=[0.0, 8.0, 16.0], input_mode="perturbation", epsilon=2.0, clip_lo=0, clip_hi=16)
    obj = EndpointObjective(spec, allow=ALLOW)
    got = obj.inputs_of(torch.tensor([[5.0, -5.0, 1.0], [-1.0, 0.5, -3.0]]))
    assert got.tolist() == [[2.0, 6.0, 16.0], [0.0, 8.5, 14.0]]
    assert obj.dim == 3 and obj.default_x0().tolist() == [0.0, 0.0, 0.0]


def test_adapter_survives_a_new_event_loop(server: RunningServer) -> None:
    obj, x = endpoint(server), digits(2)[0]
    first = asyncio.run(obj.evaluate(Query(points=x)))  # no aclose: the next run has a new loop
    second = evaluate(obj, x)
    torch.testing.assert_close(first.answer.values, second.answer.values)


# --- endpoint: invalid answers ----------------------------------------------------------------


def test_nan_fails_with_a_clear_reason(server: RunningServer) -> None:
    with pytest.raises(ObjectiveInvalid, match=r"non-finite value \(nan\) at point 1"):
        evaluate(endpoint(server, "/nan?rows=1"), digits(4)[0])


def test_nan_is_penalised_and_counted_as_failed(server: RunningServer) -> None:
    x = digits(4)[0]
    clean = evaluate(endpoint(server), x).answer.values
    ev = evaluate(endpoint(server, "/nan?rows=1", on_invalid="penalize", penalty=99.0), x)
    assert ev.answer.values is not None and clean is not None
    assert ev.answer.values[1] == 99.0 and (ev.queries, ev.failed) == (4, 1)
    torch.testing.assert_close(ev.answer.values[[0, 2, 3]], clean[[0, 2, 3]])


def test_wrong_shape_fails_or_penalises_the_whole_batch(server: RunningServer) -> None:
    x = digits(5)[0]
    with pytest.raises(ObjectiveInvalid, match=r"expected outputs for 5 inputs, got shape \[4, 10\]"):
        evaluate(endpoint(server, "/wrongshape"), x)
    ev = evaluate(endpoint(server, "/wrongshape", on_invalid="penalize", penalty=7.0, batch_size=2), x)
    assert ev.answer.values is not None and ev.answer.values.tolist() == [7.0] * 5
    assert (ev.queries, ev.failed) == (5, 5)


# --- endpoint: retries, timeouts, status codes ------------------------------------------------


def test_timeout_fails_with_reason_after_retries(server: RunningServer) -> None:
    start = time.monotonic()
    with pytest.raises(ObjectiveError, match=r"timed out after 0.2s \(2 attempts\)"):
        evaluate(endpoint(server, "/slow?delay=1.5", timeout_s=0.2, retries=1), digits(2)[0])
    assert time.monotonic() - start < 1.2


def test_500_then_recovery_succeeds_and_reports_failed(server: RunningServer) -> None:
    key, x = uuid.uuid4().hex, digits(4)[0]
    clean = evaluate(endpoint(server), x).answer.values
    ev = evaluate(endpoint(server, f"/flaky?key={key}&fail=2", retries=3), x)
    torch.testing.assert_close(ev.answer.values, clean)
    assert (ev.queries, ev.failed) == (4, 4)
    assert server.app.state.calls[f"flaky:{key}"] == 3
    key = uuid.uuid4().hex  # two batches in turn: only the first one's points needed a retry
    ev = evaluate(endpoint(server, f"/flaky?key={key}&fail=1", batch_size=2, concurrency=1), x)
    torch.testing.assert_close(ev.answer.values, clean, rtol=1e-5, atol=1e-5)
    assert (ev.queries, ev.failed) == (4, 2)


def test_500_past_the_retry_budget_names_status_and_body(server: RunningServer) -> None:
    key = uuid.uuid4().hex
    with pytest.raises(ObjectiveError) as info:
        evaluate(endpoint(server, f"/flaky?key={key}&fail=10", retries=2), digits(2)[0])
    assert info.value.status == 500 and info.value.body is not None and "injected failure 3" in info.value.body
    assert f"{server.url}/flaky answered 500 after 3 attempts" in str(info.value)
    assert "key=" not in str(info.value)  # query strings may carry secrets: not shown


def test_429_honours_retry_after(server: RunningServer) -> None:
    key = uuid.uuid4().hex
    ev = evaluate(endpoint(server, f"/ratelimit?key={key}&times=2", retries=2, backoff_s=5.0), digits(3)[0])
    assert (ev.queries, ev.failed) == (3, 3)  # backoff_s=5 would time the test out: Retry-After: 0 won
    assert server.app.state.calls[f"ratelimit:{key}"] == 3


def test_long_retry_after_reschedules_the_segment(server: RunningServer) -> None:
    with pytest.raises(ObjectiveTransient, match="retry after 600s"):
        evaluate(endpoint(server, f"/ratelimit?key={uuid.uuid4().hex}&after=600"), digits(1)[0])


def test_client_errors_are_not_retried_and_secrets_never_shown(server: RunningServer) -> None:
    before = server.app.state.calls["auth"]
    with pytest.raises(ObjectiveError) as info:
        evaluate(endpoint(server, "/auth", headers={"Authorization": "Bearer wrong-secret"}), digits(1)[0])
    assert info.value.status == 401 and server.app.state.calls["auth"] == before + 1
    assert "wrong-secret" not in str(info.value)
    obj = endpoint(server, "/auth", headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN not in repr(obj.spec) and TOKEN not in obj.spec.model_dump_json()
    assert evaluate(obj, digits(1)[0]).queries == 1


# --- endpoint: SSRF guard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/predict", "http://[::1]:9/", "http://127.1:9/",
     "http://0x7f000001:9/", "http://[::ffff:169.254.169.254]/", "http://metadata.google.internal/",
     "http://localhost:9/", "http://model.internal/", "http://192.168.1.1/", "http://[fd00::1]/", "http://0.0.0.0/"],
)
def test_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(ObjectiveRefused, match="refused"):
        check_url_static(url)
    with pytest.raises(ObjectiveRefused, match="refused"):
        evaluate(EndpointObjective(EndpointSpec(url=url, dim=1)), torch.zeros(1, 1))


def test_the_api_precheck_needs_neither_torch_nor_workers() -> None:
    code = (
        "import sys; from zoserve.models.endpoint import URLRefused, check_url_static\n"
        "try:\n    check_url_static('http://169.254.169.254/')\nexcept URLRefused as e:\n    print(e)\n"
        "assert not [m for m in sys.modules if m == 'torch' or m.startswith('workers')]"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "link-local" in out.stdout


def test_allow_list_takes_names_ips_and_cidrs() -> None:
    check_url_static("http://10.1.2.3/", ["10.0.0.0/8"])
    check_url_static("http://metadata.google.internal/", ["metadata.google.internal"])
    check_url_static("http://[::1]/", ["::1"])
    check_url_static("https://example.com/")  # public names pass the static check (no DNS here)
    with pytest.raises(ObjectiveRefused, match="scheme"):
        check_url_static("file:///etc/passwd", ["127.0.0.1"])
    asyncio.run(check_url("http://localhost:9/", ["127.0.0.0/8", "::1"]))
    with pytest.raises(ObjectiveRefused):
        asyncio.run(check_url("http://localhost:9/", ["10.0.0.0/8"]))


def test_loopback_server_needs_the_allow_list(server: RunningServer) -> None:
    spec = EndpointSpec(url=server.url + "/predict", dim=64)
    with pytest.raises(ObjectiveRefused, match="loopback"):
        evaluate(EndpointObjective(spec), digits(1)[0])


def test_guarded_session_vets_every_connect_to_a_name(server: RunningServer) -> None:
    """The session's resolver refuses a name's internal addresses at connect time (DNS rebinding after
    ``check_url`` gets nowhere); allow-listed, the same request goes through."""
    url = server.url.replace("127.0.0.1", "localhost") + "/predict"

    async def post(allow: list[str]) -> int:
        async with guarded_session(allow, 1) as session:
            async with session.post(url, json={"inputs": [[0.0] * 64]}) as response:
                return response.status

    with pytest.raises(ObjectiveRefused, match="loopback"):
        asyncio.run(post([]))
    assert asyncio.run(post(["127.0.0.0/8", "::1"])) == 200


def test_redirects_are_followed_and_rechecked(server: RunningServer) -> None:
    x = digits(2)[0]
    clean = evaluate(endpoint(server), x).answer.values
    torch.testing.assert_close(evaluate(endpoint(server, "/redirect?to=/predict"), x).answer.values, clean)
    with pytest.raises(ObjectiveRefused, match="169.254.169.254"):
        evaluate(endpoint(server, "/redirect?to=" + quote("http://169.254.169.254/latest/meta-data/")), x)
    nested = "/predict"
    for _ in range(4):
        nested = "/redirect?to=" + quote(nested)
    with pytest.raises(ObjectiveError, match="redirected more than 3 times"):
        evaluate(endpoint(server, nested), x)


def test_redirect_hops_are_checked_before_any_request() -> None:
    def respond(body: Any) -> Response:
        return Response(status_code=307, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    with answering(respond) as (url, seen):
        obj = EndpointObjective(EndpointSpec(url=url + "/predict", dim=1), allow=ALLOW)
        with pytest.raises(ObjectiveRefused, match="link-local"):
            evaluate(obj, torch.zeros(1, 1))
    assert [path for path, _ in seen] == ["/predict"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI) and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def test_https_endpoints_are_verified_and_an_untrusted_certificate_fails_at_once(
    tls_files: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint whose certificate no trusted CA signed fails without retries, saying why; trusted
    through ``SSL_CERT_FILE`` (an internal CA, as httpx reads it), the same endpoint answers."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ssl_context.cache_clear()
    with serve(tls=tls_files) as running:
        obj = endpoint(running, retries=3, backoff_s=5.0)  # a retry would take seconds
        t0 = time.monotonic()
        with pytest.raises(ObjectiveError, match="TLS certificate not trusted"):
            evaluate(obj, digits(1)[0])
        assert time.monotonic() - t0 < 2.0
        monkeypatch.setenv("SSL_CERT_FILE", tls_files[0])
        ssl_context.cache_clear()
        try:
            assert evaluate(endpoint(running), digits(2)[0]).queries == 2
        finally:
            ssl_context.cache_clear()


def test_cross_origin_redirect_drops_credentials(server: RunningServer) -> None:
    other_origin = server.url.replace("127.0.0.1", "localhost") + "/auth"  # same socket, other origin
    headers = {"Authorization": f"Bearer {TOKEN}"}
    obj = EndpointObjective(
        EndpointSpec(url=f"{server.url}/redirect?to={quote(other_origin)}", dim=64, headers=headers),
        allow=[*ALLOW, "localhost"],
    )
    with pytest.raises(ObjectiveError) as info:
        evaluate(obj, digits(1)[0])
    assert info.value.status == 401


# --- metric over an endpoint model ---------------------------------------------------------------


def test_metric_tunes_offsets_of_a_served_model(server: RunningServer) -> None:
    spec = MetricSpec(
        metric="accuracy", dataset="digits", model="endpoint", standardize=False,
        endpoint=EndpointSpec(url=server.url + "/predict", dim=64, batch_size=256),
    )
    obj = MetricObjective(spec, allow=ALLOW)
    shifted = torch.zeros(10, dtype=torch.float64)
    shifted[3] = 1e3  # everything predicted as a 3
    ev = evaluate(obj, torch.stack([obj.default_x0(), shifted]))
    assert ev.answer.values is not None
    assert ev.answer.values[0] < -0.97  # the served model is accurate
    assert abs(float(ev.answer.values[1]) + float((obj.split.y_train == 3).double().mean())) < 1e-12
    assert obj.test_metric(obj.default_x0()) > 0.97


# --- an attack through the endpoint -------------------------------------------------------------


def test_zo_signsgd_attack_misclassifies_within_epsilon(server: RunningServer) -> None:
    """Plain ZO-SignSGD with a one-sided RGE (Liu et al. 2019): q=20 directions + the base point."""
    x, y = digits_data()
    image, label, eps = x[210].double(), int(y[210]), 4.0  # a digit of median margin
    assert int(predict(image[None]).argmax()) == label
    spec = EndpointSpec(
        url=server.url + "/predict", base=image.tolist(), input_mode="perturbation", epsilon=eps,
        clip_lo=0.0, clip_hi=16.0, output="margin", targets=label, kappa=0.5,
    )
    obj = EndpointObjective(spec, allow=ALLOW)

    async def attack() -> tuple[torch.Tensor, list[float], int]:
        xk, history, queries = obj.default_x0(), [], 0
        for step in range(40):
            u = torch.randn(20, obj.dim, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
            ev = await obj.evaluate(Query(points=torch.cat([xk[None], xk[None] + 0.5 * u])))
            f, queries = ev.answer.values, queries + ev.queries
            assert f is not None
            history.append(float(f[0]))
            if f[0] <= -0.5:
                break
            grad = ((f[1:] - f[0])[:, None] * u).mean(0) / 0.5
            xk = (xk - 0.5 * grad.sign()).clamp(-eps, eps)
        await obj.aclose()
        return obj.inputs_of(xk[None])[0], history, queries

    adversarial, history, queries = asyncio.run(attack())
    assert history[-1] <= -0.5 < history[0]
    assert int(predict(adversarial[None]).argmax()) != label
    assert float((adversarial - image).abs().max()) <= eps + 1e-9
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 16.0
    assert queries == 21 * len(history)
