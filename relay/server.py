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
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.routing import WebSocketRoute

from relay import __version__, logs, web
from relay.access import Client, bearer_token, client_key
from relay.config import Settings
from relay.metrics import make_registry
from relay.rooms import FAREWELL_TIMEOUT, JoinRequest
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

    app = FastAPI(title="relay", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
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

    async def room_socket(websocket: WebSocket) -> None:
        """``/ws/{nameplate}`` (a receiver, or a party resuming) and ``/ws`` (a sender: the relay allocates a
        nameplate and says it in ``hello``)."""
        await websocket.accept()
        query = websocket.query_params
        code = websocket.path_params.get("code", "")
        resume = query.get("resume") if code else None  # a seat is taken back in a named room only
        request = JoinRequest(code, query.get("role"), query.get("receivers"), query.get("v"), resume)
        await relay.serve(peer_socket(websocket, relay.stats), request, client_of(websocket))

    # Plain Starlette routes, not FastAPI's ``@app.websocket``: no dependency-injection stack is kept per socket,
    # which is most of what a room waiting for its receivers costs above the transport (about 9 KiB each).
    app.router.routes.append(WebSocketRoute("/ws/{code}", room_socket))
    app.router.routes.append(WebSocketRoute("/ws", room_socket))

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
