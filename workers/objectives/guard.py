"""SSRF guard for endpoint objectives: refuse URLs that reach inside the deployment.

A job's objective URL is user input, and the worker that calls it sits inside our network.
Every address a host name resolves to must be globally routable, or be allow-listed by the
operator (``allow``: host names, IP addresses or CIDR blocks such as ``"127.0.0.0/8"``).

Refused: loopback, link-local (169.254.0.0/16 with the cloud metadata address
169.254.169.254, fe80::/10), private (10/8, 172.16/12, 192.168/16), unique-local fc00::/7,
unspecified, multicast, reserved, and anything else ``ipaddress`` does not call global
(100.64/10, documentation ranges, ...). IPv4 addresses embedded in IPv6 (mapped, 6to4, Teredo,
NAT64) are checked as IPv4. Only http and https.

Three layers:

* ``check_url_static`` — the quick pre-check without DNS: scheme, literal IPs in any legacy
  form (``127.1``, ``0x7f000001``) and well-known internal names. The logic is stdlib-only and
  lives in ``zoserve.models.endpoint`` so the API can run it without importing the workers.
* ``check_url`` — the worker's check at call time: resolves *all* addresses of the host.
* ``GuardedResolver`` — the resolver of the endpoint client's aiohttp connector: it vets every
  address of a host name at connect time and hands the connector only vetted addresses, which
  it then connects to, so DNS rebinding between check and connect cannot slip through. aiohttp
  connects to IP literals without asking a resolver (and refuses legacy forms such as
  ``127.1``), so the endpoint client checks every URL it requests with ``check_url`` first: the
  job's URL once, then every redirect hop.

Everything refused raises :class:`ObjectiveRefused`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from zoserve.models import endpoint as rules

from workers.objectives.base import ObjectiveRefused

__all__ = ["GuardedResolver", "check_url", "check_url_static", "refusal_reason", "resolve_host"]

refusal_reason = rules.refusal_reason


def check_url_static(url: str, allow: Sequence[str] = ()) -> None:
    """Quick pre-check without DNS; raises :class:`ObjectiveRefused`."""
    try:
        rules.check_url_static(url, allow)
    except rules.URLRefused as exc:
        raise ObjectiveRefused(str(exc)) from None


async def resolve_host(host: str, port: int, allow: Sequence[str] = ()) -> list[rules.IPAddress]:
    """Every address of ``host``, vetted; raises :class:`ObjectiveRefused` if any is refused.

    Refusing when *any* address is internal (not just the first) defeats names that mix a
    public and an internal record.
    """
    host = host.strip("[]").rstrip(".").lower()
    names, nets = rules.parse_allow(allow)
    try:
        ip = rules.literal_ip(host)
        if ip is not None:
            if host not in names:
                rules.vet_address(host, ip, nets)
            return [ip]
        if host not in names:
            rules.check_host_static(host, names, nets)
        addrs = await _getaddrinfo(host, port)
        if host not in names:
            for addr in addrs:
                rules.vet_address(host, addr, nets)
    except rules.URLRefused as exc:
        raise ObjectiveRefused(str(exc)) from None
    return addrs


async def _getaddrinfo(host: str, port: int) -> list[rules.IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ObjectiveRefused(f"cannot resolve {host}: {exc}") from None
    addrs = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    if not addrs:
        raise ObjectiveRefused(f"cannot resolve {host}: no addresses")
    return addrs


async def check_url(url: str, allow: Sequence[str] = ()) -> None:
    """Full check at call time: scheme, then every resolved address of the host."""
    try:
        host, port = rules.split_url(url)
    except rules.URLRefused as exc:
        raise ObjectiveRefused(str(exc)) from None
    await resolve_host(host, port, allow)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that answers with vetted addresses only (see the module docstring).

    TLS still verifies the certificate against the original host name: aiohttp passes the URL's
    host as ``server_hostname``, not the address it connects to.
    """

    def __init__(self, allow: Sequence[str] = ()):
        self._allow = tuple(allow)

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addrs = await resolve_host(host, port, self._allow)
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [ResolveResult(hostname=host, host=str(addr), port=port, proto=0, flags=flags,
                              family=socket.AF_INET6 if addr.version == 6 else socket.AF_INET) for addr in addrs]

    async def close(self) -> None:
        return None
