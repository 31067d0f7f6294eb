"""The FastAPI application: routes parse the request and delegate to ``relay.service``.

Besides the room WebSocket at ``/ws/{code}`` it serves ``/healthz`` (liveness), ``/readyz`` (503 while the
relay drains for shutdown) and ``/metrics`` (Prometheus). ``serve`` runs it under ``RelayServer``, which on
SIGTERM drains the rooms before uvicorn closes the sockets.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from relay import __version__, logs, web
from relay.access import Client, bearer_token, client_key
from relay.config import Settings
from relay.metrics import Stats, make_registry
from relay.rooms import FAREWELL_TIMEOUT, JoinRequest, PeerSocket
from relay.service import Relay
from relay.sockets import peer_socket
from relay.tuning import tune_allocator
from relay.transport import LINGER, RelayWebSocketProtocol, http_protocol_class


# Keep-alive pings find dead peers while no data flows. A pong waits behind whatever is already queued to the
# peer (up to a chunk), so the timeout is generous: 60 s lets a link as slow as ~20 KB/s keep up with 1 MiB chunks.
# A peer that misses it is closed with 1011 and dropped (relay.transport).
PING_INTERVAL = 20.0
PING_TIMEOUT = 60.0


def client_of(websocket: WebSocket) -> Client:
    """What the service needs to know about who is connecting: address key, Origin, Host, token."""
    address = websocket.client.host if websocket.client else None  # the proxy's client when trusted
    headers = websocket.headers
    token = websocket.query_params.get("token")
    if token is None:
        token = bearer_token(headers.get("authorization"))
    return Client(client_key(address), headers.get("origin"), headers.get("host"), token)


def room_code(scope: Scope) -> str | None:
    """The nameplate of a room WebSocket's path: ``""`` for ``/ws`` (a sender), the segment after ``/ws/``, or
    None for any other path. Matches what the Starlette routes ``/ws`` and ``/ws/{code}`` would (the path
    below the app's ``root_path``; a code is one non-empty segment)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    if path == "/ws":
        return ""
    if path.startswith("/ws/"):
        code = path[4:]
        if code and "/" not in code:
            return code
    return None


async def accept_room_socket(scope: Scope, receive: Receive, send: Send,
                             stats: Stats) -> tuple[PeerSocket, JoinRequest, Client]:
    """Accept a room WebSocket and read what the service needs from its request: the ``PeerSocket``, the join
    request (path and query) and the client (address, Origin, Host, token).

    The request's headers are dropped from the scope once read: uvicorn keeps the scope for as long as the
    connection, and a waiting room should not pay about 1 KiB for headers nobody reads again.
    """
    websocket = WebSocket(scope, receive, send)
    await websocket.accept()
    query = websocket.query_params
    code = room_code(scope) or ""
    resume = query.get("resume") if code else None  # a seat is taken back in a named room only
    request = JoinRequest(code, query.get("role"), query.get("receivers"), query.get("v"), resume)
    client = client_of(websocket)
    scope["headers"] = []
    return peer_socket(websocket, stats), request, client


class RelayApp(FastAPI):
    """FastAPI with the room WebSockets (``/ws`` and ``/ws/{code}``) served before its middleware stack.

    A room waiting for its receivers holds its handler's coroutine chain for as long as it waits: through
    FastAPI's stack (telemetry, error and exception middleware, exit stacks, the router, the route's exception
    wrapper) that was about 6 KiB per socket, a third of what a waiting room cost. Those layers do nothing for
    a room socket (the service answers every error itself, on the wire), so ``__call__`` sends these two
    paths straight to ``room_socket``; every other request, and any other WebSocket path (closed as not
    found), goes through FastAPI as before.
    """

    room_socket: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self.room_socket is not None and room_code(scope) is not None:
            await self.room_socket(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the relay's ASGI app; the ``Relay`` and its sweeper live as long as the app's lifespan."""
    settings = settings or Settings.from_env()
    relay = Relay(settings)
    registry = make_registry(relay)
    logs.install_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with relay.running():
            yield

    app = RelayApp(title="relay", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                   openapi_url=None)
    app.state.relay = relay
    app.state.settings = settings

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        """Liveness: the process answers."""
        return {"status": "ok", "rooms": len(relay.rooms)}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 while the relay admits new rooms, 503 once it is draining for shutdown."""
        if relay.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def room_socket(scope: Scope, receive: Receive, send: Send) -> None:
        """``/ws/{nameplate}`` (a receiver, or a party resuming) and ``/ws`` (a sender: the relay allocates a
        nameplate and says it in ``hello``)."""
        await relay.serve(*await accept_room_socket(scope, receive, send, relay.stats))

    app.room_socket = room_socket
    app.include_router(web.router())
    return app


def uvicorn_config(settings: Settings, app: FastAPI | None = None) -> uvicorn.Config:
    """The uvicorn settings the relay must run with.

    The sans-I/O WebSocket backend (subclassed to drop sockets that will not close), no compression, the
    message size limit, an HTTP parser with a handshake deadline, client addresses from ``X-Forwarded-For``
    only from the proxies ``forwarded_allow_ips`` names, and a backstop on uvicorn's own shutdown wait.
    """
    return uvicorn.Config(
        app or create_app(settings),
        host=settings.host,
        port=settings.port,
        http=http_protocol_class(settings.handshake_timeout),
        ws=RelayWebSocketProtocol,
        ws_per_message_deflate=False,
        ws_max_size=settings.max_message,
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        log_level=settings.log_level,
        lifespan="on",
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(FAREWELL_TIMEOUT + LINGER + 1.0),
    )


class RelayServer(uvicorn.Server):
    """uvicorn's server with a drain first: on SIGTERM (or SIGINT) the relay stops admitting, gives transfers
    under way ``shutdown_grace`` seconds, tells the rest ``going_away`` (1001), and only then lets uvicorn
    close its listening sockets and connections. A second Ctrl-C cuts the grace short."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.relay.drain(self.relay.settings.shutdown_grace, give_up=lambda: self.force_exit)
        await super().shutdown(sockets)


def serve(settings: Settings) -> None:
    """Run the relay in the foreground until SIGTERM or Ctrl-C, then drain and exit.

    Raises ``relay.web.AssetsMissing`` before anything is configured or listens if the page is not built.
    """
    app = create_app(settings)
    logs.configure(settings.log_level)
    tune_allocator()
    RelayServer(uvicorn_config(settings, app), app.state.relay).run()
