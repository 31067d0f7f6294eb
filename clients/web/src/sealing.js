// Sealed JSON on a pair's control channel (docs/protocol.md section 8.3): the offer, the stream's plan, a file's
// SHA-256, a decline's reason. Both ends count the messages of each direction, so every sealed message must be
// opened in the order it was sent, or the next one fails to open (Tampered).

import { ProtocolError, fromBase64, toBase64 } from "./protocol.js";
import { backendName } from "./crypto.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Seal `value` as UTF-8 JSON; returns the base64 text for a message's `data` field. */
export async function sealJson(channel, value) {
  return toBase64(await channel.seal(encoder.encode(JSON.stringify(value))));
}

/** Open a sealed JSON value (Tampered if it does not authenticate); a value that is not JSON is malformed. */
export async function openJson(channel, text) {
  const plain = await channel.open(fromBase64(text));
  try {
    return JSON.parse(decoder.decode(plain));
  } catch {
    throw new ProtocolError("a sealed message is not JSON", "malformed_message");
  }
}

/** True where encryption runs in JavaScript (no WebCrypto: a plain-http origin other than localhost). */
export function slowCrypto() {
  return backendName() !== "webcrypto";
}
