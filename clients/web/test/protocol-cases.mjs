// Run the browser protocol module under Node on cases read from stdin (JSON) and print the results (JSON),
// so tests/web/test_protocol_js.py can compare them with relay/protocol.py.
//   {"paths": [...], "offers": [...], "messages": [...], "texts": [...], "blobs": ["hex", ...],
//    "base64": ["hex", ...]}

import { checkOffer, checkPath, escapeText, fromBase64, parseMessage, toBase64 } from "../src/protocol.js";
import { createHashing } from "../src/hashing.js";

const outcome = (fn) => {
  try {
    fn();
    return "ok";
  } catch (error) {
    return error.code ?? `throws ${error.message}`;
  }
};

const fromHex = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (pair) => Number.parseInt(pair, 16));
const toHex = (bytes) => Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");

let input = "";
for await (const piece of process.stdin) input += piece;
const cases = JSON.parse(input);
const hashing = await createHashing();

const digests = cases.blobs.map((hex) => {
  const bytes = fromHex(hex);
  const file = hashing.newFileDigest();
  for (let start = 0; start < bytes.length; start += 1000) file.update(bytes.subarray(start, start + 1000));
  return [hashing.chunkDigest(bytes), file.hexdigest()];
});

process.stdout.write(JSON.stringify({
  paths: cases.paths.map((path) => outcome(() => checkPath(path))),
  // A sealed offer is opened to this object, then checked by the rules of a version 1 offer.
  offers: cases.offers.map((text) => outcome(() => checkOffer(JSON.parse(text)))),
  messages: cases.messages.map((text) => outcome(() => parseMessage(text))),
  texts: cases.texts.map((text) => escapeText(text)),
  digests,
  base64: cases.base64.map((hex) => {
    const text = toBase64(fromHex(hex));
    return [text, toHex(fromBase64(text))];
  }),
}));
