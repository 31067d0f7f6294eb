"""The app's entry: room WebSockets (``/ws``, ``/ws/{code}``) go straight to the room handler, everything else
through FastAPI (relay.server.RelayApp)."""

from __future__ import annotations

import httpx
import pytest
import websockets

from relay.server import room_code
from tests.peers import WAIT


@pytest.mark.parametrize(("path", "root", "code"), [
    ("/ws", "", ""),
    ("/ws/42", "", "42"),
    ("/ws/actor-table-ocean", "", "actor-table-ocean"),
    ("/relay/ws/42", "/relay", "42"),
    ("/relay/ws", "/relay", ""),
])
def test_the_room_paths_give_their_nameplate(path: str, root: str, code: str) -> None:
    assert room_code({"type": "websocket", "path": path, "root_path": root}) == code


@pytest.mark.parametrize("path", ["/", "/ws/", "/ws/42/", "/ws/42/more", "/wsx", "/ws42", "/healthz", "/WS/42"])
def test_any_other_path_is_not_a_room_socket(path: str) -> None:
    assert room_code({"type": "websocket", "path": path, "root_path": ""}) is None


@pytest.mark.parametrize("path", ["/ws/42/more", "/ws/", "/nowhere", "/healthz"])
async def test_a_websocket_to_a_path_that_is_no_room_is_refused_by_the_router(relay_server, path: str) -> None:
    """Only the two room paths skip FastAPI; its router still turns every other WebSocket away (403)."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(relay_server.ws_url + path, proxy=None, open_timeout=WAIT):
            pass
    assert refused.value.response.status_code == 403
    assert len(relay_server.relay.rooms.by_code) == 0


async def test_fastapi_still_serves_the_http_routes(relay_server) -> None:
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"{relay_server.http_url}/readyz")
        metrics = await client.get(f"{relay_server.http_url}/metrics")
        missing = await client.get(f"{relay_server.http_url}/ws/42")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert metrics.status_code == 200 and "relay_" in metrics.text
    assert missing.status_code == 404  # a plain GET of a room path is no WebSocket: FastAPI's router answers
