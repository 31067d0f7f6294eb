"""The client library end to end: real relay, real sockets, real files on disk (protocol v2, always encrypted).

Fake relays (a test's own WebSocket server) hold real keys: they play the relay and the other party at once,
knowing the code, so they can seal whatever hostile content a test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import websockets

from relay import protocol as p
from relay.protocol import ErrorCode
from relay.config import Settings
from clients import crypto as c
import clients.transfer as transfer_module
from clients.connection import PeerRefused
from clients.errors import DeadlineExceeded, LocalFailure, RelayUnavailable, TransferError, TransferRefused
from clients.offer import Unreadable
from clients.transfer import Deadlines, ReceiveOptions, Reporter, SendOptions, receive, send
from tests.peers import WAIT, RawPeer, b64, key_as_receiver, key_as_sender, raw_sides, seal_json, send_sealed

SCRIPTS = Path(__file__).parent / "scripts"
TRANSFER_WAIT = 120.0


@pytest.fixture
def code() -> str:
    """The secret words a test's sender uses (the relay adds the nameplate in front)."""
    return "t-" + secrets.token_hex(6)


FAKE_NAMEPLATE = "7"


class ShowsCode(Reporter):
    """Records the code the sender shows, as the person at the other computer reads it off the screen."""

    def __init__(self) -> None:
        self.code: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def waiting(self, code: str, receivers: int) -> None:
        if not self.code.done():
            self.code.set_result(code)


async def start_send(paths: list[Path], options: SendOptions, reporter: ShowsCode | None = None
                     ) -> tuple[asyncio.Task[None], str]:
    """Start ``send`` and return its task and the code it shows (or raise what ended it before that)."""
    reporter = reporter or ShowsCode()
    sending = asyncio.create_task(send(paths, options, reporter))
    await asyncio.wait([sending, reporter.code], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if not reporter.code.done():
        await sending
    return sending, reporter.code.result()


async def yes(offer: p.Offer) -> bool:
    return True


async def no(offer: p.Offer) -> bool:
    return False


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def tree(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` mapped to its content hash (``None`` for folders)."""
    return {
        path.relative_to(root).as_posix(): (None if path.is_dir() else digest(path))
        for path in sorted(root.rglob("*"))
    }


async def transfer(relay, code: str, paths: list[Path], outputs: list[Path], chunk_size: int = p.DEFAULT_CHUNK_SIZE,
                   **receive_options: object) -> None:
    """Run one ``send`` and one ``receive`` per output folder against each other."""
    sending, code = await start_send(paths, SendOptions(code, relay.ws_url, len(outputs), chunk_size))
    receiving = [
        receive(ReceiveOptions(code, output, relay.ws_url, **receive_options), yes)  # type: ignore[arg-type]
        for output in outputs
    ]
    async with asyncio.timeout(TRANSFER_WAIT):
        # a receiver's own failure is the one a test asks about; the sender's follows from it
        outcomes = await asyncio.gather(*receiving, return_exceptions=True)
        outcomes.append((await asyncio.gather(sending, return_exceptions=True))[0])
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def make_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


async def test_one_file_arrives_intact(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "photo.jpg", 300_000)
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [source], [out])
    assert digest(out / "photo.jpg") == digest(source)
    assert sorted(p.name for p in out.iterdir()) == ["photo.jpg"]  # no part files left


async def test_many_files_arrive_intact(relay_server, code, tmp_path) -> None:
    sources = [make_file(tmp_path / "in" / f"file{i}.dat", 1000 * i + 1) for i in range(25)]
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, sources, [out])
    assert tree(out) == {s.name: digest(s) for s in sources}


async def test_a_folder_tree_with_an_empty_folder_and_an_empty_file_arrives(relay_server, code, tmp_path) -> None:
    root = tmp_path / "in" / "project"
    make_file(root / "README", 10)
    make_file(root / "src" / "deep" / "er" / "main.py", 5000)
    make_file(root / "empty.txt", 0)
    (root / "cache" / "nothing").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [root], [out])
    assert tree(out / "project") == tree(root)
    assert (out / "project" / "cache" / "nothing").is_dir()
    assert (out / "project" / "empty.txt").stat().st_size == 0


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 4096 + 1])
async def test_sizes_that_are_not_a_multiple_of_the_chunk_size_arrive(relay_server, code, tmp_path, size) -> None:
    source = make_file(tmp_path / "in" / "odd.bin", size)
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [source], [out], chunk_size=4096)
    assert digest(out / "odd.bin") == digest(source)


async def test_a_64_mib_file_arrives_intact(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "big.bin", 64 * 1024 * 1024)
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [source], [out])
    assert digest(out / "big.bin") == digest(source)


async def test_a_receiver_reserves_a_big_files_blocks_before_writing_it(relay_server, code, tmp_path,
                                                                         monkeypatch) -> None:
    """diskio.preallocate (docs/design/speed.md section 12): once per part of at least PREALLOCATE_FROM bytes,
    the whole file, before the first write; small files are left to the file system."""
    import clients.transfer as transfer_module

    calls: list[tuple[int, int, int]] = []
    real = transfer_module.preallocate

    def recording(fd: int, start: int, end: int) -> bool:
        calls.append((os.fstat(fd).st_size, start, end))
        return real(fd, start, end)

    monkeypatch.setattr(transfer_module, "preallocate", recording)
    big = make_file(tmp_path / "in" / "big.bin", 3 * 1024 * 1024 + 5)
    small = make_file(tmp_path / "in" / "small.bin", 1000)
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [big, small], [out])
    assert calls == [(0, 0, 3 * 1024 * 1024 + 5)]  # the empty part, reserved to its offered size
    assert digest(out / "big.bin") == digest(big) and digest(out / "small.bin") == digest(small)


async def test_one_sender_to_three_receivers(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "shared.bin", 3 * 1024 * 1024 + 17)
    outs = [tmp_path / f"out{i}" for i in range(3)]
    for out in outs:
        out.mkdir()
    await transfer(relay_server, code, [source], outs)
    assert all(digest(out / "shared.bin") == digest(source) for out in outs)


async def test_an_existing_file_is_not_overwritten_without_permission(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "notes.txt", 100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LocalFailure) as caught:
        await transfer(relay_server, code, [source], [out])
    assert caught.value.code is ErrorCode.FILE_EXISTS
    assert (out / "notes.txt").read_text() == "mine"


async def test_an_existing_file_is_replaced_with_overwrite(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "notes.txt", 100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    await transfer(relay_server, code, [source], [out], overwrite=True)
    assert digest(out / "notes.txt") == digest(source)


async def test_a_symlinked_folder_in_the_destination_is_not_followed(relay_server, code, tmp_path) -> None:
    root = tmp_path / "in" / "ssh"
    make_file(root / "authorized_keys", 50)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "ssh").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LocalFailure) as caught:
        await transfer(relay_server, code, [root], [out])
    assert caught.value.code is ErrorCode.UNSAFE_PATH
    assert list(outside.iterdir()) == []


async def test_a_declined_offer_fails_on_both_sides(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "x.bin", 10)
    out = tmp_path / "out"
    out.mkdir()
    sending, code = await start_send([source], SendOptions(code, relay_server.ws_url))
    with pytest.raises(TransferRefused) as receiver_error:
        await receive(ReceiveOptions(code, out, relay_server.ws_url), no)
    with pytest.raises(TransferRefused) as sender_error:
        await asyncio.wait_for(sending, WAIT)
    assert receiver_error.value.code is ErrorCode.DECLINED and sender_error.value.code is ErrorCode.DECLINED
    assert list(out.iterdir()) == []


async def test_receiving_from_an_unknown_code_fails_at_once(relay_server, code, tmp_path) -> None:
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(receive(ReceiveOptions(f"98765432-{code}", tmp_path, relay_server.ws_url), yes), WAIT)
    assert caught.value.code is ErrorCode.ROOM_NOT_FOUND


# --- hostile senders ---------------------------------------------------------------------------------------


async def hostile_sender(relay, receiving_options: dict[str, object] | None = None):
    """A raw sender on the real relay, keyed with a real receiving client; returns (room, receive task)."""
    room_task = asyncio.ensure_future(open_room_with_client(relay, receiving_options or {}))
    return await asyncio.wait_for(room_task, WAIT)


async def open_room_with_client(relay, receiving_options: dict[str, object]):
    from tests.peers import RawPeer, WORDS
    sender = await RawPeer.connect_v2(relay.ws_url, None, "send")
    hello = await sender.expect("hello")
    code = f"{hello['nameplate']}-{WORDS}"
    options = ReceiveOptions(code, **receiving_options)  # type: ignore[arg-type]
    receiving = asyncio.create_task(receive(options, yes))
    await sender.expect("peer_joined")
    send_, recv_ = raw_sides(sender)
    channel, content_key = await key_as_sender(send_, recv_, code, 1)
    await sender.expect("paired")
    return sender, channel, content_key, receiving


async def test_a_chunk_that_does_not_authenticate_is_caught_and_nothing_is_kept(relay_server, tmp_path) -> None:
    """A sender's chunk with a good xxh3 passes the relay; the receiver's AEAD refuses it: tampered, nothing kept."""
    sender, channel, content_key, receiving = await hostile_sender(
        relay_server, {"output": tmp_path, "relay_url": relay_server.ws_url})
    offer = p.Offer((p.FileEntry("report.pdf", 10_000),), (), 4096)
    await sender.send({"type": "offer", "to": 1, "total_size": 10_000, "files": 1,
                       "data": b64(channel.seal(offer.to_json().encode()))})
    await sender.expect("accept")
    await sender.expect("start")
    salt = os.urandom(32)
    plan = {"salt": b64(salt), "chunk_size": 4096, "segments": [[0, 0, 10_000]]}
    await sender.send({"type": "stream", "epoch": 0, "to": [1], "chunks": 3, "bytes": 10_000 + 48,
                       "data": [seal_json(channel, plan)]})
    await send_sealed(sender, os.urandom(4096 + 16))  # right length and xxh3, sealed with no key at all
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(receiving, WAIT)
    assert caught.value.code is ErrorCode.TAMPERED
    close, seen = await sender.closed()
    assert close == 4025 and any(m.get("code") == "tampered" for m in seen if isinstance(m, dict))
    assert list(tmp_path.iterdir()) == []


async def test_a_receiver_refuses_an_offer_larger_than_its_free_disk_space(relay_server, tmp_path) -> None:
    sender, channel, _, receiving = await hostile_sender(
        relay_server, {"output": tmp_path, "relay_url": relay_server.ws_url})
    offer = p.Offer((p.FileEntry("huge.iso", 1 << 39),), ())
    await sender.send({"type": "offer", "to": 1, "total_size": 1 << 39, "files": 1,
                       "data": b64(channel.seal(offer.to_json().encode()))})
    with pytest.raises(LocalFailure) as caught:
        await asyncio.wait_for(receiving, WAIT)
    assert caught.value.code is ErrorCode.DISK_FULL
    assert (await sender.closed())[0] == 4022


# --- fake relays that hold the keys: they play the relay and the sender at once -----------------------------


def receiver_hello(receivers: int = 1) -> str:
    return p.Hello(2, "receive", 1, receivers, p.DEFAULT_MAX_MESSAGE).to_json()


async def as_sender(ws: websockets.ServerConnection, code: str) -> tuple[c.ControlChannel, bytes]:
    """Greet a receiving client and key with it as its sender would."""
    await ws.send(receiver_hello())

    async def recv() -> dict[str, object]:
        return json.loads(await asyncio.wait_for(ws.recv(), WAIT))

    return await key_as_sender(ws.send, recv, code, None)


async def send_offer(ws: websockets.ServerConnection, channel: c.ControlChannel, offer: dict[str, object]) -> None:
    files = offer.get("files", [])
    assert isinstance(files, list)
    total = sum(int(f["size"]) for f in files)  # type: ignore[index]
    await ws.send(json.dumps({"type": "offer", "total_size": total, "files": len(files),
                              "data": b64(channel.seal(json.dumps({"type": "offer", **offer}).encode()))}))


def fake_code(words: str) -> str:
    return f"{FAKE_NAMEPLATE}-{words}"


async def test_a_corrupted_chunk_from_a_hostile_relay_is_caught_by_the_receiver(code, tmp_path) -> None:
    """The relay checks digests too, so only a hostile relay can deliver a bad chunk; the receiver must notice."""
    good, bad = b"a" * 116, b"b" * 116
    reported: list[dict[str, object]] = []

    async def hostile_relay(ws: websockets.ServerConnection) -> None:
        channel, _ = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": "f.bin", "size": 100}], "chunk_size": 100})
        await read_until(ws, "accept")
        plan = {"salt": b64(bytes(32)), "chunk_size": 100, "segments": [[0, 0, 100]]}
        await ws.send(json.dumps({"type": "stream", "epoch": 0, "chunks": 1, "bytes": 116,
                                  "data": seal_json(channel, plan)}))
        await ws.send(p.SealedChunk(0, 116, p.chunk_digest(good)).to_json())
        await ws.send(bad)
        reported.append(json.loads(await ws.recv()))

    async with websockets.serve(hostile_relay, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        options = ReceiveOptions(fake_code(code), tmp_path, f"ws://127.0.0.1:{port}")
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(receive(options, yes), WAIT)
    assert caught.value.code is ErrorCode.CHECKSUM_MISMATCH
    assert reported and reported[0]["code"] == "checksum_mismatch"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "path", ["../../etc/cron.d/x", "/root/.ssh/authorized_keys", "a\\..\\b", "a/./b", "x\x1b]0;pwn\x07"]
)
async def test_a_hostile_path_from_a_hostile_relay_is_refused_by_the_receiver(code, tmp_path, path) -> None:
    reported: list[dict[str, object]] = []

    async def hostile_relay(ws: websockets.ServerConnection) -> None:
        channel, _ = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": path, "size": 1}], "chunk_size": 1})
        reported.append(json.loads(await ws.recv()))
        if reported[-1]["type"] == "resume_id":  # a real relay keeps the verifier and forwards nothing
            reported[-1] = json.loads(await ws.recv())

    async with websockets.serve(hostile_relay, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        options = ReceiveOptions(fake_code(code), tmp_path, f"ws://127.0.0.1:{port}")
        with pytest.raises(TransferError) as caught:
            await asyncio.wait_for(receive(options, yes), WAIT)
    assert caught.value.code is ErrorCode.UNSAFE_PATH
    assert "\x1b" not in str(caught.value)
    assert reported[0]["code"] == "unsafe_path"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["a\ud800b.txt", "dir/\udfff"])
async def test_a_lone_surrogate_in_an_opened_offer_is_malformed_as_on_the_page(code, tmp_path, path) -> None:
    """The sealed offer is parsed by ``p.parse_offer``, the rules of a frame: a lone surrogate (valid JSON
    escape, not Unicode) is ``malformed_message``, as the page reports it, and nothing is written."""
    reported: list[dict[str, object]] = []

    async def hostile_relay(ws: websockets.ServerConnection) -> None:
        channel, _ = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": path, "size": 1}], "chunk_size": 1})
        reported.append(json.loads(await ws.recv()))
        if reported[-1]["type"] == "resume_id":  # a real relay keeps the verifier and forwards nothing
            reported[-1] = json.loads(await ws.recv())

    async with websockets.serve(hostile_relay, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        options = ReceiveOptions(fake_code(code), tmp_path, f"ws://127.0.0.1:{port}")
        with pytest.raises(TransferError) as caught:
            await asyncio.wait_for(receive(options, yes), WAIT)
    assert caught.value.code is ErrorCode.MALFORMED_MESSAGE
    assert reported[0]["code"] == "malformed_message"
    assert list(tmp_path.iterdir()) == []


async def test_the_reason_sent_just_before_a_close_is_reported_even_when_a_send_fails(code, tmp_path) -> None:
    """The receiver's accept goes out after the relay closed; the queued ``peer_left`` still names who left."""
    closed = asyncio.Event()

    async def relay_that_ends_at_once(ws: websockets.ServerConnection) -> None:
        channel, _ = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": "f.bin", "size": 10}], "chunk_size": 10})
        await ws.send(p.PeerLeft(0, "send").to_json())
        await ws.close(ErrorCode.PEER_LEFT.close_code)
        closed.set()

    async def accept_after_the_close(offer: p.Offer) -> bool:
        await asyncio.wait_for(closed.wait(), WAIT)
        await asyncio.sleep(0.1)  # the close frame has reached the client
        return True

    async with websockets.serve(relay_that_ends_at_once, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        options = ReceiveOptions(fake_code(code), tmp_path, f"ws://127.0.0.1:{port}")
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(receive(options, accept_after_the_close), WAIT)
    assert caught.value.code is ErrorCode.PEER_LEFT
    assert str(caught.value) == "the sender disconnected before the transfer finished"
    assert list(tmp_path.iterdir()) == []


# --- a party killed mid-transfer ---------------------------------------------------------------------------


def start_stalled_peer(role: str, relay, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / "stall_peer.py"), role, relay.ws_url, code],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},  # the script imports tests.peers
    )


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()  # returns when the peer printed its line, or exits


def wait_stalled(process: subprocess.Popen[str]) -> None:
    line = read_line(process)  # returns when the peer has moved part of the transfer, or exits
    assert line == "stalled", f"the stalled peer did not get going (exit {process.poll()})"


async def test_a_sender_killed_mid_transfer_is_reported_and_no_file_is_left(relay_server, code, tmp_path) -> None:
    peer = start_stalled_peer("send", relay_server, code)
    try:
        full_code = await asyncio.wait_for(asyncio.to_thread(read_line, peer), WAIT)  # the sender's code line
        receiving = asyncio.create_task(receive(ReceiveOptions(full_code, tmp_path, relay_server.ws_url), yes))
        await asyncio.to_thread(wait_stalled, peer)
        peer.send_signal(signal.SIGKILL)
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(receiving, WAIT)
    finally:
        peer.kill()
        peer.wait()
    assert caught.value.code is ErrorCode.PEER_LEFT and "sender" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


async def test_a_receiver_killed_mid_transfer_is_reported_to_the_sender(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "big.bin", 64 * 1024 * 1024)

    class Started(ShowsCode):
        def __init__(self) -> None:
            super().__init__()
            self.sent = 0

        def advanced(self, done: int) -> None:
            self.sent = done

    reporter = Started()
    sending, code = await start_send([source], SendOptions(code, relay_server.ws_url), reporter)
    peer = start_stalled_peer("receive", relay_server, code)
    try:
        await asyncio.to_thread(wait_stalled, peer)
        peer.send_signal(signal.SIGKILL)
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(sending, WAIT)
    finally:
        peer.kill()
        peer.wait()
    assert caught.value.code is ErrorCode.PEER_LEFT and "receiver" in str(caught.value)
    assert 0 < reporter.sent < source.stat().st_size


# --- fake relays: a relay that lies or goes silent -----------------------------------------------------------

SHORT = Deadlines(connect=5, receivers=0.3, answer=0.3, frame=0.3, verified=0.3, leave=0.3)
Handler = Callable[[websockets.ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_relay(handler: Handler) -> AsyncIterator[str]:
    """A tiny WebSocket server on loopback that speaks as a relay through ``handler``; yields its URL."""
    async with websockets.serve(handler, "127.0.0.1", 0, compression=None, close_timeout=0.5, max_size=2**23) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def read_until(ws: websockets.ServerConnection, kind: str) -> list[dict[str, object]]:
    """Read the client's frames up to and including the message of type ``kind``."""
    seen: list[dict[str, object]] = []
    for _ in range(10_000):
        frame = await asyncio.wait_for(ws.recv(), WAIT)
        if isinstance(frame, str):
            seen.append(json.loads(frame))
            if seen[-1]["type"] == kind:
                return seen
    raise AssertionError(f"no {kind!r} from the client")


async def silent(ws: websockets.ServerConnection, told: list[dict[str, object]]) -> None:
    """Say nothing more; record what the client sends before it leaves."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for frame in ws:
            if isinstance(frame, str):
                told.append(json.loads(frame))


def sender_hello(receivers: int = 1) -> str:
    return p.Hello(2, "send", 0, receivers, p.DEFAULT_MAX_MESSAGE, FAKE_NAMEPLATE).to_json()


async def as_receivers(ws: websockets.ServerConnection, words: str, receivers: int = 1) -> None:
    """Greet a sending client, have ``receivers`` receivers join and key with it, then say ``paired``."""
    await ws.send(sender_hello(receivers))

    async def recv() -> dict[str, object]:
        for _ in range(10):
            message = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            if message["type"] != "resume_id":  # a real relay keeps these verifiers and forwards nothing
                return message
        raise AssertionError("only resume_id messages")

    for k in range(1, receivers + 1):
        await ws.send(p.PeerJoined(k, k, receivers).to_json())
        await key_as_receiver(ws.send, recv, fake_code(words), k)
    await ws.send(p.Paired(receivers).to_json())


async def test_a_complete_without_verified_is_not_trusted(code, tmp_path) -> None:
    source = make_file(tmp_path / "x.bin", 1000)

    async def lying_relay(ws: websockets.ServerConnection) -> None:
        await as_receivers(ws, code)
        await read_until(ws, "offer")
        await ws.send(p.Start().to_json())
        await read_until(ws, "end")
        await ws.send(p.Complete().to_json())
        await silent(ws, [])

    async with fake_relay(lying_relay) as url:
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(send([source], SendOptions(code, url)), WAIT)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert "only 0 of 1 receiver(s) confirmed" in str(caught.value)


async def test_every_receiver_must_verify_counted_by_peer(code, tmp_path) -> None:
    source = make_file(tmp_path / "x.bin", 1000)

    async def lying_relay(ws: websockets.ServerConnection) -> None:
        await as_receivers(ws, code, 2)
        await read_until(ws, "offer")
        await ws.send(p.Start().to_json())
        await read_until(ws, "end")
        for peer in (1, 1, 0, 3, None):  # one receiver twice, the sender's own number, a stranger, no number
            await ws.send(p.Verified(peer).to_json())
        await ws.send(p.Complete().to_json())
        await silent(ws, [])

    async with fake_relay(lying_relay) as url:
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(send([source], SendOptions(code, url, receivers=2)), WAIT)
    assert "only 1 of 2 receiver(s) confirmed" in str(caught.value)


async def test_the_sender_gives_up_on_receivers_that_never_come(code, tmp_path) -> None:
    source = make_file(tmp_path / "x.bin", 10)
    told: list[dict[str, object]] = []

    async def empty_room(ws: websockets.ServerConnection) -> None:
        await ws.send(sender_hello(2))
        await ws.send(p.PeerJoined(1, 1, 2).to_json())
        await silent(ws, told)  # the sender's pake for receiver 1 is recorded too

    async with fake_relay(empty_room) as url:
        with pytest.raises(DeadlineExceeded) as caught:
            await asyncio.wait_for(send([source], SendOptions(code, url, receivers=2, deadlines=SHORT)), WAIT)
    assert caught.value.code is ErrorCode.PAIRING_TIMEOUT
    assert "waiting for the receivers to join (1 of 2 joined)" in str(caught.value)
    assert told and told[-1]["type"] == "error"


async def test_the_sender_gives_up_on_an_offer_nobody_answers(code, tmp_path) -> None:
    source = make_file(tmp_path / "x.bin", 10)

    async def unanswered(ws: websockets.ServerConnection) -> None:
        await as_receivers(ws, code)
        await silent(ws, [])

    async with fake_relay(unanswered) as url:
        with pytest.raises(DeadlineExceeded, match="every receiver to accept the offer"):
            await asyncio.wait_for(send([source], SendOptions(code, url, deadlines=SHORT)), WAIT)


async def test_the_sender_gives_up_when_no_receiver_confirms_its_files(code, tmp_path) -> None:
    source = make_file(tmp_path / "x.bin", 10)

    async def unconfirmed(ws: websockets.ServerConnection) -> None:
        await as_receivers(ws, code)
        await read_until(ws, "offer")
        await ws.send(p.Start().to_json())
        await silent(ws, [])

    async with fake_relay(unconfirmed) as url:
        with pytest.raises(DeadlineExceeded, match="every receiver to confirm its files"):
            await asyncio.wait_for(send([source], SendOptions(code, url, deadlines=SHORT)), WAIT)


async def test_the_receiver_gives_up_on_an_offer_that_never_comes(code, tmp_path) -> None:
    told: list[dict[str, object]] = []

    async def no_offer(ws: websockets.ServerConnection) -> None:
        await as_sender(ws, fake_code(code))
        await silent(ws, told)

    async with fake_relay(no_offer) as url:
        with pytest.raises(DeadlineExceeded, match="waiting for the offer"):
            await asyncio.wait_for(receive(ReceiveOptions(fake_code(code), tmp_path, url, deadlines=SHORT), yes), WAIT)
    assert told and told[-1]["type"] == "error"
    assert list(tmp_path.iterdir()) == []


async def test_the_receiver_gives_up_on_a_transfer_that_never_starts(code, tmp_path) -> None:
    async def never_starts(ws: websockets.ServerConnection) -> None:
        channel, _ = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": "f.bin", "size": 10}], "dirs": ["empty"], "chunk_size": 10})
        await silent(ws, [])

    async with fake_relay(never_starts) as url:
        with pytest.raises(DeadlineExceeded, match="the transfer to start"):
            await asyncio.wait_for(receive(ReceiveOptions(fake_code(code), tmp_path, url, deadlines=SHORT), yes), WAIT)
    assert list(tmp_path.iterdir()) == []  # the empty folder it made is gone too


async def test_the_receiver_gives_up_when_the_next_chunk_never_comes(code, tmp_path) -> None:
    data = b"a" * 10

    async def stalls(ws: websockets.ServerConnection) -> None:
        channel, content_key = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": "d/f.bin", "size": 20}], "chunk_size": 10})
        await read_until(ws, "accept")
        salt = os.urandom(32)
        plan = c.StreamPlan((c.Segment(0, 0, 20),), 10)
        plan_json = {"salt": b64(salt), "chunk_size": 10, "segments": [[0, 0, 20]]}
        await ws.send(json.dumps({"type": "stream", "epoch": 0, "chunks": 2, "bytes": 52,
                                  "data": seal_json(channel, plan_json)}))
        sealed = c.StreamSealer(c.data_key(content_key, salt), plan).seal_next(data)
        await ws.send(p.SealedChunk(0, len(sealed), p.chunk_digest(sealed)).to_json())
        await ws.send(sealed)
        await silent(ws, [])

    async with fake_relay(stalls) as url:
        with pytest.raises(DeadlineExceeded, match="the next chunk from the sender"):
            await asyncio.wait_for(receive(ReceiveOptions(fake_code(code), tmp_path, url, deadlines=SHORT), yes), WAIT)
    assert list(tmp_path.iterdir()) == []


async def test_a_relay_that_never_says_hello_is_unreachable(code, tmp_path) -> None:
    async with fake_relay(lambda ws: silent(ws, [])) as url:
        with pytest.raises(RelayUnavailable, match="did not answer"):
            options = ReceiveOptions(fake_code(code), tmp_path, url, deadlines=Deadlines(connect=0.3))
            await asyncio.wait_for(receive(options, yes), WAIT)


def test_default_deadlines_outlast_the_relays_own_timeouts() -> None:
    defaults, relay = Deadlines(), Settings()
    assert defaults.receivers > relay.pairing_timeout
    assert defaults.answer > 1800  # the relay's offer_timeout
    assert defaults.frame > relay.idle_timeout


# --- what the other side is told -----------------------------------------------------------------------------


async def test_the_sender_gets_a_neutral_reason_not_the_receivers_file_names(relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "secret-plans.txt", 100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "secret-plans.txt").write_text("mine")
    sending, code = await start_send([source], SendOptions(code, relay_server.ws_url))
    with pytest.raises(LocalFailure, match="use --overwrite"):
        await asyncio.wait_for(receive(ReceiveOptions(code, out, relay_server.ws_url), yes), WAIT)
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(sending, WAIT)
    assert isinstance(caught.value, PeerRefused) and caught.value.said == "the receiver's files would be overwritten"
    assert caught.value.code is ErrorCode.FILE_EXISTS


async def test_a_receiver_that_refuses_locally_sends_a_neutral_decline(relay_server, code, tmp_path) -> None:
    async def refuses(offer: p.Offer) -> bool:
        raise LocalFailure(ErrorCode.DECLINED, "not asking on a non-terminal stdin: pass --yes")

    source = make_file(tmp_path / "in" / "x.txt", 10)
    sending, code = await start_send([source], SendOptions(code, relay_server.ws_url))
    with pytest.raises(LocalFailure):
        await asyncio.wait_for(receive(ReceiveOptions(code, tmp_path, relay_server.ws_url), refuses), WAIT)
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(sending, WAIT)
    assert isinstance(caught.value, PeerRefused) and caught.value.said == "the receiver declined"
    assert "--yes" not in str(caught.value)


@pytest.mark.parametrize("when", ["asking", "streaming"])
async def test_an_interrupted_receiver_is_reported_to_the_sender_as_cancelled(relay_server, code, tmp_path, when):
    source = make_file(tmp_path / "in" / "big.bin", 64 * 1024 * 1024)
    out = tmp_path / "out"
    out.mkdir()
    asking, moving = asyncio.Event(), asyncio.Event()

    async def ask(offer: p.Offer) -> bool:
        asking.set()
        if when == "asking":
            await asyncio.Event().wait()  # a person who never answers, then presses Ctrl-C
        return True

    class Progress(Reporter):
        def advanced(self, done: int) -> None:
            moving.set()

    sending, code = await start_send([source], SendOptions(code, relay_server.ws_url))
    receiving = asyncio.create_task(receive(ReceiveOptions(code, out, relay_server.ws_url), ask, Progress()))
    await asyncio.wait_for((asking if when == "asking" else moving).wait(), WAIT)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(sending, WAIT)
    assert caught.value.code is ErrorCode.CANCELLED
    assert str(caught.value) == "receiver 1 cancelled the transfer"
    assert list(out.iterdir()) == []


async def test_the_sender_stays_within_the_ack_window_of_the_slowest_receiver(
        relay_server, code, tmp_path, monkeypatch) -> None:
    """Pipelining without running away: the sender never waits for a chunk's round trip, but once every receiver
    has acked it sends at most ``ACK_WINDOW`` beyond the slowest receiver's ack (docs/protocol.md section 8). A
    receiver that reads everything, acks each chunk up to chunk 40 and then stops gets exactly 40 + the window
    (more than the sender's and the relay's buffers hold before the first ack), then the sender gives up."""
    chunk, window, last_ack = 256 * 1024, 16, 40
    monkeypatch.setattr(transfer_module, "ACK_WINDOW", window * chunk)
    source = make_file(tmp_path / "big.bin", 80 * chunk)
    options = SendOptions(code, relay_server.ws_url, 1, chunk, deadlines=Deadlines(frame=2.0))
    sending, full_code = await start_send([source], options)
    receiver = await RawPeer.connect_v2(relay_server.ws_url, full_code.split("-")[0], "receive")
    await receiver.expect("hello")
    channel, _ = await key_as_receiver(*raw_sides(receiver), full_code)
    await receiver.expect("offer")
    await receiver.send({"type": "accept", "data": seal_json(channel, {})})
    await receiver.expect("stream")
    chunks = 0
    for _ in range(200):
        message = await receiver.recv()
        if isinstance(message, bytes):
            chunks += 1
            if chunks <= last_ack:
                await receiver.send({"type": "ack", "epoch": 0, "chunks": chunks})
        elif message["type"] != "chunk":
            break
    with pytest.raises(DeadlineExceeded, match="acknowledge"):
        await asyncio.wait_for(sending, WAIT)
    assert chunks == last_ack + window
    await receiver.close()


async def test_a_file_that_shrinks_before_it_is_sent_is_a_size_mismatch_and_nothing_is_kept(
        relay_server, code, tmp_path) -> None:
    source = make_file(tmp_path / "in" / "f.bin", 3 * 1024 * 1024)
    out = tmp_path / "out"
    out.mkdir()

    class Shrinks(ShowsCode):
        def started(self, total: int) -> None:
            os.truncate(source, 1024 * 1024 + 5)  # after the offer, before the data is read

    sending, full_code = await start_send([source], SendOptions(code, relay_server.ws_url), Shrinks())
    receiving = asyncio.create_task(receive(ReceiveOptions(full_code, out, relay_server.ws_url), yes))
    with pytest.raises(LocalFailure) as caught:
        await asyncio.wait_for(sending, WAIT)
    assert caught.value.code is ErrorCode.SIZE_MISMATCH and "shrank" in str(caught.value)
    with pytest.raises(TransferRefused):
        await asyncio.wait_for(receiving, WAIT)
    assert list(out.iterdir()) == []


# --- what is sent --------------------------------------------------------------------------------------------


async def test_an_unreadable_file_fails_before_any_room_is_opened(relay_server, code, tmp_path) -> None:
    folder = tmp_path / "udir"
    make_file(folder / "ok.txt", 10)
    (folder / "gone").symlink_to(tmp_path / "missing")
    rooms = len(relay_server.relay.rooms)
    with pytest.raises(Unreadable, match="udir/gone"):
        await send([folder], SendOptions(code, relay_server.ws_url))
    assert len(relay_server.relay.rooms) == rooms


async def test_skip_unreadable_sends_the_rest_and_reports_what_it_skipped(relay_server, code, tmp_path) -> None:
    folder = tmp_path / "udir"
    make_file(folder / "ok.txt", 10)
    (folder / "gone").symlink_to(tmp_path / "missing")
    out = tmp_path / "out"
    out.mkdir()
    skipped: list[tuple[str, str]] = []

    class Skips(ShowsCode):
        def skipped(self, left_out: list[tuple[str, str]]) -> None:
            skipped.extend(left_out)

    options = SendOptions(code, relay_server.ws_url, skip_unreadable=True)
    sending, code = await start_send([folder], options, Skips())
    await asyncio.wait_for(asyncio.gather(sending, receive(ReceiveOptions(code, out, relay_server.ws_url), yes)), WAIT)
    assert [path for path, _ in skipped] == [str(folder / "gone")]
    assert tree(out) == {"udir": None, "udir/ok.txt": digest(folder / "ok.txt")}


async def test_the_executable_bit_and_mtime_arrive(relay_server, code, tmp_path) -> None:
    script = make_file(tmp_path / "in" / "run.sh", 100)
    script.chmod(0o755)
    os.utime(script, (1_234_567_890, 1_234_567_890))
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [script], [out])
    arrived = (out / "run.sh").stat()
    assert arrived.st_mode & 0o111 and arrived.st_mtime == 1_234_567_890


async def test_names_windows_would_refuse_arrive_as_they_are_on_linux(relay_server, code, tmp_path) -> None:
    folder = tmp_path / "in" / "names"
    for name in ("aux.c", "a:b.txt", "what?.txt", "trailing."):
        make_file(folder / name, 5)
    out = tmp_path / "out"
    out.mkdir()
    await transfer(relay_server, code, [folder], [out])
    assert tree(out / "names") == tree(folder)


async def test_a_text_offer_of_two_files_is_refused_before_connecting(relay_server, code, tmp_path) -> None:
    sources = [make_file(tmp_path / "a.txt", 5), make_file(tmp_path / "b.txt", 5)]
    rooms = len(relay_server.relay.rooms)
    with pytest.raises(LocalFailure, match="exactly one file"):
        await send(sources, SendOptions(code, relay_server.ws_url, kind=p.OfferKind.TEXT))
    assert len(relay_server.relay.rooms) == rooms


async def test_a_file_and_a_folder_of_one_name_from_a_hostile_relay_write_nothing(code, tmp_path) -> None:
    """The probe's offer (files b and a, folder a): refused by the receiver's offer check, nothing written."""
    async def hostile(ws: websockets.ServerConnection) -> None:
        channel, _ = await as_sender(ws, fake_code(code))
        await send_offer(ws, channel, {"files": [{"path": "b", "size": 1}, {"path": "a", "size": 1}], "dirs": ["a"]})
        await silent(ws, [])

    async with fake_relay(hostile) as url:
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(receive(ReceiveOptions(fake_code(code), tmp_path, url), yes), WAIT)
    assert caught.value.code is ErrorCode.UNSAFE_PATH
    assert list(tmp_path.iterdir()) == []


async def test_an_offer_over_the_relays_message_size_fails_before_anyone_joins(relay_factory, code, tmp_path) -> None:
    relay = relay_factory(max_message=4096)
    folder = tmp_path / "many"
    for i in range(200):
        make_file(folder / f"a-rather-long-file-name-{i:04d}.txt", 1)
    with pytest.raises(LocalFailure, match="send fewer files at once"):
        await asyncio.wait_for(send([folder], SendOptions(code, relay.ws_url, chunk_size=4096)), WAIT)


async def test_the_sender_gives_up_when_the_relay_stops_taking_data(code, tmp_path) -> None:
    source = make_file(tmp_path / "big.bin", 64 * 1024 * 1024)
    stop = asyncio.Event()

    async def stops_reading(ws: websockets.ServerConnection) -> None:
        await as_receivers(ws, code)
        await read_until(ws, "offer")
        await ws.send(p.Start().to_json())
        await stop.wait()  # reads nothing more: the socket's buffers fill and the sender's writes block

    async with fake_relay(stops_reading) as url:
        try:
            with pytest.raises(DeadlineExceeded, match="the relay to take the next chunk"):
                await asyncio.wait_for(send([source], SendOptions(code, url, deadlines=SHORT)), WAIT)
        finally:
            stop.set()


# --- the sender's view of a resume: when the next epoch may start -------------------------------------------------


def _parking(receivers: int) -> transfer_module._Parking:
    """The sender's resume state with ``receivers`` receivers after receiver 2 dropped and came back."""
    room = transfer_module._Parking(channels=dict.fromkeys(range(1, receivers + 1)),  # type: ignore[arg-type]
                                    keys={}, reporter=transfer_module.Reporter())
    room.park(2)
    room.away.clear()  # receiver 2 is back
    return room


def test_the_next_epoch_waits_for_the_position_of_every_receiver_that_has_not_verified() -> None:
    room = _parking(3)
    room.positions[2] = (0, 10)
    room.check_ready()
    assert not room.ready.is_set()  # receiver 3 has not said where it is
    room.positions[3] = (1, 0)
    room.check_ready()
    assert not room.ready.is_set()  # nor receiver 1
    room.positions[1] = (2, 0)
    room.check_ready()
    assert room.ready.is_set()


def test_a_receiver_that_verified_is_not_waited_for_it_may_have_left() -> None:
    room = _parking(2)
    room.verified.add(1)
    room.check_ready()
    assert not room.ready.is_set()
    room.positions[2] = (0, 10)
    room.check_ready()
    assert room.ready.is_set()


def test_when_every_receiver_verified_no_epoch_starts_complete_comes_next() -> None:
    room = _parking(2)
    room.verified.update({1, 2})
    room.check_ready()
    assert not room.ready.is_set()


async def test_a_receiver_verifying_after_the_others_said_where_they_are_lets_the_next_epoch_start() -> None:
    """Receiver 2's position came first, then receiver 1's ``verified`` instead of one: the sender must not wait
    on (the check ran only when a position or ``resumed`` arrived)."""

    class Relay:
        def __init__(self) -> None:
            self.frames: list[p.Message] = [p.Verified(1)]

        async def receive(self) -> p.Message:
            if not self.frames:
                raise transfer_module.ConnectionLost("no more frames")
            return self.frames.pop(0)

    room = _parking(2)
    room.positions[2] = (0, 10)
    room.check_ready()
    assert not room.ready.is_set()
    with pytest.raises(transfer_module.ConnectionLost):
        await transfer_module._watch_receivers(Relay(), 2, room)  # type: ignore[arg-type]
    assert room.ready.is_set()
