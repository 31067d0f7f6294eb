"""One party's WebSocket to the relay, speaking protocol v2 messages instead of frames."""

from __future__ import annotations

import os
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.errors import RelayUnavailable, TransferError, TransferRefused

DEFAULT_RELAY = "ws://127.0.0.1:8000"
OPEN_TIMEOUT = 15.0
# Room for the largest chunk plus any control message the relay may send.
MAX_INCOMING = p.DEFAULT_MAX_MESSAGE + 64 * 1024
# After a close, how many still-queued frames to look through for the message saying why.
UNREAD_AFTER_CLOSE = 64


def default_relay_url() -> str:
    return os.environ.get("RELAY_URL") or DEFAULT_RELAY


def token_headers() -> dict[str, str]:
    """A private relay's token, from ``RELAY_TOKEN`` (not argv, which others can read), as a Bearer header."""
    token = os.environ.get("RELAY_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def websocket_base(url: str) -> str:
    """Map a relay URL a person typed (``http(s)://``, ``ws(s)://`` or a bare host:port) to a WebSocket base."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise RelayUnavailable(ErrorCode.BAD_REQUEST, f"not a relay URL: {url}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def room_url(relay_url: str, nameplate: str | None, role: str, receivers: int | None = None) -> str:
    """A receiver's URL names the nameplate; a sender's names none (the relay allocates one). Never the words."""
    query = {"role": role, "v": str(p.PROTOCOL_V2)}
    if receivers is not None:
        query["receivers"] = str(receivers)
    room = f"/{quote(nameplate, safe='')}" if nameplate else ""
    return f"{websocket_base(relay_url)}/ws{room}?{urlencode(query)}"


def error_from_message(message: p.Message) -> TransferError | None:
    """The exception a message that ends the transfer stands for, or ``None`` for any other message."""
    match message:
        case p.Error():
            return TransferRefused(message.code, message.message or message.code)
        case p.SealedCancel():
            who = "the sender" if message.peer == 0 else "a receiver"
            return TransferRefused(ErrorCode.CANCELLED, f"{who} cancelled the transfer")
        case p.PeerLeft():
            who = "the sender" if message.role == "send" else "a receiver"
            return TransferRefused(ErrorCode.PEER_LEFT, f"{who} disconnected before the transfer finished")
    return None


class RelayConnection:
    """Control messages and payload frames over one WebSocket; ending messages surface as exceptions."""

    def __init__(self, websocket: ClientConnection, hello: p.Hello) -> None:
        self.websocket = websocket
        self.hello = hello

    @classmethod
    async def open(cls, relay_url: str, nameplate: str | None, role: str, receivers: int | None = None
                   ) -> RelayConnection:
        """Connect and wait for ``hello``; a refusal (room not found, full...) raises ``TransferRefused``."""
        url = room_url(relay_url, nameplate, role, receivers)
        try:
            websocket = await websockets.connect(
                url, compression=None, max_size=MAX_INCOMING, open_timeout=OPEN_TIMEOUT,
                ping_interval=20, ping_timeout=60, write_limit=2**20, proxy=None,
                additional_headers=token_headers(),
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise RelayUnavailable(ErrorCode.BAD_REQUEST, f"cannot reach the relay at {websocket_base(relay_url)}: {exc}") from exc
        connection = cls(websocket, p.Hello(p.PROTOCOL_V2, role, 0, 1, p.DEFAULT_MAX_MESSAGE))
        first = await connection.receive()
        if not isinstance(first, p.Hello):
            await connection.abort(ErrorCode.UNEXPECTED_MESSAGE, "the relay did not say hello")
            raise TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, "the relay did not say hello")
        connection.hello = first
        return connection

    async def send(self, message: p.Message) -> None:
        await self._send(message.to_json())

    async def send_payload(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(data)

    async def _send(self, frame: str | bytes | bytearray | memoryview) -> None:
        try:
            await self.websocket.send(frame)
        except websockets.ConnectionClosed as exc:
            raise await self._reason_for_close(exc) from exc

    async def _reason_for_close(self, exc: websockets.ConnectionClosed) -> TransferError:
        """Why the relay closed: the ending message it sent just before, if still unread, else the close code.

        A send fails as soon as the relay's close arrives, while its ``peer_left``/``error``/``cancel`` may still
        wait in the receive queue. When another task is reading (the sender's watcher), that task will see it.
        """
        for _ in range(UNREAD_AFTER_CLOSE):
            try:
                frame = await self.websocket.recv()
            except (websockets.ConnectionClosed, websockets.ConcurrencyError):
                break
            if isinstance(frame, str):
                try:
                    error = error_from_message(p.parse_message(frame, p.PROTOCOL_V2))
                except p.ProtocolError:
                    continue
                if error is not None:
                    return error
        return self._closed_error(exc)

    async def receive(self) -> p.Message | bytes:
        """The next message or payload; ``error``/``cancel``/``peer_left`` and closes raise ``TransferError``."""
        try:
            frame = await self.websocket.recv()
        except websockets.ConnectionClosed as exc:
            raise self._closed_error(exc) from exc
        if isinstance(frame, bytes):
            return frame
        try:
            message = p.parse_message(frame, p.PROTOCOL_V2)
        except p.ProtocolError as exc:
            await self.abort(exc.code, f"the relay sent a bad message: {exc.message}")
            raise TransferRefused(exc.code, f"the relay sent a bad message: {exc.message}") from exc
        error = error_from_message(message)
        if error is not None:
            raise error
        return message

    async def abort(self, code: ErrorCode, message: str) -> None:
        """Tell the room why this party gives up (best effort), then close."""
        try:
            await self.websocket.send(p.Error(code.value, message[: p.MAX_TEXT]).to_json())
        except websockets.ConnectionClosed:
            pass
        await self.close()

    async def cancel(self) -> None:
        """Tell the room this party gives up (Ctrl-C): the others read "cancelled", not "disconnected"."""
        try:
            await self.websocket.send(p.SealedCancel().to_json())
        except websockets.ConnectionClosed:
            pass
        await self.close()

    async def close(self) -> None:
        await self.websocket.close()

    @staticmethod
    def _closed_error(exc: websockets.ConnectionClosed) -> TransferError:
        close = exc.rcvd.code if exc.rcvd else None
        code = ErrorCode.from_close_code(close) or ErrorCode.PEER_LEFT
        reason = exc.rcvd.reason if exc.rcvd and exc.rcvd.reason else ""
        return TransferRefused(code, f"the relay closed the connection ({close or 'no close code'}{': ' + reason if reason else ''})")
