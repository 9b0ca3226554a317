"""Where a webhook may send: outbound safety.

An endpoint is a tenant's URL, but the request leaves from inside our network, so it must
never reach what only our network can reach (metadata services, databases, admin pages).
Unless WEBHOOK_ALLOW_PRIVATE_TARGETS is set (tests, `make run`):

* at creation: http(s) only, no credentials in the URL, no literal address or
  ``localhost`` name that is not public;
* at every delivery (tenant_api.webhooks.delivery): the host is resolved, EVERY address
  must be public (global unicast: not loopback, private, link-local, shared, multicast,
  reserved or unspecified, IPv4-mapped IPv6 included), and the connection goes to the
  address that was checked (no second lookup a DNS server could answer differently);
  redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from tenant_api.errors import invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL resolves to an address deliveries may not reach."""


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("url", "an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise invalid("url", "no user or password in the URL: put a token in its path or query instead")
    if parts.fragment:
        raise invalid("url", "no #fragment (it is never sent)")
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise invalid("url", "not a valid port") from None
    return parts


def check_url(url: str, allow_private: bool) -> str:
    """422 unless ``url`` may be a webhook's endpoint; returns its origin (for the audit
    trail, which never holds the whole URL)."""
    parts = parse(url)
    host = parts.hostname or ""
    if not allow_private:
        literal = _literal(host)
        if (literal is not None and not is_public(literal)) or host == "localhost" or host.endswith(".localhost"):
            raise invalid("url", "not a public address (deliveries never go to loopback, private or link-local"
                                 " addresses)")
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}".lower()


async def resolve(host: str, port: int, allow_private: bool) -> IPAddress:
    """The address to connect to: ``host`` resolved now, every address checked."""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise TargetRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise TargetRefused(f"cannot resolve {host}")
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise TargetRefused(f"{host} resolves to a non-public address ({refused[0]}): not delivered")
    return addresses[0]
