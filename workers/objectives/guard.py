"""SSRF guard for endpoint objectives: refuse URLs that reach inside the deployment.

A job's objective URL is user input, and the worker that calls it sits inside our network.
Every address a host name resolves to must be globally routable, or be allow-listed by the
operator (``allow``: host names, IP addresses or CIDR blocks such as ``"127.0.0.0/8"``).

Refused: loopback, link-local (169.254.0.0/16 with the cloud metadata address
169.254.169.254, fe80::/10), private (10/8, 172.16/12, 192.168/16), unique-local fc00::/7,
unspecified, multicast, reserved, and anything else ``ipaddress`` does not call global
(100.64/10, documentation ranges, ...). IPv4 addresses embedded in IPv6 (mapped, 6to4, Teredo,
NAT64) are checked as IPv4.

Three layers use it:

* ``check_url_static`` — the API's quick pre-check (no DNS): scheme, literal IPs in any
  legacy form (``127.1``, ``0x7f000001``) and well-known internal names.
* ``check_url`` — the worker's check at call time: resolves *all* addresses of the host.
* ``GuardedBackend`` — an httpcore network backend that vets the addresses at connect time and
  connects to the vetted address itself, so DNS rebinding between check and connect cannot
  slip through. The endpoint client also re-checks every redirect hop with ``check_url``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore

from workers.objectives.base import ObjectiveRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
# Names that reach internal services without DNS telling us so (resolver search paths, metadata).
# Without DNS, well-known names stand for their usual address; other internal suffixes are
# refused outright unless the name itself is allow-listed.
_KNOWN_NAMES = {
    "localhost": ipaddress.ip_address("127.0.0.1"),
    "metadata": ipaddress.ip_address("169.254.169.254"),
    "metadata.google.internal": ipaddress.ip_address("169.254.169.254"),
    "instance-data": ipaddress.ip_address("169.254.169.254"),
}
_INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _parse_allow(allow: Iterable[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
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
        (isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"), "unique-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    return next((reason for bad, reason in checks if bad), None)


def _allowed(ip: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in nets)


def _vet(host: str, ip: IPAddress, nets: Sequence[IPNetwork]) -> None:
    reason = None if _allowed(ip, nets) else refusal_reason(ip)
    if reason is not None:
        raise ObjectiveRefused(f"refused to call {host}: address {ip} is {reason}; ask the operator to allow-list it")


def _literal_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, including legacy IPv4 spellings that resolvers accept."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:  # '127.1', '0x7f.0.0.1', '2130706433': inet_aton accepts what getaddrinfo would
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _split(url: str) -> tuple[str, int]:
    """Validate the scheme and return ``(host, port)``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ObjectiveRefused(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ObjectiveRefused(f"refused URL scheme {scheme!r}: only http and https are allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ObjectiveRefused("refused URL without a host")
    return host, port or (443 if scheme == "https" else 80)


def _check_host_static(host: str, names: frozenset[str], nets: Sequence[IPNetwork]) -> bool:
    """Check what can be known without DNS; True when ``host`` needs no further check."""
    if host in names:
        return True
    ip = _literal_ip(host)
    if ip is not None:
        _vet(host, ip, nets)
        return True
    if host in _KNOWN_NAMES:
        _vet(host, _KNOWN_NAMES[host], nets)
        return False
    if host.endswith(_INTERNAL_SUFFIXES):
        raise ObjectiveRefused(f"refused to call {host}: internal host name; ask the operator to allow-list it")
    return False


def check_url_static(url: str, allow: Sequence[str] = ()) -> None:
    """Quick pre-check without DNS (API side); raises :class:`ObjectiveRefused`."""
    host, _ = _split(url)
    names, nets = _parse_allow(allow)
    _check_host_static(host, names, nets)


async def resolve_host(host: str, port: int, allow: Sequence[str] = ()) -> list[IPAddress]:
    """Every address of ``host``, vetted; raises :class:`ObjectiveRefused` if any is refused.

    Refusing when *any* address is internal (not just the first) defeats names that mix a
    public and an internal record.
    """
    host = host.strip("[]").rstrip(".").lower()
    names, nets = _parse_allow(allow)
    ip = _literal_ip(host)
    if ip is not None:
        if host not in names:
            _vet(host, ip, nets)
        return [ip]
    if host not in names:
        _check_host_static(host, names, nets)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ObjectiveRefused(f"cannot resolve {host}: {exc}") from None
    addrs = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    if not addrs:
        raise ObjectiveRefused(f"cannot resolve {host}: no addresses")
    if host not in names:
        for addr in addrs:
            _vet(host, addr, nets)
    return addrs


async def check_url(url: str, allow: Sequence[str] = ()) -> None:
    """Full check at call time: scheme, then every resolved address of the host."""
    host, port = _split(url)
    await resolve_host(host, port, allow)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that vets every TCP connect and connects to the vetted address.

    TLS still verifies the certificate against the original host name: httpcore passes the
    origin host as ``server_hostname`` to ``start_tls``, not the address we connect to.
    """

    def __init__(self, allow: Sequence[str] = (), inner: httpcore.AsyncNetworkBackend | None = None):
        self._allow = tuple(allow)
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addrs = await resolve_host(host, port, self._allow)
        error: Exception | None = None
        for addr in addrs:  # first vetted address that accepts the connection
            try:
                return await self._inner.connect_tcp(str(addr), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise ObjectiveRefused("unix sockets are not allowed for endpoint objectives")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
