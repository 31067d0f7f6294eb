"""clients/web/src/protocol.js and hashing.js agree with relay/protocol.py: paths, messages, codes, digests.

Runs the browser modules under Node (the web client's build tool), so it needs `npm --prefix clients/web ci`.
"""

from __future__ import annotations

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
MESSAGES = [
    '{"type":"hello","version":1,"role":"send","peer":0,"receivers":1,"max_message":4194304}',
    '{"type":"hello","version":1,"role":"admin","peer":0,"receivers":1,"max_message":4194304}',
    '{"type":"offer","files":[{"path":"a","size":1}],"dirs":["d"],"chunk_size":1048576}',
    '{"type":"offer","files":[{"path":"a","size":1},{"path":"A","size":2}]}',
    '{"type":"offer","files":[{"path":"a","size":1},{"path":"a/b","size":2}]}',
    '{"type":"offer","files":[{"path":"a","size":-1}]}',
    '{"type":"offer","files":[{"path":"a","size":9007199254740992}]}',
    '{"type":"offer","files":[{"path":"../a","size":1}]}',
    '{"type":"offer","files":[],"dirs":["x/../y"]}',
    '{"type":"offer","files":"nope"}',
    '{"type":"offer","files":[{"path":"a","size":1}],"chunk_size":0}',
    '{"type":"chunk","file":0,"offset":0,"size":1,"xxh3_64":"0123456789abcdef"}',
    '{"type":"chunk","file":0,"offset":0,"size":0,"xxh3_64":"0123456789abcdef"}',
    '{"type":"chunk","file":0,"offset":0,"size":1,"xxh3_64":"0123456789ABCDEF"}',
    '{"type":"file_done","file":0,"size":3,"xxh3_128":"0123456789abcdef0123456789abcdef"}',
    '{"type":"file_done","file":0,"size":3,"xxh3_128":"0123"}',
    '{"type":"error","code":"checksum_mismatch","message":"bad"}',
    '{"type":"error","code":"made_up","message":"bad"}',
    '{"type":"cancel","reason":"' + "r" * 1001 + '"}',
    '{"type":"peer_left","peer":1,"role":"receive"}',
    '{"type":"ack","file":"0","offset":0}',
    '{"type":"frobnicate"}', '{"kind":"hello"}', "[1,2]", "not json", '{"type":7}',
    # lone surrogates anywhere: malformed_message
    '{"type":"cancel","reason":"\\ud800"}', '{"type":"error","code":"write_failed","message":"\\uDFFF"}',
    '{"type":"ack","file":0,"offset":0,"x":{"y":["\\ud800"]}}', '{"type":"start","\\udbff":1}',
    '{"type":"offer","files":[{"path":"a\\ud800","size":1}]}', '{"type":"cancel","reason":"\\ud83d\\ude00"}',
    '{"type":"cancel","reason":"\\\\ud800"}', '{"type":"frobnicate\\ud800"}',
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
CODES = ["Actor Table_Ocean.ring", "  abc  ", "-x-", "UPPER", "a" * 129, "é-word", "a--b"]
TEXTS = ["plain", "new\nline", "tab\t", "bell\x07", "bidi\u202eexe", "c1\x9b", "zwj\u200dx", "ok ünïcödé"]


def test_js_protocol_agrees_with_python():
    node = shutil.which("node")
    assert node, "Node.js is needed to check the web client's protocol module"
    assert (WEB / "node_modules" / "hash-wasm").is_dir(), "run: npm --prefix clients/web ci"
    rng = random.Random(3)
    blobs = [bytes(rng.getrandbits(8) for _ in range(n)) for n in (0, 1, 3, 16, 17, 128, 129, 240, 241, 1000, 4097, 70000)]
    cases = {"paths": PATHS, "messages": MESSAGES, "codes": CODES, "texts": TEXTS, "blobs": [b.hex() for b in blobs]}
    done = subprocess.run([node, str(WEB / "test" / "protocol-cases.mjs")], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=60, env={**os.environ, "NODE_OPTIONS": ""})
    assert done.returncode == 0, done.stderr
    js = json.loads(done.stdout)

    assert js["paths"] == [_outcome(p.check_path, path) for path in PATHS]
    assert js["messages"] == [_outcome(p.parse_message, text) for text in MESSAGES]
    assert js["codes"] == [[p.normalize_code(c), p.is_valid_code(p.normalize_code(c))] for c in CODES]
    assert js["texts"] == [p.escape_text(text) for text in TEXTS]
    assert js["digests"] == [[xxhash.xxh3_64_hexdigest(b), xxhash.xxh3_128_hexdigest(b)] for b in blobs]


def _outcome(check, value) -> str:
    try:
        check(value)
    except p.ProtocolError as error:
        return error.code.value
    return "ok"
