"""clients/web/src/crypto.js agrees with clients/crypto.py byte for byte, on both of the page's backends.

Runs the browser module under Node (`clients/web/test/crypto-cases.mjs`), so it needs `npm --prefix clients/web ci`.
Two kinds of check: one batch of cases (same codes, same PAKE messages and keys from the same entropy, same
ciphertexts, JS opens what Python sealed and the reverse, the same attacks fail the same way), and live runs with
Python on one side of the PAKE and JS on the other, line by line over stdin/stdout.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from clients import crypto as c
from clients.transfer import SeatTokens, verifier

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"
CASES = WEB / "test" / "crypto-cases.mjs"
BACKENDS = ("webcrypto", "noble")

CODES = [
    "42-ocean-table-actor", "  42 Ocean_Table.ACTOR ", "42--ocean - table", "\uff14\uff12\u3000\uff4f\uff43\uff45",
    "42\u00a0ocean\u2003table", "42\u2028ocean\u205fx", "42\x1cocean", "42\ufeffocean", "-42-ocean-", "ocean-table",
    "42", "42-océan", "4\ud8002-ocean", "123456789-ocean", "42-" + "a" * 126, "\u212a42-ocean", "42-\u0130stanbul",
    "42-ΟΣ", "042-x",
]
SEED_SENDER, SEED_RECEIVER = "sender seed", "receiver seed"
PAKE_CODES = ["42-ocean-table-actor", "42-ocean-table-actos", "43-ocean-table-actor"]
CHUNK = 1000


def node() -> str:
    path = shutil.which("node")
    assert path, "Node.js is needed to check the web client's crypto module"
    assert (WEB / "node_modules" / "@noble" / "curves").is_dir(), "run: npm --prefix clients/web ci"
    return path


def prg(seed: bytes):
    """python-spake2's test PRG, as crypto-cases.mjs `prg`."""
    blocks = (hashlib.sha256(b"prng-%d-" % counter + seed).digest() for counter in itertools.count())
    stream = (byte for block in blocks for byte in block)
    return lambda count: bytes(next(stream) for _ in range(count))


def _outcome(fn) -> str:
    try:
        fn()
    except c.Truncated:
        return "truncated"
    except c.Tampered:
        return "tampered"
    except c.WrongCode:
        return "wrong_code"
    except c.BadPakeMessage:
        return "bad_pake_message"
    return "ok"


@pytest.fixture(scope="module")
def cases_and_results():
    rng = os.urandom
    files = [rng(2500), b"", rng(1000), rng(1)]
    segments = [{"file": i, "start": 0, "end": len(data)} for i, data in enumerate(files)]
    plan = c.StreamPlan(tuple(c.Segment(**s) for s in segments), CHUNK)
    plaintexts = [files[p.file][p.offset:p.offset + p.length] for p in plan.positions()]
    content_key, salt = c.new_content_key(), c.new_epoch_salt()
    key = c.data_key(content_key, salt)
    sealer = c.StreamSealer(key, plan)
    python_sealed = [sealer.seal_next(chunk) for chunk in plaintexts]
    # each attack: (index into python_sealed, byte to flip or None) in the order a relay delivers them
    honest = [(i, None) for i in range(len(python_sealed))]
    attacks = [
        honest,
        [(0, 5), *honest[1:]],  # altered byte
        [(0, None), (0, None), *honest[1:]],  # replayed chunk
        [(1, None), (0, None), *honest[2:]],  # reordered
        [(0, None), (1, None), *honest[3:]],  # last chunk of file 0 dropped
        honest[:-1],  # last chunk of the stream dropped
        [*honest[:4], (5, None), (4, None)],  # chunks of files 2 and 3 swapped
        [*honest, (5, None)],  # a chunk after the end
    ]

    shared, transcript = os.urandom(32), os.urandom(32)
    pair = c.PairKeys.derive(shared, transcript)
    to_receiver = pair.control_channel(c.Role.SENDER)
    to_sender = pair.control_channel(c.Role.RECEIVER)
    control_messages = [b'{"type":"offer","files":[{"path":"a.txt","size":3}]}', b"", os.urandom(3000)]
    cases = {
        "codes": CODES,
        "passwords": ["7077", "0001feff", "", c.pake_password("42", "ocean-table").hex()],
        "pake": {"codes": PAKE_CODES, "sender_seed": SEED_SENDER, "receiver_seed": SEED_RECEIVER},
        "bad_pake_messages": ["", "42" + "00" * 32, "41" + c.Pake(c.Role.RECEIVER, PAKE_CODES[0]).outbound[1:].hex(),
                              "42" + "0100" + "00" * 30, "42" + "ff" * 32],
        "stream": {
            "content_key": content_key.hex(), "epoch_salt": salt.hex(), "chunk_size": CHUNK, "segments": segments,
            "plaintexts": [p.hex() for p in plaintexts], "python_sealed": [s.hex() for s in python_sealed],
            "attacks": attacks,
        },
        "control": {
            "shared": shared.hex(), "transcript": transcript.hex(), "messages": [m.hex() for m in control_messages],
            "python_sealed_to_sender": [to_sender.seal(m).hex() for m in control_messages],
            "python_sealed_to_receiver": [to_receiver.seal(m).hex() for m in control_messages],
            "python_sealed_content_key": pair.seal_content_key(content_key).hex(),
            "attacks": [[0, 1, 2], [1], [0, 0], [0, 2], [2, 1, 0]],
            "resync": (c.new_resync_half() + c.new_resync_half()).hex(),
        },
    }
    # A resumed epoch (docs/protocol.md section 10): a new salt, the first file from inside, the rest whole.
    resumed_segments = [{"file": 0, "start": 2 * CHUNK, "end": len(files[0])}, {"file": 1, "start": 0, "end": 0},
                        {"file": 2, "start": 0, "end": len(files[2])}]
    resumed_plan = c.StreamPlan(tuple(c.Segment(**s) for s in resumed_segments), CHUNK)
    resumed_salt = c.new_epoch_salt()
    resumed_sealer = c.StreamSealer(c.data_key(content_key, resumed_salt), resumed_plan)
    resumed_sealed = [resumed_sealer.seal_next(files[p.file][p.offset:p.offset + p.length])
                      for p in resumed_plan.positions()]
    cases["resume"] = {"tokens": [os.urandom(32).hex() for _ in range(3)]}
    cases["resumed"] = {"segments": resumed_segments, "chunk_size": CHUNK, "epoch_salt": resumed_salt.hex(),
                        "python_sealed": [s.hex() for s in resumed_sealed]}
    done = subprocess.run([node(), str(CASES)], input=json.dumps(cases), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NODE_OPTIONS": ""})
    assert done.returncode == 0, done.stderr
    context = {"resumed_plan": resumed_plan, "resumed_sealed": resumed_sealed, "files": files,
               "plan": plan, "key": key, "python_sealed": python_sealed, "plaintexts": plaintexts, "pair": pair,
               "content_key": content_key, "control_messages": control_messages}
    return cases, json.loads(done.stdout), context


def test_codes_normalise_and_split_the_same(cases_and_results):
    cases, js, _ = cases_and_results
    expected = []
    for text in cases["codes"]:
        code = c.normalize_code(text)
        try:
            expected.append([code, *c.split_code(code)])
        except c.InvalidCode:
            expected.append([code, "invalid_code"])
    assert js["codes"] == expected


def test_js_spake2_reproduces_python_spake2_published_known_answers(cases_and_results):
    """python-spake2 0.9's tests/test_compat.py values (password "password", PRG seeds "A" and "B")."""
    _, js, _ = cases_and_results
    assert js["spake2"] == {
        "m1A": "416fc960df73c9cf8ed7198b0c9534e2e96a5984bfc5edc023fd24dacf371f2af9",
        "m1B": "42354e97b88406922b1df4bea1d7870f17aed3dba7c720b313edae315b00959309",
        "pw_scalar": "3515301705789368674385125653994241092664323519848410154015274772661223168839",
        "xy_A": "2611694063369306139794446498317402240796898290761098242657700742213257926693",
        "xy_B": "7002393159576182977806091886122272758628412261510164356026361256515836884383",
        "kA": "a480bca13fa04464bb644f10e340125e96c9494f7399fef7c2bda67eb0fdf06d",
        "kB": "a480bca13fa04464bb644f10e340125e96c9494f7399fef7c2bda67eb0fdf06d",
    }


def test_js_derives_python_spake2_constants_and_password_scalars(cases_and_results):
    from spake2.ed25519_group import Ed25519Group  # type: ignore[import-untyped]
    from spake2.parameters.ed25519 import ParamsEd25519  # type: ignore[import-untyped]

    cases, js, _ = cases_and_results
    assert js["params"] == {"M": ParamsEd25519.M.to_bytes().hex(), "N": ParamsEd25519.N.to_bytes().hex()}
    scalars = [str(Ed25519Group.password_to_scalar(bytes.fromhex(pw))) for pw in cases["passwords"]]
    assert js["password_scalars"] == scalars
    # python-spake2's own password-to-scalar vectors for Ed25519 (little-endian scalar bytes)
    assert int.from_bytes(bytes.fromhex("cf090b60384cb818b12c8d972dfbaf910c0c7295c5cfe560e508f5f062f3960f"),
                          "little") == int(js["password_scalars"][0])
    assert int.from_bytes(bytes.fromhex("e86622bb57ea0f6f9f963354f2973a43a9e981901a478e6478682374441b0c04"),
                          "little") == int(js["password_scalars"][1])
    assert js["pake_passwords"] == [c.pake_password(*c.split_code(code)).hex() for code in PAKE_CODES]


def test_js_refuses_the_same_bad_pake_messages(cases_and_results):
    cases, js, _ = cases_and_results
    assert js["bad_pake_messages"] == ["bad_pake_message"] * len(cases["bad_pake_messages"])
    for message in cases["bad_pake_messages"]:
        assert _outcome(lambda m=message: c.Pake(c.Role.SENDER, PAKE_CODES[0]).finish(bytes.fromhex(m))) == (
            "bad_pake_message"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_entropy_gives_the_same_pake_messages_keys_and_confirmations(cases_and_results, backend):
    _, js, _ = cases_and_results
    out = js["backends"][backend]
    sender = c.Pake(c.Role.SENDER, PAKE_CODES[0], entropy=prg(SEED_SENDER.encode()))
    assert out["sender_outbound"] == sender.outbound.hex()
    receivers = [c.Pake(c.Role.RECEIVER, code, entropy=prg(SEED_RECEIVER.encode())) for code in PAKE_CODES]
    sender_keys = sender.finish(receivers[0].outbound)
    assert out["confirm_sender"] == sender_keys.confirmation(c.Role.SENDER).hex()
    for receiver, js_pair in zip(receivers, out["pairs"], strict=True):
        keys = receiver.finish(sender.outbound)
        assert js_pair["outbound"] == receiver.outbound.hex()
        assert js_pair["transcript"] == keys.transcript.hex()
        assert js_pair["keys"] == {
            "confirmSender": keys.confirm_sender.hex(), "confirmReceiver": keys.confirm_receiver.hex(),
            "controlSenderToReceiver": keys.control_sender_to_receiver.hex(),
            "controlReceiverToSender": keys.control_receiver_to_sender.hex(),
            "contentKeyWrap": keys.content_key_wrap.hex(), "resumeSender": keys.resume_sender.hex(),
            "resumeReceiver": keys.resume_receiver.hex(),
        }
        assert js_pair["confirm_receiver"] == keys.confirmation(c.Role.RECEIVER).hex()
    # the right code confirms; the same nameplate with other words, or another nameplate, does not
    assert [p["check_sender"] for p in out["pairs"]] == ["ok", "wrong_code", "wrong_code"]
    assert out["pairs"][0]["keys"] != out["pairs"][1]["keys"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_js_seals_what_python_seals_and_each_opens_the_other(cases_and_results, backend):
    cases, js, ctx = cases_and_results
    out = js["backends"][backend]
    assert out["data_key"] == ctx["key"].hex()
    assert out["sealed"] == [s.hex() for s in ctx["python_sealed"]]  # AES-GCM is deterministic per (key, nonce)
    opener = c.StreamOpener(ctx["key"], ctx["plan"])
    assert [opener.open_next(bytes.fromhex(s)).plaintext for s in out["sealed"]] == ctx["plaintexts"]
    opener.finish()
    assert out["plan"] == {"chunk_count": ctx["plan"].chunk_count(), "ciphertext_size": ctx["plan"].ciphertext_size()}

    pair = ctx["pair"]
    assert pair.open_content_key(bytes.fromhex(out["sealed_content_key"])) == ctx["content_key"]
    assert out["opened_content_key"] == ctx["content_key"].hex()
    receiver = pair.control_channel(c.Role.RECEIVER)
    assert [receiver.open(bytes.fromhex(m)) for m in out["sealed_control"]] == ctx["control_messages"]
    assert out["opened_control"] == [m.hex() for m in ctx["control_messages"]]
    after_resume = pair.control_channel(c.Role.RECEIVER, bytes.fromhex(cases["control"]["resync"]))
    assert after_resume.open(bytes.fromhex(out["sealed_after_resync"])) == ctx["control_messages"][0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_js_derives_the_resume_verifiers_and_next_tokens_python_does(cases_and_results, backend):
    cases, js, _ = cases_and_results
    expected = []
    for token in map(bytes.fromhex, cases["resume"]["tokens"]):
        following = SeatTokens.following(token)
        expected.append([verifier(token), following.hex(), verifier(following)])
    assert js["backends"][backend]["resume_tokens"] == expected
    assert len({row[0] for row in expected}) == 3  # distinct tokens, distinct verifiers: the check can fail


@pytest.mark.parametrize("backend", BACKENDS)
def test_js_opens_and_seals_a_resumed_epoch_as_python_does(cases_and_results, backend):
    _, js, ctx = cases_and_results
    out = js["backends"][backend]["resumed"]
    plan = ctx["resumed_plan"]
    assert out["plan"] == {"chunk_count": plan.chunk_count(), "ciphertext_size": plan.ciphertext_size()}
    assert out["opened"] == [[p.file, p.offset, p.last, ctx["files"][p.file][p.offset:p.offset + p.length].hex()]
                             for p in plan.positions()]
    assert out["opened"][0][1] == 2 * CHUNK  # the epoch starts inside file 0, its chunk index from 0 again
    assert out["sealed"] == [s.hex() for s in ctx["resumed_sealed"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_js_detects_every_attack_as_python_does(cases_and_results, backend):
    cases, js, ctx = cases_and_results
    out = js["backends"][backend]
    expected = []
    for attack in cases["stream"]["attacks"]:
        opener, opened = c.StreamOpener(ctx["key"], ctx["plan"]), []

        def run(attack=attack, opener=opener, opened=opened):
            for index, flip in attack:
                chunk = bytearray(ctx["python_sealed"][index])
                if flip is not None:
                    chunk[flip] ^= 1
                opened.append(opener.open_next(bytes(chunk)).plaintext.hex())
            opener.finish()

        expected.append([_outcome(run), opened])
    assert out["attacks"] == expected
    assert out["attacks_at_once"] == expected  # chunks opening concurrently, as the page does
    assert [outcome for outcome, _ in out["attacks"]] == [
        "ok", "tampered", "tampered", "tampered", "tampered", "truncated", "tampered", "tampered",
    ]
    assert out["control_attacks"] == ["ok", "tampered", "tampered", "tampered", "tampered"]


# --- live runs: Python on one side, JS on the other ----------------------------------------------------------


class JsPeer:
    """crypto-cases.mjs in peer mode: one JSON object per line each way, every read bounded in time."""

    def __init__(self, role: c.Role, setup: dict) -> None:
        self.process = subprocess.Popen(
            [node(), str(CASES), "peer", role.value], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "NODE_OPTIONS": ""},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(setup)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def send(self, message: dict) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        line = self.lines.get(timeout=30)
        assert line, "the JS peer stopped talking"
        return json.loads(line)

    def close(self) -> str:
        """End stdin, wait (bounded) for the peer to exit, and return what it printed on stderr."""
        assert self.process.stdin is not None and self.process.stderr is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()  # the peer sees the end of its input and exits
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.stderr.read()


@pytest.fixture
def js_peer():
    peers: list[JsPeer] = []

    def start(role: c.Role, setup: dict) -> JsPeer:
        peers.append(JsPeer(role, setup))
        return peers[-1]

    yield start
    for peer in peers:
        stderr = peer.close()
        assert peer.process.returncode == 0, stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_sender_to_js_receiver(js_peer, backend):
    files = [os.urandom(2345), b"", os.urandom(999)]
    peer = js_peer(c.Role.RECEIVER, {"code": " 7 Ocean Table ", "backend": backend})
    pake = c.Pake(c.Role.SENDER, "7-ocean-table")
    inbound = bytes.fromhex(peer.receive()["pake"])
    peer.send({"pake": pake.outbound.hex()})
    keys = pake.finish(inbound)
    peer.send({"confirm": keys.confirmation(c.Role.SENDER).hex()})
    keys.check_confirmation(c.Role.RECEIVER, bytes.fromhex(peer.receive()["confirm"]))

    content_key, salt = c.new_content_key(), c.new_epoch_salt()
    channel = keys.control_channel(c.Role.SENDER)
    segments = [{"file": i, "start": 0, "end": len(data)} for i, data in enumerate(files)]
    offer = json.dumps({"segments": segments, "chunk_size": 1000}).encode()
    peer.send({"content_key": keys.seal_content_key(content_key).hex(), "epoch_salt": salt.hex(),
               "offer": channel.seal(offer).hex()})
    plan = c.StreamPlan(tuple(c.Segment(**s) for s in segments), 1000)
    sealer = c.StreamSealer(c.data_key(content_key, salt), plan)
    for p in plan.positions():
        peer.send({"chunk": sealer.seal_next(files[p.file][p.offset:p.offset + p.length]).hex()})
    peer.send({"end": True})
    done = json.loads(channel.open(bytes.fromhex(peer.receive()["done"])))
    assert done == {"sha256": [hashlib.sha256(data).hexdigest() for data in files]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_js_sender_to_python_receiver(js_peer, backend):
    files = [os.urandom(3000), os.urandom(1), b""]
    peer = js_peer(c.Role.SENDER, {"code": "7-ocean-table", "backend": backend, "chunk_size": 1000,
                                    "files": [data.hex() for data in files]})
    pake = c.Pake(c.Role.RECEIVER, "7-ocean-table")
    inbound = bytes.fromhex(peer.receive()["pake"])
    peer.send({"pake": pake.outbound.hex()})
    keys = pake.finish(inbound)
    keys.check_confirmation(c.Role.SENDER, bytes.fromhex(peer.receive()["confirm"]))
    peer.send({"confirm": keys.confirmation(c.Role.RECEIVER).hex()})

    start = peer.receive()
    content_key = keys.open_content_key(bytes.fromhex(start["content_key"]))
    channel = keys.control_channel(c.Role.RECEIVER)
    offer = json.loads(channel.open(bytes.fromhex(start["offer"])))
    plan = c.StreamPlan(tuple(c.Segment(**s) for s in offer["segments"]), offer["chunk_size"])
    opener = c.StreamOpener(c.data_key(content_key, bytes.fromhex(start["epoch_salt"])), plan)
    received = [bytearray(s["end"]) for s in offer["segments"]]
    while "chunk" in (message := peer.receive()):
        chunk = opener.open_next(bytes.fromhex(message["chunk"]))
        received[chunk.file][chunk.offset:chunk.offset + len(chunk.plaintext)] = chunk.plaintext
    assert message == {"end": True}
    opener.finish()
    assert [bytes(data) for data in received] == files
    digests = [hashlib.sha256(data).hexdigest() for data in received]
    peer.send({"done": channel.seal(json.dumps({"sha256": digests}).encode()).hex()})
    assert peer.receive() == {"result": "verified"}


@pytest.mark.parametrize("js_role", [c.Role.SENDER, c.Role.RECEIVER])
def test_a_wrong_code_fails_confirmation_on_both_sides(js_peer, js_role):
    """Same nameplate, other words: the PAKE completes, the confirmations do not, nothing else is sent."""
    setup = {"code": "7-ocean-table", "backend": "webcrypto", "chunk_size": 1000, "files": ["00"]}
    peer = js_peer(js_role, setup)
    pake = c.Pake(js_role.other, "7-ocean-tablet")
    inbound = bytes.fromhex(peer.receive()["pake"])
    peer.send({"pake": pake.outbound.hex()})
    keys = pake.finish(inbound)
    if js_role is c.Role.SENDER:
        mac = bytes.fromhex(peer.receive()["confirm"])
        assert _outcome(lambda: keys.check_confirmation(c.Role.SENDER, mac)) == "wrong_code"
        peer.send({"confirm": keys.confirmation(c.Role.RECEIVER).hex()})
    else:
        peer.send({"confirm": keys.confirmation(c.Role.SENDER).hex()})
    assert peer.receive() == {"error": "wrong_code"}
