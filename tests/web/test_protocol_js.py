"""clients/web/src/protocol.js and hashing.js agree with relay/protocol.py: paths, the sealed offer's rules, the
version 2 messages a page receives, base64, and digests (XXH3-64 of chunks, SHA-256 of files).

Runs the browser modules under Node (the web client's build tool), so it needs `npm --prefix clients/web ci`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import xxhash

from relay import protocol as p

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"

PATHS = [
    "a.txt", "dir/sub/file.bin", "ünïcödé/名前.txt", "emoji-😀.png", "a b/c d.txt", "x" * 255, "x" * 256,
    "é" * 128, "/abs", "a//b", "./a", "a/./b", "../up", "a/..", "", "back\\slash", "nul\x00byte", "tab\tname",
    "del\x7fname", "c1\x85name", "line\u2028sep", "CON", "con.txt", "a/Lpt9.tar.gz", "com0", "COM1 .txt",
    "aux ", "ends.", "a<b", "a>b", 'a"b', "a|b", "a?b", "a*b", "a:b", "bidi\u202eexe.txt", "zero\u200bwidth",
    "lone\ud800surrogate", "/".join(["d"] * 2049), "a/" * 1000 + "b" * 2000, "aux.c", "a:b.txt", "what?.txt",
    "trailing.", "trailing ", "dir./x", "CON/nul.txt", "\udc00", "x\U0001f600", "é" * 127 + "e",
]
OFFERS = [
    '{"type":"offer","files":[{"path":"a","size":1}],"dirs":["d"],"chunk_size":1048576}',
    '{"files":[{"path":"a","size":1}]}',
    '{"type":"accept","files":[{"path":"a","size":1}]}',
    '{"type":"offer","files":[{"path":"a","size":1},{"path":"A","size":2}]}',
    '{"type":"offer","files":[{"path":"a","size":1},{"path":"a/b","size":2}]}',
    '{"type":"offer","files":[{"path":"a","size":-1}]}',
    '{"type":"offer","files":[{"path":"a","size":9007199254740992}]}',
    '{"type":"offer","files":[{"path":"../a","size":1}]}',
    '{"type":"offer","files":[],"dirs":["x/../y"]}',
    '{"type":"offer","files":"nope"}',
    '{"type":"offer","files":[{"path":"a","size":1}],"chunk_size":0}',
    '{"type":"offer","files":[{"path":"a\\ud800","size":1}]}',
    # names that cannot exist side by side
    '{"type":"offer","files":[{"path":"a","size":1}],"dirs":["a"]}',
    '{"type":"offer","files":[{"path":"b","size":1},{"path":"a","size":1}],"dirs":["a"]}',
    '{"type":"offer","files":[{"path":"a","size":1}],"dirs":["a/b"]}',
    '{"type":"offer","files":[],"dirs":["d","d"]}', '{"type":"offer","files":[],"dirs":["d","D"]}',
    '{"type":"offer","files":[{"path":"caf\u00e9","size":1},{"path":"cafe\u0301","size":1}]}',
    '{"type":"offer","files":[{"path":"docs/a","size":1},{"path":"Docs/b","size":1}]}',
    '{"type":"offer","files":[{"path":"stra\u00dfe","size":1},{"path":"STRASSE","size":1}]}',
    '{"type":"offer","files":[{"path":"a/b","size":1},{"path":"a/c","size":1}],"dirs":["a"]}',
    '{"type":"offer","files":[{"path":"aux.c","size":1},{"path":"a:b","size":1}],"dirs":["trailing."]}',
    # mtime, exec and kind
    '{"type":"offer","files":[{"path":"a","size":1,"mtime":1700000000,"exec":true}]}',
    '{"type":"offer","files":[{"path":"a","size":1,"mtime":-1}]}',
    '{"type":"offer","files":[{"path":"a","size":1,"mtime":253402300800}]}',
    '{"type":"offer","files":[{"path":"a","size":1,"mtime":"1"}]}',
    '{"type":"offer","files":[{"path":"a","size":1,"exec":1}]}',
    '{"type":"offer","files":[{"path":"a","size":1,"exec":null}]}',
    '{"type":"offer","kind":"text","files":[{"path":"a","size":1048576}]}',
    '{"type":"offer","kind":"text","files":[{"path":"a","size":1048577}]}',
    '{"type":"offer","kind":"text","files":[{"path":"a","size":1}],"dirs":["d"]}',
    '{"type":"offer","kind":"stdin","files":[{"path":"a","size":1},{"path":"b","size":1}]}',
    '{"type":"offer","kind":"stdin","files":[{"path":"a","size":9007199254740991}]}',
    '{"type":"offer","kind":"folder","files":[{"path":"a","size":1}]}',
]

def _b64(size: int) -> str:
    return base64.b64encode(bytes((7 * i) % 256 for i in range(size))).decode()


MESSAGES = [
    '{"type":"hello","version":2,"role":"send","peer":0,"receivers":1,"max_message":4194304,"nameplate":"42"}',
    '{"type":"hello","version":2,"role":"receive","peer":1,"receivers":3,"max_message":4194304}',
    '{"type":"hello","version":2,"role":"send","peer":0,"receivers":1,"max_message":4194304,"nameplate":"4a2"}',
    '{"type":"hello","version":2,"role":"send","peer":0,"receivers":1,"max_message":4194304,"nameplate":"123456789"}',
    '{"type":"hello","version":2,"role":"send","peer":0,"receivers":1,"max_message":4194304,"nameplate":42}',
    '{"type":"hello","version":2,"role":"admin","peer":0,"receivers":1,"max_message":4194304}',
    f'{{"type":"pake","data":"{_b64(33)}","peer":1}}', f'{{"type":"pake","data":"{_b64(32)}"}}',
    '{"type":"pake","data":"!!!!"}', '{"type":"pake","data":"QUJD"}', '{"type":"pake","data":"QUI"}',
    '{"type":"pake","data":7}', '{"type":"pake"}', '{"type":"pake","data":"QQ=A"}',
    f'{{"type":"confirm","data":"{_b64(32)}"}}', f'{{"type":"confirm","data":"{_b64(33)}"}}',
    f'{{"type":"key","data":"{_b64(48)}"}}', f'{{"type":"key","data":"{_b64(47)}"}}',
    '{"type":"wrong_code"}',
    f'{{"type":"offer","total_size":5,"files":1,"data":"{_b64(80)}"}}',
    f'{{"type":"offer","total_size":5,"files":0,"data":"{_b64(80)}"}}',
    f'{{"type":"offer","total_size":-1,"files":1,"data":"{_b64(80)}"}}',
    f'{{"type":"offer","total_size":5,"files":1,"data":"{_b64(15)}"}}',
    f'{{"type":"offer","total_size":5,"files":100001,"data":"{_b64(16)}"}}',
    '{"type":"offer","files":[{"path":"a","size":1}]}',
    f'{{"type":"accept","data":"{_b64(16)}","peer":2}}', '{"type":"accept","peer":1}',
    f'{{"type":"decline","code":"declined","data":"{_b64(40)}","peer":1}}', '{"type":"decline"}',
    '{"type":"decline","code":"made_up"}', '{"type":"start"}',
    f'{{"type":"stream","epoch":0,"chunks":3,"bytes":48,"data":"{_b64(120)}"}}',
    f'{{"type":"stream","epoch":-1,"chunks":3,"bytes":48,"data":"{_b64(120)}"}}',
    f'{{"type":"stream","epoch":0,"chunks":0,"bytes":48,"data":"{_b64(120)}"}}',
    f'{{"type":"stream","epoch":0,"chunks":1,"bytes":15,"data":"{_b64(120)}"}}',
    f'{{"type":"stream","epoch":4294967296,"chunks":1,"bytes":16,"data":"{_b64(120)}"}}',
    '{"type":"chunk","epoch":0,"size":16,"xxh3_64":"0123456789abcdef"}',
    '{"type":"chunk","epoch":0,"size":15,"xxh3_64":"0123456789abcdef"}',
    '{"type":"chunk","epoch":0,"size":17,"xxh3_64":"0123456789ABCDEF"}',
    '{"type":"chunk","file":0,"offset":0,"size":1,"xxh3_64":"0123456789abcdef"}',
    '{"type":"end","epoch":0}', '{"type":"end"}', '{"type":"done"}', '{"type":"file_done","file":0}',
    '{"type":"ack","epoch":0,"chunks":0,"peer":1}', '{"type":"ack","file":0,"offset":0}',
    f'{{"type":"sealed","data":"{_b64(50)}","peer":3}}', '{"type":"sealed","data":""}',
    '{"type":"verified","peer":1}', '{"type":"complete"}',
    f'{{"type":"cancel","data":"{_b64(30)}","peer":1}}', '{"type":"cancel","peer":0}', '{"type":"cancel","data":5}',
    '{"type":"error","code":"wrong_code","message":"the code was wrong"}',
    '{"type":"error","code":"tampered","message":"bad","peer":1}', '{"type":"error","code":"made_up","message":"bad"}',
    '{"type":"peer_left","peer":1,"role":"receive"}',
    # resume (section 10): what a page receives
    '{"type":"reconnecting","peer":0}', '{"type":"reconnecting","peer":1001}', '{"type":"reconnecting"}',
    '{"type":"resumed","peer":1,"parked":[]}', '{"type":"resumed","peer":0,"parked":[2,3]}',
    '{"type":"resumed","peer":2}',
    '{"type":"resumed","peer":1,"parked":"2"}', '{"type":"resumed","peer":1,"parked":[-1]}',
    f'{{"type":"resumed","peer":1,"parked":{list(range(1002))}}}',
    f'{{"type":"resync","half":"{_b64(16)}"}}', f'{{"type":"resync","half":"{_b64(16)}","peer":2}}',
    f'{{"type":"resync","half":"{_b64(15)}"}}', f'{{"type":"resync","half":"{_b64(17)}"}}', '{"type":"resync"}',
    '{"type":"error","code":"resume_refused","message":"that seat is not waiting to be resumed"}',
    # a receiver dropped at the resume window's end (section 10)
    '{"type":"dropped","peers":[2]}', '{"type":"dropped","peers":[1,3]}', '{"type":"dropped","peers":[]}',
    '{"type":"dropped","peers":[0]}', '{"type":"dropped","peers":[1001]}', '{"type":"dropped","peers":[2,2]}',
    '{"type":"dropped","peers":"2"}', '{"type":"dropped","peers":[1.5]}', '{"type":"dropped","peers":[true]}',
    '{"type":"dropped"}', f'{{"type":"dropped","peers":{list(range(1, 1002))}}}',
    '{"type":"dropped","peers":[2],"extra":1}', '{"type":"dropped","peers":[2],"x":"\\ud800"}',
    '{"type":"error","code":"dropped","message":"receiver 2 did not come back within the resume window"}',
    '{"type":"frobnicate"}', '{"kind":"hello"}', "[1,2]", "not json", '{"type":7}',
    # lone surrogates anywhere: malformed_message
    '{"type":"cancel","x":"\\ud800"}', '{"type":"error","code":"write_failed","message":"\\uDFFF"}',
    '{"type":"ack","epoch":0,"chunks":0,"x":{"y":["\\ud800"]}}', '{"type":"start","\\udbff":1}',
    '{"type":"error","code":"tampered","message":"\\ud83d\\ude00"}', '{"type":"frobnicate\\ud800"}',
]
TEXTS = ["plain", "new\nline", "tab\t", "bell\x07", "bidi\u202eexe", "c1\x9b", "zwj\u200dx", "ok ünïcödé"]


def test_js_protocol_agrees_with_python():
    node = shutil.which("node")
    assert node, "Node.js is needed to check the web client's protocol module"
    assert (WEB / "node_modules" / "hash-wasm").is_dir(), "run: npm --prefix clients/web ci"
    rng = random.Random(3)
    sizes = (0, 1, 3, 16, 17, 128, 129, 240, 241, 1000, 4097, 70000)
    blobs = [bytes(rng.getrandbits(8) for _ in range(n)) for n in sizes]
    cases = {"paths": PATHS, "offers": OFFERS, "messages": MESSAGES, "texts": TEXTS, "blobs": [b.hex() for b in blobs],
             "base64": [b.hex() for b in blobs]}
    done = subprocess.run([node, str(WEB / "test" / "protocol-cases.mjs")], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=60, env={**os.environ, "NODE_OPTIONS": ""})
    assert done.returncode == 0, done.stderr
    js = json.loads(done.stdout)

    assert js["paths"] == [_outcome(p.check_path, path) for path in PATHS]
    assert js["offers"] == [_outcome(p.parse_offer, text) for text in OFFERS]  # the sealed offer's rules
    assert js["messages"] == [_outcome(lambda text: p.parse_message(text, p.PROTOCOL_V2), text) for text in MESSAGES]
    assert js["texts"] == [p.escape_text(text) for text in TEXTS]
    assert js["digests"] == [[xxhash.xxh3_64_hexdigest(b), hashlib.sha256(b).hexdigest()] for b in blobs]
    assert js["base64"] == [[base64.b64encode(b).decode(), b.hex()] for b in blobs]


def _outcome(check, value) -> str:
    try:
        check(value)
    except p.ProtocolError as error:
        return error.code.value
    return "ok"
