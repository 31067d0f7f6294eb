"""The client library end to end: real relay, real sockets, real files on disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

from relay import protocol as p
from relay.protocol import ErrorCode
from clients.errors import LocalFailure, TransferError, TransferRefused
from clients.transfer import ReceiveOptions, Reporter, SendOptions, receive, send
from tests.peers import WAIT, RawPeer, send_file

SCRIPTS = Path(__file__).parent / "scripts"
TRANSFER_WAIT = 120.0


@pytest.fixture
def code() -> str:
    return "t-" + secrets.token_hex(6)


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


async def wait_for_room(relay, code: str) -> None:
    """Wait (at most 5 s) until a sender has opened the room ``code``, so a receiver never races it."""
    for _ in range(500):
        if code in relay.relay.rooms.by_code:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sender never opened its room")


async def transfer(relay, code: str, paths: list[Path], outputs: list[Path], chunk_size: int = p.DEFAULT_CHUNK_SIZE,
                   **receive_options: object) -> None:
    """Run one ``send`` and one ``receive`` per output folder against each other."""
    sending = asyncio.create_task(send(paths, SendOptions(code, relay.ws_url, len(outputs), chunk_size)))
    await wait_for_room(relay, code)
    receiving = [
        receive(ReceiveOptions(code, output, relay.ws_url, **receive_options), yes)  # type: ignore[arg-type]
        for output in outputs
    ]
    async with asyncio.timeout(TRANSFER_WAIT):
        await asyncio.gather(sending, *receiving)


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
    sending = asyncio.create_task(send([source], SendOptions(code, relay_server.ws_url)))
    await asyncio.sleep(0.2)
    with pytest.raises(TransferRefused) as receiver_error:
        await receive(ReceiveOptions(code, out, relay_server.ws_url), no)
    with pytest.raises(TransferRefused) as sender_error:
        await asyncio.wait_for(sending, WAIT)
    assert receiver_error.value.code is ErrorCode.DECLINED and sender_error.value.code is ErrorCode.DECLINED
    assert list(out.iterdir()) == []


async def test_receiving_from_an_unknown_code_fails_at_once(relay_server, code, tmp_path) -> None:
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(receive(ReceiveOptions(code, tmp_path, relay_server.ws_url), yes), WAIT)
    assert caught.value.code is ErrorCode.ROOM_NOT_FOUND


# --- hostile senders ---------------------------------------------------------------------------------------


async def test_a_wrong_whole_file_digest_is_caught_and_nothing_is_kept(relay_server, code, tmp_path) -> None:
    data = os.urandom(10_000)
    sender = await RawPeer.connect(relay_server.ws_url, code, "send")
    await sender.expect("hello")
    receiving = asyncio.create_task(receive(ReceiveOptions(code, tmp_path, relay_server.ws_url), yes))
    await sender.expect("peer_joined")
    await sender.expect("paired")
    await sender.send(p.Offer((p.FileEntry("report.pdf", len(data)),), (), 4096))
    await sender.expect("accept")
    await sender.expect("start")
    await send_file(sender, 0, data, 4096, file_digest="0" * 32)
    with pytest.raises(TransferRefused) as caught:
        await asyncio.wait_for(receiving, WAIT)
    assert caught.value.code is ErrorCode.CHECKSUM_MISMATCH
    close, seen = await sender.closed()
    assert close == 4020 and any(m.get("code") == "checksum_mismatch" for m in seen if isinstance(m, dict))
    assert list(tmp_path.iterdir()) == []


async def test_a_receiver_refuses_an_offer_larger_than_its_free_disk_space(relay_server, code, tmp_path) -> None:
    sender = await RawPeer.connect(relay_server.ws_url, code, "send")
    await sender.expect("hello")
    receiving = asyncio.create_task(receive(ReceiveOptions(code, tmp_path, relay_server.ws_url), yes))
    await sender.expect("peer_joined")
    await sender.expect("paired")
    await sender.send(p.Offer((p.FileEntry("huge.iso", 1 << 39),), ()))
    with pytest.raises(LocalFailure) as caught:
        await asyncio.wait_for(receiving, WAIT)
    assert caught.value.code is ErrorCode.DISK_FULL
    assert (await sender.closed())[0] == 4022


async def test_a_corrupted_chunk_from_a_hostile_relay_is_caught_by_the_receiver(code, tmp_path) -> None:
    """The relay checks digests too, so only a hostile relay can deliver a bad chunk; the receiver must notice."""
    good, bad = b"a" * 100, b"b" * 100
    reported: list[dict[str, object]] = []

    async def hostile_relay(ws: websockets.ServerConnection) -> None:
        await ws.send(p.Hello(1, "receive", 1, 1, p.DEFAULT_MAX_MESSAGE).to_json())
        await ws.send(p.Offer((p.FileEntry("f.bin", 100),), (), 100).to_json())
        await ws.recv()  # accept
        await ws.send(p.Chunk(0, 0, 100, p.chunk_digest(good)).to_json())
        await ws.send(bad)
        reported.append(json.loads(await ws.recv()))

    async with websockets.serve(hostile_relay, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TransferRefused) as caught:
            await asyncio.wait_for(receive(ReceiveOptions(code, tmp_path, f"ws://127.0.0.1:{port}"), yes), WAIT)
    assert caught.value.code is ErrorCode.CHECKSUM_MISMATCH
    assert reported and reported[0]["code"] == "checksum_mismatch"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["../../etc/cron.d/x", "/root/.ssh/authorized_keys", "a\\..\\b", "a/./b", "x\x1b]0;pwn\x07"])
async def test_a_hostile_path_from_a_hostile_relay_is_refused_by_the_receiver(code, tmp_path, path) -> None:
    reported: list[dict[str, object]] = []

    async def hostile_relay(ws: websockets.ServerConnection) -> None:
        await ws.send(p.Hello(1, "receive", 1, 1, p.DEFAULT_MAX_MESSAGE).to_json())
        await ws.send(json.dumps({"type": "offer", "files": [{"path": path, "size": 1}], "chunk_size": 1}))
        reported.append(json.loads(await ws.recv()))

    async with websockets.serve(hostile_relay, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(TransferError) as caught:
            await asyncio.wait_for(receive(ReceiveOptions(code, tmp_path, f"ws://127.0.0.1:{port}"), yes), WAIT)
    assert caught.value.code is ErrorCode.UNSAFE_PATH
    assert "\x1b" not in str(caught.value)
    assert reported[0]["code"] == "unsafe_path"
    assert list(tmp_path.iterdir()) == []


async def test_the_reason_sent_just_before_a_close_is_reported_even_when_a_send_fails(code, tmp_path) -> None:
    """The receiver's accept goes out after the relay closed; the queued ``peer_left`` still names who left."""
    closed = asyncio.Event()

    async def relay_that_ends_at_once(ws: websockets.ServerConnection) -> None:
        await ws.send(p.Hello(1, "receive", 1, 1, p.DEFAULT_MAX_MESSAGE).to_json())
        await ws.send(p.Offer((p.FileEntry("f.bin", 10),), (), 10).to_json())
        await ws.send(p.PeerLeft(0, "send").to_json())
        await ws.close(ErrorCode.PEER_LEFT.close_code)
        closed.set()

    async def accept_after_the_close(offer: p.Offer) -> bool:
        await asyncio.wait_for(closed.wait(), WAIT)
        await asyncio.sleep(0.1)  # the close frame has reached the client
        return True

    async with websockets.serve(relay_that_ends_at_once, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        options = ReceiveOptions(code, tmp_path, f"ws://127.0.0.1:{port}")
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
    )


def wait_stalled(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()  # returns when the peer has moved part of the transfer, or exits
    assert line.strip() == "stalled", f"the stalled peer did not get going (exit {process.poll()})"


async def test_a_sender_killed_mid_transfer_is_reported_and_no_file_is_left(relay_server, code, tmp_path) -> None:
    peer = start_stalled_peer("send", relay_server, code)
    try:
        await wait_for_room(relay_server, code)
        receiving = asyncio.create_task(receive(ReceiveOptions(code, tmp_path, relay_server.ws_url), yes))
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

    class Started(Reporter):
        def __init__(self) -> None:
            self.sent = 0

        def advanced(self, done: int) -> None:
            self.sent = done

    reporter = Started()
    sending = asyncio.create_task(send([source], SendOptions(code, relay_server.ws_url), reporter))
    await wait_for_room(relay_server, code)
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
