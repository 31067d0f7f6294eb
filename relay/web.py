"""The web page: serves the browser client's built assets (``relay/static``, built from ``clients/web``) at ``/``.

Only the files the build produced are served, from a table made when the app is built (``router()``): no path
from the request ever reaches the file system, and nothing a peer sent is ever served (peer bytes only travel
over ``/ws/``). Every response carries a strict Content-Security-Policy. A GET here never touches a room: the
receive link ``/#receive=CODE`` keeps the code in the fragment, which browsers do not send, and the page joins
only when the person presses Connect.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

STATIC = Path(__file__).resolve().parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# 'wasm-unsafe-eval' lets hash-wasm compile its WebAssembly (it allows no JavaScript eval). ws:/wss: of the
# page's own host are listed because older browsers do not count WebSocket URLs as 'self'.
_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'{ws}; worker-src 'self'; frame-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


class AssetsMissing(RuntimeError):
    """The built page is not where the server serves it from."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets(folder: Path | None = None) -> dict[str, Asset]:
    """Read every built file of ``folder`` (default ``STATIC``) once; a missing build is an error when the app is
    built rather than a blank page."""
    folder = STATIC if folder is None else folder
    assets: dict[str, Asset] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            assets[path.name] = Asset(path.read_bytes(), content_type)
    if "index.html" not in assets:
        raise AssetsMissing(f"the web page is not built: no index.html in {folder} "
                            "(run: npm --prefix clients/web ci && npm --prefix clients/web run build)")
    return assets


def security_headers(host: str | None) -> dict[str, str]:
    """Headers for every page response; WebSocket sources are limited to the host the page came from."""
    ws = f" ws://{host} wss://{host}" if host and _HOST_RE.fullmatch(host) else ""
    return {
        "Content-Security-Policy": _CSP.format(ws=ws),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
        "Cache-Control": "no-cache",
    }


def _route(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
    async def serve_asset(request: Request) -> Response:
        return Response(asset.body, media_type=asset.content_type,
                        headers=security_headers(request.headers.get("host")))

    return serve_asset


def router(assets: dict[str, Asset] | None = None) -> APIRouter:
    """The page's routes: one per built file (the page at "/", the rest by exact name). No catch-all, so no
    request path is ever looked up on disk and the app's other routes stay reachable."""
    assets = load_assets() if assets is None else assets
    routes = APIRouter()
    routes.add_api_route("/", _route(assets["index.html"]), methods=["GET"], include_in_schema=False)
    for name, asset in assets.items():
        if name != "index.html":
            routes.add_api_route(f"/{name}", _route(asset), methods=["GET"], include_in_schema=False)
    return routes
