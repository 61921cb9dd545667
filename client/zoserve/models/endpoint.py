"""Query-only objective specs: a model behind an HTTP endpoint, and a non-differentiable metric.

Pure data (torch-free). The worker adapters live in ``workers/objectives/endpoint.py`` and
``workers/objectives/metric.py``.

SSRF: :func:`check_url_static` (stdlib only, no DNS) is the API's quick pre-check of ``url``
against the operator allow-list; it raises :class:`URLRefused` (a ``ValueError``). The
worker checks again at call time, resolving every address (``workers/objectives/guard.py``).

Secrets: ``headers`` values are :class:`pydantic.SecretStr`. They print as ``'**********'``
and serialise masked, so API responses never echo them. The one place that needs the real
values (the job store, then the worker) dumps with ``context={"reveal_secrets": True}`` and
reads them with :meth:`EndpointObjective.header_values`.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    SerializationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

EndpointProtocol = Literal["json", "v2"]
EndpointOutput = Literal["scalar", "cross_entropy", "margin", "mse"]
InputMode = Literal["direct", "perturbation", "params"]
MetricName = Literal["accuracy", "precision", "recall", "f1", "jaccard", "auc"]
BundledDataset = Literal["breast_cancer", "digits", "wine", "iris"]
BINARY_DATASETS = frozenset({"breast_cancer"})

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$")  # RFC 9110 field-name
_RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # safe in a URL path segment
MASK = "**********"


class EndpointObjective(BaseModel):
    """A model served over HTTP; the worker sends batches of inputs and turns outputs into a loss.

    ``input_mode`` says what the optimised vector x is:

    * ``direct``: x is the input itself (clipped to ``[clip_lo, clip_hi]`` when given);
    * ``perturbation``: the input is ``clip(base + clamp(x, -epsilon, epsilon), clip_lo,
      clip_hi)``, an L∞ attack around ``base`` (x0 = 0);
    * ``params``: x is sent as model parameters (json key ``params`` / v2 tensor
      ``input_name``) next to the fixed ``payload``.

    ``output`` says what is minimised: ``scalar`` (one number per input) or a loss of the
    output vector z: ``cross_entropy`` (−log softmax(z)[targets]), ``margin`` (Carlini–Wagner:
    max(z_y − max_{j≠y} z_j, −kappa), y = ``targets``), ``mse`` (mean (z − targets)²);
    ``negate`` maximises instead.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["endpoint"] = "endpoint"
    url: HttpUrl = Field(description="Endpoint URL (json) or server base URL (v2). http(s) only.")
    protocol: EndpointProtocol = Field(
        "json",
        description="'json': POST url {'inputs': [[...]]} -> {'outputs': [...]}; "
        "'v2': Open Inference Protocol, POST {url}/v2/models/{model}/infer.",
    )
    model: str | None = Field(None, description="Model name (v2 only).", pattern=_NAME.pattern, max_length=128)
    model_version: str | None = Field(None, description="Model version (v2 only).", pattern=_NAME.pattern, max_length=128)
    input_name: str = Field("input", description="Name of the v2 input tensor.", pattern=_NAME.pattern, max_length=128)
    output_name: str | None = Field(None, description="v2 output tensor to read (default: the first).", max_length=128)
    datatype: Literal["FP32", "FP64"] = Field("FP32", description="v2 input tensor datatype.")
    input_shape: list[int] | None = Field(
        None, max_length=8, description="Shape of one input (e.g. [1, 8, 8]); its product must equal dim."
    )
    headers: dict[Annotated[str, Field(max_length=128)], Annotated[SecretStr, Field(max_length=8192)]] = Field(
        default_factory=dict, max_length=20, description="Extra request headers (auth); never echoed."
    )
    payload: dict[str, Any] | None = Field(
        None, description="Fixed JSON sent with every request: top-level fields (json) or 'parameters' (v2)."
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="Per-request timeout in seconds.")
    retries: int = Field(3, ge=0, le=10, description="Retries after connect errors, timeouts, 429 and 5xx.")
    backoff_s: float = Field(0.5, ge=0, le=60, description="First retry delay; doubles per retry, with jitter.")
    batch_size: int = Field(64, ge=1, le=4096, description="Inputs per request.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")
    output: EndpointOutput = Field("scalar", description="What to minimise (see class docstring).")
    scores: Literal["logits", "probabilities"] = Field(
        "logits", description="Whether output vectors are logits or probabilities (log is taken)."
    )
    targets: int | list[float] | None = Field(
        None, description="Class index (cross_entropy, margin) or target vector (mse)."
    )
    kappa: float = Field(0.0, ge=0, le=1e6, description="Margin confidence κ (margin only).")
    negate: bool = Field(False, description="Maximise the output/loss instead of minimising it.")
    input_mode: InputMode = Field("direct", description="What x is (see class docstring).")
    base: list[float] | None = Field(None, max_length=1_048_576, description="Base input (perturbation).")
    epsilon: float | None = Field(None, gt=0, le=1e6, description="L∞ budget (perturbation).")
    clip_lo: float | None = Field(None, description="Lower bound of every input coordinate.")
    clip_hi: float | None = Field(None, description="Upper bound of every input coordinate.")
    dim: int | None = Field(None, ge=1, le=1_048_576, description="Dimension of x (default: len(base)).")
    on_invalid: Literal["fail", "penalize"] = Field(
        "fail", description="Bad answers (NaN, inf, wrong shape): fail the job, or use `penalty`."
    )
    penalty: float = Field(1e6, description="Value given to the optimiser for an invalid answer (minimisation).")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_headers(headers)

    @field_validator("penalty", "clip_lo", "clip_hi", "kappa")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @field_serializer("headers")
    def _mask_headers(self, headers: dict[str, SecretStr], info: SerializationInfo) -> dict[str, str]:
        reveal = bool(info.context and info.context.get("reveal_secrets"))
        return {k: v.get_secret_value() if reveal else MASK for k, v in headers.items()}

    @model_validator(mode="after")
    def _check_consistency(self) -> EndpointObjective:
        if self.protocol == "v2" and self.model is None:
            raise ValueError("protocol 'v2' needs `model`")
        if self.input_mode == "perturbation" and (self.base is None or self.epsilon is None):
            raise ValueError("input_mode 'perturbation' needs `base` and `epsilon`")
        if self.dim is None and self.base is None:
            raise ValueError("give `dim` (or `base`)")
        if self.dim is not None and self.base is not None and self.dim != len(self.base):
            raise ValueError(f"dim={self.dim} but base has {len(self.base)} values")
        n = self.dim if self.dim is not None else len(self.base or ())
        if self.input_shape is not None and math.prod(self.input_shape) != n:
            raise ValueError(f"input_shape {self.input_shape} does not hold {n} values")
        if self.clip_lo is not None and self.clip_hi is not None and self.clip_lo >= self.clip_hi:
            raise ValueError("clip_lo must be below clip_hi")
        self._check_targets()
        return self

    def _check_targets(self) -> None:
        if self.output in ("cross_entropy", "margin") and (not isinstance(self.targets, int) or self.targets < 0):
            raise ValueError(f"output {self.output!r} needs `targets`: a class index >= 0")
        if self.output == "mse" and not isinstance(self.targets, list):
            raise ValueError("output 'mse' needs `targets`: a list of numbers")
        if self.output == "scalar" and self.targets is not None:
            raise ValueError("output 'scalar' takes no `targets`")

    def header_values(self) -> dict[str, str]:
        """The real header values (worker side only; never log or return them)."""
        return {k: v.get_secret_value() for k, v in self.headers.items()}


def check_headers(headers: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """Extra request headers a user may set: token names, not hop-by-hop or framing ones, one-line values."""
    for name, value in headers.items():
        if not _TOKEN.match(name) or name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header name {name!r} is not allowed")
        secret = value.get_secret_value()
        if len(secret) > 8192 or any(c in secret for c in "\r\n\0"):
            raise ValueError(f"header {name!r} has an invalid value")
    return headers


class Shard(BaseModel):
    """One client's share of the train split, with a label skew (federated heterogeneity)."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, le=1023, description="This client's shard, 0-based.")
    count: int = Field(ge=2, le=1024, description="How many shards the train split is cut into.")
    label_skew: float = Field(0.0, ge=0.0, le=1.0, description="Share of rows sent to the shard whose home class is their label (0 = iid).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the assignment.")

    @model_validator(mode="after")
    def _index_in_range(self) -> "Shard":
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be < count {self.count}")
        return self


class MetricObjective(BaseModel):
    """Tune a model's parameters so a non-differentiable metric improves (value = −metric, train split).

    The optimised vector holds the model's parameters: ``linear``/``logistic`` weights and bias
    (one output for binary tasks, one per class otherwise), an ``mlp`` with ``hidden`` tanh
    layers (flattened per layer: weight then bias), or for ``endpoint`` one offset per class
    added to the served model's outputs (decision-threshold tuning of a deployed classifier).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["metric"] = "metric"
    metric: MetricName = Field(description="Metric to maximise.")
    average: Literal["binary", "macro"] | None = Field(
        None, description="Averaging for precision/recall/f1/jaccard/auc (default: binary for 2 classes, else macro)."
    )
    dataset: BundledDataset | None = Field(None, description="A bundled scikit-learn dataset.")
    dataset_id: str | None = Field(
        None, description="An uploaded .npz dataset with arrays X and y.", pattern=_NAME.pattern, max_length=128
    )
    model: Literal["logistic", "linear", "mlp", "endpoint"] = Field(
        "logistic", description="Model whose parameters are x."
    )
    hidden: list[int] = Field(default_factory=list, max_length=4, description="MLP hidden layer sizes.")
    endpoint: EndpointObjective | None = Field(None, description="The served model (model='endpoint').")
    split_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the stratified train/test split.")
    test_fraction: float = Field(0.25, gt=0, le=0.9, description="Fraction of the data held out for test_metric.")
    standardize: bool = Field(True, description="Standardise features with train-split mean and std.")
    shard: "Shard | None" = Field(None, description="Train on one client's shard only (federated jobs).")

    @field_validator("hidden")
    @classmethod
    def _check_hidden(cls, hidden: list[int]) -> list[int]:
        if any(not 1 <= h <= 1024 for h in hidden):
            raise ValueError("hidden sizes must be within 1..1024")
        return hidden

    @model_validator(mode="after")
    def _check_consistency(self) -> MetricObjective:
        if (self.dataset is None) == (self.dataset_id is None):
            raise ValueError("give exactly one of `dataset` and `dataset_id`")
        if self.model == "mlp" and not self.hidden:
            raise ValueError("model 'mlp' needs `hidden` layer sizes")
        if (self.model == "endpoint") != (self.endpoint is not None):
            raise ValueError("`endpoint` is required for model 'endpoint' and only then")
        if self.endpoint is not None and self.endpoint.input_mode != "direct":
            raise ValueError("the metric's endpoint must use input_mode 'direct'")
        if self.average == "binary" and self.dataset is not None and self.dataset not in BINARY_DATASETS:
            raise ValueError(f"average 'binary' needs a two-class dataset; {self.dataset!r} has more classes")
        return self


# --- SSRF pre-check (stdlib only; the worker's guard adds DNS and connect-time checks) ----------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOWED_SCHEMES = ("http", "https")
# Without DNS, well-known names stand for their usual address; other internal suffixes are
# refused outright unless the name itself is allow-listed.
KNOWN_NAMES: dict[str, IPAddress] = {
    "localhost": ipaddress.ip_address("127.0.0.1"),
    "metadata": ipaddress.ip_address("169.254.169.254"),
    "metadata.google.internal": ipaddress.ip_address("169.254.169.254"),
    "instance-data": ipaddress.ip_address("169.254.169.254"),
}
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


class URLRefused(ValueError):
    """An endpoint URL the SSRF guard refuses (scheme, internal address or name)."""


def parse_allow(allow: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """Split allow-list entries into host names and networks (an IP is a /32 or /128)."""
    names: set[str] = set()
    nets: list[IPNetwork] = []
    for entry in allow:
        entry = entry.strip().lower()
        try:
            nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return frozenset(names), tuple(nets)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, 6to4, Teredo client, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be called (``None`` when it is globally routable)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return refusal_reason(inner)
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (cloud metadata range)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL, "unique-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for bad, reason in checks if bad), None)


def vet_address(host: str, ip: IPAddress, nets: Sequence[IPNetwork]) -> None:
    """Raise :class:`URLRefused` unless ``ip`` is global or inside an allowed network."""
    if any(ip.version == net.version and ip in net for net in nets):
        return
    reason = refusal_reason(ip)
    if reason is not None:
        raise URLRefused(f"refused to call {host}: address {ip} is {reason}; ask the operator to allow-list it")


def literal_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, including legacy IPv4 spellings that resolvers accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # '127.1', '0x7f.0.0.1', '2130706433': inet_aton accepts what getaddrinfo would
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def split_url(url: str) -> tuple[str, int]:
    """Validate the scheme and return ``(host, port)`` (host lower-case, no trailing dot)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise URLRefused(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise URLRefused(f"refused URL scheme {scheme!r}: only http and https are allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise URLRefused("refused URL without a host")
    return host, port or (443 if scheme == "https" else 80)


def check_host_static(host: str, names: frozenset[str], nets: Sequence[IPNetwork]) -> bool:
    """Check what can be known without DNS; True when ``host`` needs no DNS check."""
    if host in names:
        return True
    ip = literal_ip(host)
    if ip is not None:
        vet_address(host, ip, nets)
        return True
    if host in KNOWN_NAMES:
        vet_address(host, KNOWN_NAMES[host], nets)
        return False
    if host.endswith(INTERNAL_SUFFIXES):
        raise URLRefused(f"refused to call {host}: internal host name; ask the operator to allow-list it")
    return False


def check_url_static(url: str, allow: Sequence[str] = ()) -> None:
    """Quick SSRF pre-check without DNS; raises :class:`URLRefused`.

    Args:
        url: the endpoint URL.
        allow: operator allow-list: host names, IPs or CIDR blocks such as ``"127.0.0.0/8"``.
    """
    host, _ = split_url(url)
    names, nets = parse_allow(allow)
    check_host_static(host, names, nets)
