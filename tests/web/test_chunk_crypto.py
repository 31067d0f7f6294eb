"""The page's chunk cipher on its AES worker (clients/web/src/chunk-crypto.js, aead-worker.js) in real Chromium:
it seals and opens exactly what WebCrypto on the page's thread does, keeps several chunks in flight in order,
refuses an altered chunk, and hands every chunk's buffer to the worker and back instead of copying it (issue 10:
a structured clone cost two 1 MiB copies per chunk on each side).

The module is bundled for the test with the page's own esbuild and served at the relay's origin (the worker
script comes from the relay, as in a transfer), so the page runs it in its secure context.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from playwright.sync_api import BrowserContext, Route

WEB = Path(__file__).resolve().parents[2] / "clients" / "web"

ENTRY = """
import { chunkBackend } from "%(src)s/chunk-crypto.js";
import { chunkAad, chunkNonce, webCryptoBackend } from "%(src)s/crypto.js";

const equal = (a, b) => a.length === b.length && a.every((value, i) => value === b[i]);
const random = (length) => {
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) crypto.getRandomValues(out.subarray(at, Math.min(length, at + 65536)));
  return out;
};

export async function run() {
  const key = random(32);
  const worker = await chunkBackend().aead(key);
  const page = await webCryptoBackend().aead(key);
  const sizes = [786432, 786432, 1, 0, 786432, 300000, 786432, 786432];
  const plains = sizes.map((size) => random(size));
  const copies = plains.map((plain) => plain.slice());
  const last = sizes.length - 1;
  const where = sizes.map((size, i) => [chunkNonce(0, i, i === last), chunkAad(0, i * 786432, i === last)]);
  // All in flight at once, as the sending page keeps several chunks sealing ahead of the one it sends.
  const sealings = plains.map((plain, i) => worker.seal(where[i][0], where[i][1], plain));
  const handedOver = plains.every((plain, i) => sizes[i] === 0 || plain.byteLength === 0);
  const sealed = await Promise.all(sealings);
  const references = await Promise.all(copies.map((copy, i) => page.seal(where[i][0], where[i][1], copy.slice())));
  const sameAsPage = sealed.every((bytes, i) => equal(bytes, references[i]));
  const altered = sealed[0].slice();
  altered[1000] ^= 1;
  const openings = sealed.map((bytes, i) => worker.open(where[i][0], where[i][1], bytes));
  const sealedHandedOver = sealed.every((bytes) => bytes.byteLength === 0);
  const opened = await Promise.all(openings);
  return {
    handedOver,
    sealedHandedOver,
    sameAsPage,
    openedWhole: opened.every((bytes, i) => bytes !== null && equal(bytes, copies[i])),
    alteredOpens: await worker.open(where[0][0], where[0][1], altered),
    swappedOpens: await worker.open(where[1][0], where[1][1], references[0].slice()),
  };
}
"""


def test_the_aes_worker_seals_and_opens_as_webcrypto_and_takes_each_chunk_without_a_copy(
        no_sw_context: BrowserContext, relay_server, tmp_path: Path):
    # No service worker: once the page's worker controls the page, the module request goes through it, which
    # Playwright's routes do not see, and the relay answers 404 (1 run in a few, depending on timing).
    context = no_sw_context
    entry = tmp_path / "entry.js"
    entry.write_text(ENTRY % {"src": (WEB / "src").as_posix()})
    bundle = tmp_path / "chunk-test.js"
    subprocess.run([str(WEB / "node_modules" / ".bin" / "esbuild"), str(entry), "--bundle", "--format=esm",
                    f"--outfile={bundle}", "--log-level=warning"], check=True, timeout=60)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(relay_server.http_url + "/")

    def serve(route: Route) -> None:
        route.fulfill(status=200, content_type="text/javascript", body=bundle.read_text())

    page.route("**/chunk-test.js", serve)
    result = page.evaluate("import('./chunk-test.js').then((module) => module.run())")
    assert relay_server.http_url + "/aead-worker.js" in requested  # the chunks went to the worker
    assert result == {
        "handedOver": True,  # the page's plaintext buffers were transferred, not cloned
        "sealedHandedOver": True,  # so were the sealed ones, on the way to be opened
        "sameAsPage": True,
        "openedWhole": True,
        "alteredOpens": None,
        "swappedOpens": None,  # chunk 0's ciphertext at chunk 1's position
    }
    assert errors == []
