// Run the browser protocol module under Node on cases read from stdin (JSON) and print the results (JSON),
// so tests/web/test_protocol_js.py can compare them with relay/protocol.py.
//   {"paths": [...], "offers": [...], "messages": [...], "codes": [...], "texts": [...], "blobs": ["hex", ...]}

import { checkPath, escapeText, isValidCode, normalizeCode, parseMessage } from "../src/protocol.js";
import { createHashing } from "../src/hashing.js";

const outcome = (fn) => {
  try {
    fn();
    return "ok";
  } catch (error) {
    return error.code ?? `throws ${error.message}`;
  }
};

let input = "";
for await (const piece of process.stdin) input += piece;
const cases = JSON.parse(input);
const hashing = await createHashing();

const digests = cases.blobs.map((hex) => {
  const bytes = Uint8Array.from(hex.match(/../g) ?? [], (pair) => Number.parseInt(pair, 16));
  const file = hashing.newFileDigest();
  for (let start = 0; start < bytes.length; start += 1000) file.update(bytes.subarray(start, start + 1000));
  return [hashing.chunkDigest(bytes), file.hexdigest()];
});

process.stdout.write(JSON.stringify({
  paths: cases.paths.map((path) => outcome(() => checkPath(path))),
  messages: cases.messages.map((text) => outcome(() => parseMessage(text))),
  codes: cases.codes.map((text) => [normalizeCode(text), isValidCode(normalizeCode(text))]),
  texts: cases.texts.map((text) => escapeText(text)),
  digests,
}));
