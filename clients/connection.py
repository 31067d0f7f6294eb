"""One party's WebSocket to the relay, speaking protocol v2 messages instead of frames."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
from urllib.parse import quote, urlencode, urlsplit

from relay import protocol as p
from relay.protocol import ErrorCode
from relay.record import Record, set_field
from clients.errors import RelayUnavailable, TransferError, TransferRefused
from clients.wsclient import (
    BadWebSocketUrl, ConnectionClosed, HandshakeFailed, ProxyFailed, ProxyUnusable, RecvInProgress, WebSocketClient,
)

DEFAULT_RELAY = "ws://127.0.0.1:8000"
OPEN_TIMEOUT = 15.0
# Room for the largest chunk plus any control message the relay may send.
MAX_INCOMING = p.DEFAULT_MAX_MESSAGE + 64 * 1024
# After a close, how many still-queued frames to look through for the message saying why.
UNREAD_AFTER_CLOSE = 64
MAX_RESUME_NOISE = 64  # other parties' `resumed`/`reconnecting` read before our own `resumed`
DROPPED = 1006  # RFC 6455: the connection ended without a close frame (a drop: worth resuming)
NO_STATUS = 1005  # a close frame without a code
LINGER = 5.0  # after an ending message, how long to wait for the relay to end the room before closing


def default_relay_url() -> str:
    return os.environ.get("RELAY_URL") or DEFAULT_RELAY


def token_headers() -> dict[str, str]:
    """A private relay's token, from ``RELAY_TOKEN`` (not argv, which others can read), as a Bearer header."""
    token = os.environ.get("RELAY_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class BadRelayUrl(TransferError):
    """A relay URL that is not well formed (a usage error, unlike ``RelayUnavailable``): nothing was contacted."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, f"not a relay URL ({why}): {url[:200]}")
        self.url = url


class RelayUrl(Record):
    """A checked relay address: ``ws``/``wss``, a host, an optional port and an optional path prefix."""

    __slots__ = ("secure", "host", "port", "path")
    secure: bool
    host: str
    port: int | None
    path: str

    def __init__(self, secure: bool, host: str, port: int | None, path: str) -> None:
        set_field(self, "secure", secure)
        set_field(self, "host", host)
        set_field(self, "port", port)
        set_field(self, "path", path)

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def websocket_base(self) -> str:
        """Where the WebSocket routes live, e.g. ``wss://relay.example/prefix``."""
        return f"{'wss' if self.secure else 'ws'}://{self._netloc}{self.path}"

    @property
    def page(self) -> str:
        """The relay's web page on its http(s) origin (the same host, port and prefix as the WebSocket)."""
        return f"{'https' if self.secure else 'http'}://{self._netloc}{self.path}/"

    def receive_link(self, code: str) -> str:
        """The link a sender shares: the page opens its receive view with ``code`` filled in."""
        return f"{self.page}#receive={quote(code, safe='-')}"


_SCHEMES = {"http": False, "ws": False, "https": True, "wss": True}
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def parse_relay_url(url: str) -> RelayUrl:
    """Check a relay URL a person typed (``http(s)://``, ``ws(s)://`` or a bare ``host[:port]``).

    Raises ``BadRelayUrl`` naming what is wrong (scheme, host, port, user info, query...) before any socket is
    opened, so that a typo is a usage error and "cannot reach the relay" means a well-formed address.
    """
    text = url.strip()
    if not text or len(text) > 2048 or any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise BadRelayUrl(url, "empty, too long, or holds spaces or control characters")
    if "://" not in text:
        text = "ws://" + text
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # e.g. an unbalanced "[" in the host
        raise BadRelayUrl(url, str(exc)) from exc
    secure = _SCHEMES.get(parts.scheme.lower())
    if secure is None:
        raise BadRelayUrl(url, "the scheme must be ws, wss, http or https")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise BadRelayUrl(url, "no query or fragment allowed")
    if "@" in parts.netloc:
        raise BadRelayUrl(url, "no user name or password in the URL; a token goes in RELAY_TOKEN")
    host, port_text = _split_host_port(url, parts.netloc)
    port = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise BadRelayUrl(url, "the port must be a number from 1 to 65535")
        port = int(port_text)
    return RelayUrl(secure, host, port, parts.path.rstrip("/"))


def _split_host_port(url: str, netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1:]
        try:
            if end < 0 or ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise BadRelayUrl(url, "a bracketed host must be an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise BadRelayUrl(url, "unexpected text after the IPv6 address")
        return host, rest[1:] if rest else None
    host, colon, port_text = netloc.partition(":")
    if not host:
        raise BadRelayUrl(url, "the host is missing")
    if not _HOST_NAME.fullmatch(host) and not _is_idna(host):
        raise BadRelayUrl(url, "the host name holds characters a host name cannot have")
    return host, port_text if colon else None


def _is_idna(host: str) -> bool:
    try:
        return _HOST_NAME.fullmatch(host.encode("idna").decode("ascii")) is not None
    except UnicodeError:
        return False


def websocket_base(url: str) -> str:
    """Map a relay URL a person typed to its WebSocket base; raises ``BadRelayUrl``."""
    return parse_relay_url(url).websocket_base


def proxy_for(relay: RelayUrl, environ: dict[str, str] | None = None) -> str | None:
    """The proxy to reach ``relay`` through, from the usual environment variables, or ``None``.

    As curl and websockets do: ``NO_PROXY`` first; then for wss ``HTTPS_PROXY``, for ws ``HTTPS_PROXY`` or
    ``HTTP_PROXY``; ``ALL_PROXY`` in both cases (lower-case names win; ``HTTP_PROXY`` is ignored under CGI, where
    a request header could set it). The WebSocket is tunnelled with ``CONNECT`` (or SOCKS, with python-socks).
    """
    env = os.environ if environ is None else environ
    proxies: dict[str, str] = {}
    for upper_first in (True, False):  # the lower-case spelling, read second, wins
        for name, value in env.items():
            if value and name.lower().endswith("_proxy") and name.isupper() == upper_first:
                proxies[name[:-6].lower()] = value
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    port = relay.port or (443 if relay.secure else 80)
    if proxies.get("no"):
        import urllib.request  # only with NO_PROXY set: its imports (http.client, email) cost every start ~5 ms

        if urllib.request.proxy_bypass_environment(f"{relay.host}:{port}", proxies):  # type: ignore[attr-defined]
            return None
    for scheme in ("https", "all") if relay.secure else ("https", "http", "all"):
        if proxies.get(scheme):
            return proxies[scheme]
    return None


def room_url(relay_url: str, nameplate: str | None, role: str, receivers: int | None = None,
             resume: bool = False) -> str:
    """A receiver's URL names the nameplate; a sender's names none (the relay allocates one). Never the words.

    ``resume``: a party taking back its parked seat (both roles name the nameplate then)."""
    query = {"role": role, "v": str(p.PROTOCOL_V2)}
    if receivers is not None:
        query["receivers"] = str(receivers)
    if resume:
        query["resume"] = "1"
    room = f"/{quote(nameplate, safe='')}" if nameplate else ""
    return f"{websocket_base(relay_url)}/ws{room}?{urlencode(query)}"


def _without_password(proxy: str) -> str:
    parts = urlsplit(proxy)
    return proxy.replace(f"{parts.username}:{parts.password}@", "") if parts.password else proxy


MAX_QUOTED = 300


def quote_peer_text(text: str) -> str:
    """Another party's words as a quoted, escaped literal: ``"..."``, never mistaken for this program's own.

    Backslashes and quotes are escaped as well as control, format and surrogate characters, so the quoted
    text cannot end the quote, move the cursor or fake a line of output; it is cut at ``MAX_QUOTED``.
    """
    cut = text[:MAX_QUOTED]
    out = []
    for char in cut:
        if char in '\\"':
            out.append("\\" + char)
        elif "\ud800" <= char <= "\udfff":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(p.escape_text(char))
    return '"' + "".join(out) + '"' + ("..." if len(text) > MAX_QUOTED else "")


class PeerRefused(TransferRefused):
    """Another party ended the transfer. ``what`` is our description; ``said`` is the party's own (hostile) text.

    ``str()`` gives both on one line, the party's words quoted and attributed; the CLI prints them apart.
    """

    def __init__(self, code: ErrorCode | str, what: str, who: str, said: str = "") -> None:
        super().__init__(code, what + (f"; {who} said: {quote_peer_text(said)}" if said else ""))
        self.what = p.escape_text(what)
        self.who = who
        self.said = said


def peer_name(peer: int | None) -> str:
    """How a party is named in messages: the sender is peer 0, receivers are 1..N."""
    if peer == 0:
        return "the sender"
    return "a receiver" if peer is None else f"receiver {peer}"


def error_from_message(message: p.Message) -> TransferError | None:
    """The exception a message that ends the transfer stands for, or ``None`` for any other message.

    An ``error`` without ``peer`` is the relay's own; one with ``peer`` and every ``cancel`` reason are text another
    party wrote, kept apart (``PeerRefused.said``) so that it is shown quoted and attributed.
    """
    match message:
        case p.Error(peer=None):
            return TransferRefused(message.code, message.message or message.code)
        case p.Error():
            who = peer_name(message.peer)
            return PeerRefused(message.code, f"{who} stopped the transfer ({message.code})", who, message.message)
        case p.SealedCancel():
            who = peer_name(message.peer)
            return PeerRefused(ErrorCode.CANCELLED, f"{who} cancelled the transfer", who)
        case p.PeerLeft():
            who = "the sender" if message.role == "send" else "a receiver"
            return TransferRefused(ErrorCode.PEER_LEFT, f"{who} disconnected before the transfer finished")
    return None


class ConnectionLost(TransferRefused):
    """The socket to the relay broke without a close from the relay (a network drop, a relay that died): the
    transfer may resume (docs/protocol.md section 10). Without resume it ends like ``peer_left``."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PEER_LEFT, message)


class RelayConnection:
    """Control messages and payload frames over one WebSocket; ending messages surface as exceptions.

    The socket is ``clients.wsclient.WebSocketClient`` (docs/design/speed.md section 3): a payload comes back
    from :meth:`receive` as a ``memoryview`` of its receive buffer, valid only until the next ``receive``.
    """

    resumed: p.Resumed | None = None  # on a resumed connection: the relay's ``resumed`` for this party

    def __init__(self, websocket: WebSocketClient, hello: p.Hello) -> None:
        self.websocket = websocket
        self.hello = hello

    @classmethod
    async def open(cls, relay_url: str, nameplate: str | None, role: str, receivers: int | None = None
                   ) -> RelayConnection:
        """Connect and wait for ``hello``; a refusal (room not found, full...) raises ``TransferRefused``."""
        websocket = await cls._connect(relay_url, nameplate, role, receivers)
        return await cls._greeted(websocket, role)

    @classmethod
    async def _connect(cls, relay_url: str, nameplate: str | None, role: str, receivers: int | None,
                       resume: bool = False) -> WebSocketClient:
        relay = parse_relay_url(relay_url)  # BadRelayUrl before any socket
        url = room_url(relay_url, nameplate, role, receivers, resume)
        proxy = proxy_for(relay)
        via = f" through the proxy {_without_password(proxy)}" if proxy else ""
        try:
            return await WebSocketClient.connect(url, headers=token_headers(), proxy=proxy, max_size=MAX_INCOMING,
                                                 open_timeout=OPEN_TIMEOUT)
        except ImportError as exc:  # a socks:// proxy without the optional python-socks package
            raise BadRelayUrl(proxy or "", f"this proxy needs a package that is not installed: {exc}") from exc
        except ProxyUnusable as exc:
            raise BadRelayUrl(proxy or "", f"the proxy setting is not usable: {exc}") from exc
        except (OSError, TimeoutError, HandshakeFailed, ProxyFailed, BadWebSocketUrl) as exc:
            raise RelayUnavailable(ErrorCode.BAD_REQUEST,
                                   f"cannot reach the relay at {relay.websocket_base}{via}: {exc}") from exc

    @classmethod
    async def resume(cls, relay_url: str, nameplate: str, hello: p.Hello, message: p.Resume) -> RelayConnection:
        """Take back a parked seat: connect with ``resume=1``, send ``message`` and wait for the relay's
        ``resumed`` for this party. ``hello`` is the first connection's (the relay sends no new one)."""
        websocket = await cls._connect(relay_url, nameplate, hello.role, None, resume=True)
        connection = cls(websocket, hello)
        await connection.send(message)
        for _ in range(MAX_RESUME_NOISE):
            first = await connection.receive()
            if isinstance(first, p.Resumed) and first.peer == hello.peer:
                connection.resumed = first
                return connection
            if not isinstance(first, p.Resumed | p.Reconnecting):
                break
        await connection.abort(ErrorCode.UNEXPECTED_MESSAGE, "the relay did not confirm the resume")
        raise TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, "the relay did not confirm the resume")

    @classmethod
    async def _greeted(cls, websocket: WebSocketClient, role: str) -> RelayConnection:
        connection = cls(websocket, p.Hello(p.PROTOCOL_V2, role, 0, 1, p.DEFAULT_MAX_MESSAGE))
        first = await connection.receive()
        if not isinstance(first, p.Hello):
            await connection.abort(ErrorCode.UNEXPECTED_MESSAGE, "the relay did not say hello")
            raise TransferRefused(ErrorCode.UNEXPECTED_MESSAGE, "the relay did not say hello")
        connection.hello = first
        return connection

    async def send(self, message: p.Message) -> None:
        try:
            await self.websocket.send_text(message.to_json())
        except ConnectionClosed as exc:
            raise await self._reason_for_close(exc) from exc

    async def send_payload(self, data: bytes | bytearray | memoryview) -> None:
        """Send one binary frame; ``data`` may be reused once this returns (it is masked into a new buffer)."""
        try:
            await self.websocket.send_binary(data)
        except ConnectionClosed as exc:
            raise await self._reason_for_close(exc) from exc

    async def _reason_for_close(self, exc: ConnectionClosed) -> TransferError:
        """Why the relay closed: the ending message it sent just before, if still unread, else the close code.

        A send fails as soon as the relay's close arrives, while its ``peer_left``/``error``/``cancel`` may still
        wait in the receive queue. When another task is reading (the sender's watcher), that task will see it.

        A drop (1006, no close frame) reads nothing: it may be resumed (docs/protocol.md section 10), and the frames
        that arrived before it are still this party's to read in order (a receiver's chunks it has not opened
        yet). Reading them here to look for a reason threw them away, and the receiver then took a later chunk
        for the next one ("did not authenticate"); the next ``receive`` returns them, then raises
        ``ConnectionLost``.
        """
        if exc.code == DROPPED:
            return self._closed_error(exc)
        for _ in range(UNREAD_AFTER_CLOSE):
            try:
                frame = await self.websocket.recv()
            except (ConnectionClosed, RecvInProgress):
                break
            if isinstance(frame, str):
                try:
                    error = error_from_message(p.parse_message(frame, p.PROTOCOL_V2))
                except p.ProtocolError:
                    continue
                if error is not None:
                    return error
        return self._closed_error(exc)

    async def receive(self) -> p.Message | memoryview:
        """The next message or payload; ``error``/``cancel``/``peer_left`` and closes raise ``TransferError``.

        A payload is a view of the socket's receive buffer, valid until the next call (copy it to keep it)."""
        try:
            frame = await self.websocket.recv()
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc
        if isinstance(frame, memoryview):
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
        await self._last_word(p.Error(code.value, message[: p.MAX_TEXT]).to_json())

    async def cancel(self) -> None:
        """Tell the room this party gives up (Ctrl-C): the others read "cancelled", not "disconnected"."""
        await self._last_word(p.SealedCancel().to_json())

    async def _last_word(self, text: str) -> None:
        """Send an ending message, let the relay end the room and close (reading what still comes meanwhile),
        then close. Closing at once could reach the relay first: a receiver's close while the relay is still
        forwarding to it looks like a dropped connection, whose seat waits for a resume instead of ending the
        room. At most ``LINGER`` seconds, then closed anyway."""
        try:
            await self.websocket.send_text(text)
        except ConnectionClosed:
            pass
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER):
                    while True:
                        try:
                            await self.websocket.recv()
                        except (ConnectionClosed, RecvInProgress):
                            break
        await self.close()

    async def close(self) -> None:
        await self.websocket.close()

    def drop(self) -> None:
        """Drop the socket without a close handshake (a relay that stopped reading never takes one)."""
        self.websocket.abort()

    @staticmethod
    def _closed_error(exc: ConnectionClosed) -> TransferError:
        if exc.code == DROPPED:
            return ConnectionLost("the connection to the relay was lost")
        close = exc.code if exc.code != NO_STATUS else None
        code = ErrorCode.from_close_code(close) or ErrorCode.PEER_LEFT
        reason = exc.reason
        detail = f"{close or 'no close code'}{': ' + reason if reason else ''}"
        return TransferRefused(code, f"the relay closed the connection ({detail})")
