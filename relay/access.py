"""Who may join: the private relay's token, the browser origins allowed, and the key a client is counted under.

Pure functions with no I/O; the route gathers the raw values (query, headers, peer address) and
``relay.service`` decides with them.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

# An IPv6 client gets a whole /64 from its provider, so limits count per /64, as they count per IPv4 address.
IPV6_PREFIX = 64
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


@dataclass(frozen=True, slots=True)
class Client:
    """What the relay knows about who is connecting, gathered from the request before admission."""

    key: str = "unknown"  # the address limits count against (see ``client_key``)
    origin: str | None = None  # the Origin header; browsers always send it, other clients usually do not
    host: str | None = None  # the Host header the client addressed
    token: str | None = None  # the token presented in the query string or an ``Authorization: Bearer`` header


def client_key(address: str | None) -> str:
    """The key limits count a client address under: the IPv4 address, or the IPv6 address's /64 network."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # e.g. a Unix socket path: one key per path
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer T`` header, or ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_ok(expected: str, presented: str | None) -> bool:
    """Whether ``presented`` is the relay's token; any token passes when the relay has none.

    Compared in constant time (``hmac.compare_digest``) so the answer time does not leak how much matched.
    """
    if not expected:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def parse_origins(raw: str) -> frozenset[str] | None:
    """The ``allowed_origins`` setting as a set of normalised origins; ``None`` means any origin (``*``)."""
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if "*" in items:
        return None
    return frozenset(normal for normal in (_normal_origin(item) for item in items) if normal)


def origin_ok(origin: str | None, host: str | None, allowed: frozenset[str] | None) -> bool:
    """Whether a WebSocket with this ``Origin`` may join.

    No Origin header: not a browser (the CLI, scripts), allowed; a browser always sends one, so a page on
    another site cannot hide it. A browser page is allowed when it came from this relay (its origin's host
    is the Host the socket was opened to) or its origin is listed. This is what defends against cross-site
    WebSocket hijacking: a hostile page cannot make a visitor's browser use a private relay.
    """
    if origin is None:
        return True
    if allowed is None:
        return True
    normal = _normal_origin(origin)
    if normal is None:
        return False  # "null" (sandboxed frames, file: pages) and garbage are never same-origin
    if normal in allowed:
        return True
    if not host:
        return False
    netloc = normal.split("://", 1)[1]
    scheme = normal.split("://", 1)[0]
    return netloc == _normal_host(host, scheme)


def _normal_origin(origin: str) -> str | None:
    try:
        parts = urlsplit(origin.strip().lower())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None and str(port) != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def _normal_host(host: str, scheme: str) -> str:
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(f":{default}") and not host.endswith("]"):
        host = host[: -len(default) - 1]
    return host
