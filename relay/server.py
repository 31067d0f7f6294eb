"""The FastAPI application: routes parse the request and delegate to ``relay.service``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from relay import __version__, web
from relay.config import Settings
from relay.rooms import JoinRequest, PeerGone
from relay.service import Relay


class AsgiPeerSocket:
    """``PeerSocket`` over a Starlette WebSocket: every disconnect surfaces as ``PeerGone``."""

    __slots__ = ("_ws",)

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive(self) -> str | bytes:
        try:
            message = await self._ws.receive()
        except WebSocketDisconnected as exc:
            raise PeerGone() from exc
        if message["type"] == "websocket.disconnect":
            raise PeerGone()
        data = message.get("bytes")
        return data if data is not None else message["text"]

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _send(self, message: dict[str, object]) -> None:
        try:
            await self._ws.send(message)
        except (WebSocketDisconnect, WebSocketDisconnected, OSError) as exc:
            raise PeerGone() from exc


def get_ws_relay(websocket: WebSocket) -> Relay:
    return websocket.app.state.relay


WsRelayDep = Annotated[Relay, Depends(get_ws_relay)]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the relay's ASGI app; the ``Relay`` and its sweeper live as long as the app's lifespan."""
    settings = settings or Settings.from_env()
    relay = Relay(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with relay.running():
            yield

    app = FastAPI(title="relay", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.relay = relay
    app.state.settings = settings

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "rooms": len(relay.rooms)}

    @app.websocket("/ws/{code}")
    async def room_socket(websocket: WebSocket, code: str, relay: WsRelayDep) -> None:
        await websocket.accept()
        query = websocket.query_params
        request = JoinRequest(code, query.get("role"), query.get("receivers"), query.get("v"))
        await relay.serve(AsgiPeerSocket(websocket), request)

    app.include_router(web.router)
    return app


def uvicorn_config(settings: Settings, app: FastAPI | None = None) -> uvicorn.Config:
    """The uvicorn settings the relay must run with: the fast sans-I/O WebSocket backend, no compression."""
    return uvicorn.Config(
        app or create_app(settings),
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=settings.max_message,
        log_level=settings.log_level,
        lifespan="on",
    )


def serve(settings: Settings) -> None:
    """Run the relay in the foreground until interrupted."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.Server(uvicorn_config(settings)).run()
