// End-to-end encryption for protocol v2, the page's side: the same codes, PAKE, key schedule, sealed control
// messages and chunk stream as clients/crypto.py (docs/design/protocol-v2.md is the specification, and
// tests/web/test_crypto_js.py checks the two byte for byte). No I/O.
//
// Group arithmetic comes from @noble/curves (Ed25519), SPAKE2's hashing from @noble/hashes; AES-256-GCM, HKDF
// and HMAC from WebCrypto where the page has it (a secure context: https or localhost). On a plain-http origin
// WebCrypto is missing, and the same operations run on @noble/ciphers / @noble/hashes (audited, pure JS, slower):
// see `defaultBackend` and `backendName`.
//
// Errors (all extend CryptoError, each with a `code` string):
//   InvalidCode      what a person typed is not <nameplate>-<words>
//   LimitExceeded    a counter or offset beyond the nonce layout
//   BadPakeMessage   the peer's PAKE message is malformed, not a prime-order element, or our own
//   WrongCode        key confirmation failed: the other side used another code
//   Tampered         a sealed message or chunk did not authenticate where it was expected
//   Truncated        (a Tampered) a file or stream ended before its authenticated last chunk

import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { hkdf as nobleHkdf } from "@noble/hashes/hkdf.js";
import { hmac as nobleHmac } from "@noble/hashes/hmac.js";
import { gcm } from "@noble/ciphers/aes.js";

export const LABEL = "relay-v2";
export const KEY_SIZE = 32;
export const TAG_SIZE = 16;
export const NONCE_SIZE = 12;
export const EPOCH_SALT_SIZE = 32;
export const PAKE_MESSAGE_SIZE = 33;
export const CONFIRMATION_SIZE = 32;
export const RESYNC_HALF_SIZE = 16;
export const SEALED_CONTENT_KEY_SIZE = KEY_SIZE + TAG_SIZE;
export const MAX_CODE_LENGTH = 128;
export const MAX_FILES = 2 ** 32;
export const MAX_CHUNKS_PER_FILE = 2n ** 56n;

export const SENDER = "sender";
export const RECEIVER = "receiver";

const CODE_RE = /^([0-9]{1,8})-([a-z0-9]+(?:-[a-z0-9]+)*)$/;
// The Unicode White_Space characters, spelled out so that Python's `\s` and JavaScript's `\s` (which differ on
// U+001C..U+001F and U+FEFF) cannot make the two normalisations disagree.
const SEPARATORS_RE =
  /[\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000_.-]+/gu;

// --- errors --------------------------------------------------------------------------------------------------

export class CryptoError extends Error {
  constructor(message, code = "crypto_error") {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}
export class InvalidCode extends CryptoError {
  constructor(message) { super(message, "invalid_code"); }
}
export class LimitExceeded extends CryptoError {
  constructor(message) { super(message, "limit_exceeded"); }
}
export class BadPakeMessage extends CryptoError {
  constructor(message) { super(message, "bad_pake_message"); }
}
export class WrongCode extends CryptoError {
  constructor(message = "the code was wrong; nothing was sent; start again with a new code") {
    super(message, "wrong_code");
  }
}
export class Tampered extends CryptoError {
  constructor(message, code = "tampered") { super(message, code); }
}
export class Truncated extends Tampered {
  constructor(message) { super(message, "truncated"); }
}

// --- bytes ---------------------------------------------------------------------------------------------------

const encoder = new TextEncoder();
const utf8 = (text) => encoder.encode(text);
const EMPTY = new Uint8Array(0);

export function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Length-prefix (4 bytes, big-endian), as clients/crypto.py `_lv`. */
function lv(bytes) {
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, bytes.length);
  out.set(bytes, 4);
  return out;
}

function bigFromBytesBE(bytes) {
  let value = 0n;
  for (const byte of bytes) value = (value << 8n) | BigInt(byte);
  return value;
}

function bytesLE(value, length) {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    out[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return out;
}

/** Compare two byte arrays in time that depends only on their lengths. */
export function equalBytes(a, b) {
  if (!(a instanceof Uint8Array) || !(b instanceof Uint8Array) || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function randomBytes(length) {
  return globalThis.crypto.getRandomValues(new Uint8Array(length));
}

// --- backends: AES-256-GCM, HKDF-SHA-256, HMAC-SHA-256 -------------------------------------------------------

/** WebCrypto (crypto.subtle): native AES-GCM; present only in secure contexts. */
export function webCryptoBackend(subtle = globalThis.crypto?.subtle) {
  if (!subtle) throw new CryptoError("WebCrypto is not available here (not a secure context)", "no_webcrypto");
  return {
    name: "webcrypto",
    async aead(key) {
      const handle = await subtle.importKey("raw", key, "AES-GCM", false, ["encrypt", "decrypt"]);
      return {
        async seal(nonce, aad, plaintext) {
          const params = { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 };
          return new Uint8Array(await subtle.encrypt(params, handle, plaintext));
        },
        async open(nonce, aad, sealed) {
          const params = { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 };
          try {
            return new Uint8Array(await subtle.decrypt(params, handle, sealed));
          } catch {
            return null;
          }
        },
      };
    },
    async hkdf(ikm, salt, info, length = KEY_SIZE) {
      const handle = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
      const bits = await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, handle, length * 8);
      return new Uint8Array(bits);
    },
    async hmac(key, data) {
      const handle = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      return new Uint8Array(await subtle.sign("HMAC", handle, data));
    },
  };
}

/** @noble/ciphers + @noble/hashes: the same operations in JavaScript, for origins without WebCrypto. */
export const nobleBackend = Object.freeze({
  name: "noble",
  async aead(key) {
    const keyCopy = Uint8Array.from(key);
    return {
      async seal(nonce, aad, plaintext) {
        return gcm(keyCopy, nonce, aad).encrypt(plaintext);
      },
      async open(nonce, aad, sealed) {
        try {
          return gcm(keyCopy, nonce, aad).decrypt(sealed);
        } catch {
          return null;
        }
      },
    };
  },
  async hkdf(ikm, salt, info, length = KEY_SIZE) {
    return nobleHkdf(sha256, ikm, salt, info, length);
  },
  async hmac(key, data) {
    return nobleHmac(sha256, key, data);
  },
});

/** WebCrypto when the page is in a secure context, the noble fallback otherwise (say so with backendName). */
export function defaultBackend() {
  return globalThis.crypto?.subtle ? webCryptoBackend(globalThis.crypto.subtle) : nobleBackend;
}

/** "webcrypto" or "noble": which backend defaultBackend() picks here (the page says when it is the slow one). */
export function backendName() {
  return defaultBackend().name;
}

// --- codes ---------------------------------------------------------------------------------------------------

/** NFKC, lower case, runs of white space, "_", "." and "-" become one "-", trimmed: as clients/crypto.py. */
export function normalizeCode(text) {
  return String(text).normalize("NFKC").toLowerCase().replace(SEPARATORS_RE, "-").replace(/^-+|-+$/g, "");
}

/** Split a normalised code into {nameplate, words}; InvalidCode if it has another form. */
export function splitCode(code) {
  if (code.length > MAX_CODE_LENGTH) throw new InvalidCode(`a code has at most ${MAX_CODE_LENGTH} characters`);
  const match = CODE_RE.exec(code);
  if (!match) throw new InvalidCode("a code looks like 42-ocean-table-actor: the room number, then the secret words");
  return { nameplate: match[1], words: match[2] };
}

/** `count` words drawn with crypto.getRandomValues, joined by "-" (unbiased: rejection sampling). */
export function generateWords(wordlist, count = 3) {
  if (count < 1 || wordlist.length < 2 || wordlist.length > 65536) throw new RangeError("bad word list or count");
  const limit = 65536 - (65536 % wordlist.length);
  const words = [];
  while (words.length < count) {
    for (const value of globalThis.crypto.getRandomValues(new Uint16Array(count))) {
      if (value < limit && words.length < count) words.push(wordlist[value % wordlist.length]);
    }
  }
  return words.join("-");
}

/** The PAKE password: label, nameplate and words, each length-prefixed (as clients/crypto.py). */
export function pakePassword(nameplate, words) {
  return concatBytes(lv(utf8(`${LABEL} code`)), lv(utf8(nameplate)), lv(utf8(words)));
}

// --- SPAKE2, as python-spake2 0.9 computes it (Ed25519 group, asymmetric sides A and B) ----------------------

const Point = ed25519.Point;
const ORDER = Point.Fn.ORDER;
const FIELD = Point.Fp.ORDER;

/** python-spake2's password_to_scalar: HKDF-SHA-256(pw, salt "", info "SPAKE2 pw", 48 bytes), big-endian, mod L. */
export function spake2PasswordScalar(password) {
  return bigFromBytesBE(nobleHkdf(sha256, password, EMPTY, utf8("SPAKE2 pw"), 48)) % ORDER;
}

/**
 * python-spake2's arbitrary_element: y = HKDF(seed) mod p, then y, y+1, ... until y (with even x) decodes to a
 * curve point whose 8-fold multiple is not the identity. Decoding and multiplying are @noble/curves'.
 */
export function spake2ArbitraryElement(seed) {
  const y = bigFromBytesBE(nobleHkdf(sha256, seed, EMPTY, utf8("SPAKE2 arbitrary element"), 48)) % FIELD;
  for (let plus = 0n; plus < 1000n; plus++) {
    let point;
    try {
      point = Point.fromBytes(bytesLE((y + plus) % FIELD, 32));
    } catch {
      continue; // not on the curve (about half of all y)
    }
    const cleared = point.clearCofactor();
    if (!cleared.is0()) return cleared;
  }
  throw new CryptoError("no SPAKE2 element found for the seed");
}

const SPAKE2_M = spake2ArbitraryElement(utf8("M"));
const SPAKE2_N = spake2ArbitraryElement(utf8("N"));
export const spake2Params = Object.freeze({ M: SPAKE2_M.toBytes(), N: SPAKE2_N.toBytes() });

/** python-spake2's random_scalar: 64 bytes of entropy, big-endian, mod L. */
function spake2RandomScalar(entropy) {
  return bigFromBytesBE(entropy(64)) % ORDER;
}

/** One side ("A" or "B") of python-spake2's SPAKE2_A/SPAKE2_B; `entropy(n)` returns n random bytes. */
export class Spake2 {
  constructor(side, password, idA, idB, entropy = randomBytes) {
    if (side !== "A" && side !== "B") throw new RangeError("side is A or B");
    this.side = side;
    this.password = password;
    this.idA = idA;
    this.idB = idB;
    this.pwScalar = spake2PasswordScalar(password);
    this.xyScalar = spake2RandomScalar(entropy);
    if (this.pwScalar === 0n || this.xyScalar === 0n) throw new CryptoError("degenerate SPAKE2 scalar");
    const blinding = side === "A" ? SPAKE2_M : SPAKE2_N;
    this.element = Point.BASE.multiply(this.xyScalar).add(blinding.multiply(this.pwScalar)).toBytes();
    this.finished = false;
  }

  /** The message to send: the side byte and the 32-byte blinded element. */
  start() {
    return concatBytes(utf8(this.side), this.element);
  }

  /** The 32-byte shared key from the peer's message; BadPakeMessage if it is not a valid one. */
  finish(inbound) {
    if (this.finished) throw new BadPakeMessage("a PAKE takes one message: one guess per code");
    this.finished = true;
    if (!(inbound instanceof Uint8Array) || inbound.length !== PAKE_MESSAGE_SIZE) {
      throw new BadPakeMessage(`a PAKE message is ${PAKE_MESSAGE_SIZE} bytes`);
    }
    if (inbound[0] !== (this.side === "A" ? 0x42 : 0x41)) throw new BadPakeMessage("the PAKE message comes from the wrong side");
    const message = inbound.subarray(1);
    let peer;
    try {
      peer = Point.fromBytes(message);
    } catch {
      throw new BadPakeMessage("the PAKE message is not a point on the curve");
    }
    if (peer.is0() || !peer.isTorsionFree()) throw new BadPakeMessage("the PAKE message is not in the prime-order group");
    if (equalBytes(peer.toBytes(), this.element)) throw new BadPakeMessage("the PAKE message is our own, reflected");
    const unblinding = this.side === "A" ? SPAKE2_N : SPAKE2_M;
    const shared = peer.add(unblinding.multiply(ORDER - this.pwScalar)).multiply(this.xyScalar);
    const [xMessage, yMessage] = this.side === "A" ? [this.element, message] : [message, this.element];
    return sha256(concatBytes(
      sha256(this.password), sha256(this.idA), sha256(this.idB), xMessage, yMessage, shared.toBytes(),
    ));
  }
}

// --- the PAKE between the sender and one receiver ------------------------------------------------------------

const SENDER_ID = utf8(`${LABEL} sender`);
const RECEIVER_ID = utf8(`${LABEL} receiver`);

/** One side of one exchange (the sender is SPAKE2 side A); as clients/crypto.py `Pake`. */
export class Pake {
  constructor(role, code, { entropy = randomBytes, backend = defaultBackend() } = {}) {
    if (role !== SENDER && role !== RECEIVER) throw new RangeError("role is sender or receiver");
    const { nameplate, words } = splitCode(code);
    this.role = role;
    this.nameplate = nameplate;
    this.backend = backend;
    this.spake = new Spake2(role === SENDER ? "A" : "B", pakePassword(nameplate, words), SENDER_ID, RECEIVER_ID, entropy);
    this.outbound = this.spake.start();
  }

  /** The pair's keys from the peer's message; BadPakeMessage if it is not one. */
  async finish(inbound) {
    const shared = this.spake.finish(inbound);
    const [senderMessage, receiverMessage] = this.role === SENDER ? [this.outbound, inbound] : [inbound, this.outbound];
    return PairKeys.derive(shared, transcriptHash(this.nameplate, senderMessage, receiverMessage), this.backend);
  }
}

/** SHA-256 over the label, the nameplate and both PAKE messages, each length-prefixed. */
export function transcriptHash(nameplate, senderMessage, receiverMessage) {
  return sha256(concatBytes(lv(utf8(`${LABEL} transcript`)), lv(utf8(nameplate)), lv(senderMessage), lv(receiverMessage)));
}

const PAIR_LABELS = {
  confirmSender: "confirm sender",
  confirmReceiver: "confirm receiver",
  controlSenderToReceiver: "control sender to receiver",
  controlReceiverToSender: "control receiver to sender",
  contentKeyWrap: "content key wrap",
  resumeSender: "resume sender",
  resumeReceiver: "resume receiver",
};

/** Every key one pair derives from its PAKE key (HKDF-SHA-256, salt = transcript hash), as clients/crypto.py. */
export class PairKeys {
  constructor(transcript, keys, backend) {
    this.transcript = transcript;
    this.keys = keys;
    this.backend = backend;
  }

  static async derive(shared, transcript, backend = defaultBackend()) {
    const keys = {};
    for (const [name, label] of Object.entries(PAIR_LABELS)) {
      keys[name] = await backend.hkdf(shared, transcript, utf8(`${LABEL} ${label}`));
    }
    return new PairKeys(transcript, Object.freeze(keys), backend);
  }

  toJSON() {
    return "PairKeys(<secret>)";
  }

  /** The key-confirmation MAC that `role` sends. */
  async confirmation(role) {
    const key = role === SENDER ? this.keys.confirmSender : this.keys.confirmReceiver;
    return this.backend.hmac(key, concatBytes(utf8(`${LABEL} confirm ${role}`), this.transcript));
  }

  /** Check (in constant time) the MAC that `role` sent; WrongCode if it differs. */
  async checkConfirmation(role, mac) {
    if (!equalBytes(mac, await this.confirmation(role))) throw new WrongCode();
  }

  /**
   * The sealed party-to-party channel as seen by `role`. `resync` is empty on the first connection; after a
   * reconnection it is the sender's 16 fresh random bytes then the receiver's (as clients/crypto.py).
   */
  async controlChannel(role, resync = EMPTY) {
    let { controlSenderToReceiver: s2r, controlReceiverToSender: r2s } = this.keys;
    if (resync.length) {
      if (resync.length !== 2 * RESYNC_HALF_SIZE) throw new RangeError("resync is the sender's half, then the receiver's");
      const info = utf8(`${LABEL} control resync`);
      [s2r, r2s] = [await this.backend.hkdf(s2r, resync, info), await this.backend.hkdf(r2s, resync, info)];
    }
    const [send, receive] = role === SENDER ? [s2r, r2s] : [r2s, s2r];
    return new ControlChannel(await this.backend.aead(send), await this.backend.aead(receive));
  }

  async sealContentKey(contentKey) {
    if (contentKey.length !== KEY_SIZE) throw new RangeError("a content key is 32 bytes");
    const aead = await this.backend.aead(this.keys.contentKeyWrap);
    return aead.seal(new Uint8Array(NONCE_SIZE), this.#contentKeyAad(), contentKey);
  }

  async openContentKey(sealed) {
    if (!(sealed instanceof Uint8Array) || sealed.length !== SEALED_CONTENT_KEY_SIZE) {
      throw new Tampered(`a sealed content key is ${SEALED_CONTENT_KEY_SIZE} bytes`);
    }
    const aead = await this.backend.aead(this.keys.contentKeyWrap);
    const key = await aead.open(new Uint8Array(NONCE_SIZE), this.#contentKeyAad(), sealed);
    if (key === null) throw new Tampered("the sealed content key did not authenticate");
    return key;
  }

  resumeToken(role) {
    return role === SENDER ? this.keys.resumeSender : this.keys.resumeReceiver;
  }

  #contentKeyAad() {
    return concatBytes(utf8(`${LABEL} content key`), this.transcript);
  }
}

// --- resume: seat tokens (docs/protocol.md section 10) ---------------------------------------------------------

const RESUME_NEXT_INFO = utf8(`${LABEL} resume next`);

/** What the relay keeps of a resume token: hex(SHA-256(token)), so the relay cannot take the seat itself. */
export function resumeVerifier(token) {
  return Array.from(sha256(token), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The token after `token` (each is good once): HKDF-SHA-256(token, salt "", info "relay-v2 resume next"). */
export async function nextResumeToken(token, backend = defaultBackend()) {
  return backend.hkdf(token, EMPTY, RESUME_NEXT_INFO);
}

/** This party's fresh random half of a reconnection's resync salt. */
export function newResyncHalf() {
  return randomBytes(RESYNC_HALF_SIZE);
}

export function newContentKey() {
  return randomBytes(KEY_SIZE);
}

// --- control messages ----------------------------------------------------------------------------------------

const CONTROL_AAD = utf8(`${LABEL} control`);

function controlNonce(counter) {
  if (counter >= 2 ** 53) throw new LimitExceeded("too many control messages on one key");
  const nonce = new Uint8Array(NONCE_SIZE);
  new DataView(nonce.buffer).setBigUint64(4, BigInt(counter));
  return nonce;
}

/** AES-256-GCM per direction with an implicit 64-bit counter nonce, as clients/crypto.py `ControlChannel`. */
export class ControlChannel {
  constructor(sendAead, receiveAead) {
    this.sendAead = sendAead;
    this.receiveAead = receiveAead;
    this.sent = 0;
    this.received = 0;
  }

  async seal(plaintext) {
    const nonce = controlNonce(this.sent);
    this.sent += 1;
    return this.sendAead.seal(nonce, CONTROL_AAD, plaintext);
  }

  async open(sealed) {
    const plaintext = await this.receiveAead.open(controlNonce(this.received), CONTROL_AAD, sealed);
    if (plaintext === null) throw new Tampered(`control message ${this.received} did not authenticate`);
    this.received += 1;
    return plaintext;
  }
}

// --- the data stream -----------------------------------------------------------------------------------------

export function newEpochSalt() {
  return randomBytes(EPOCH_SALT_SIZE);
}

/** HKDF-SHA-256(content key, salt = epoch salt, info = "relay-v2 data"). */
export async function dataKey(contentKey, epochSalt, backend = defaultBackend()) {
  if (contentKey.length !== KEY_SIZE || epochSalt.length !== EPOCH_SALT_SIZE) {
    throw new RangeError("a content key and an epoch salt are 32 bytes each");
  }
  return backend.hkdf(contentKey, epochSalt, utf8(`${LABEL} data`));
}

/** file (4 bytes BE) | chunk index (7 bytes BE) | last (1 byte). */
export function chunkNonce(file, chunk, last) {
  if (!Number.isInteger(file) || file < 0 || file >= MAX_FILES || !Number.isSafeInteger(chunk) || chunk < 0) {
    throw new LimitExceeded("file or chunk index beyond the nonce layout");
  }
  const nonce = new Uint8Array(NONCE_SIZE);
  const view = new DataView(nonce.buffer);
  view.setBigUint64(3, BigInt(chunk)); // bytes 3..10; byte 3 is then overwritten by the file index
  view.setUint32(0, file);
  nonce[11] = last ? 1 : 0;
  return nonce;
}

const CHUNK_LABEL = utf8(`${LABEL} chunk`);

/** label | file (4 bytes BE) | byte offset (8 bytes BE) | last (1 byte). */
export function chunkAad(file, offset, last) {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new LimitExceeded("offset beyond the safe range");
  const aad = new Uint8Array(CHUNK_LABEL.length + 13);
  aad.set(CHUNK_LABEL);
  const view = new DataView(aad.buffer);
  view.setUint32(CHUNK_LABEL.length, file);
  view.setBigUint64(CHUNK_LABEL.length + 4, BigInt(offset));
  aad[aad.length - 1] = last ? 1 : 0;
  return aad;
}

export class ChunkCipher {
  static async create(key, backend = defaultBackend()) {
    return new ChunkCipher(await backend.aead(key));
  }

  constructor(aead) {
    this.aead = aead;
  }

  async seal(file, chunk, offset, last, plaintext) {
    return this.aead.seal(chunkNonce(file, chunk, last), chunkAad(file, offset, last), plaintext);
  }

  async open(file, chunk, offset, last, sealed) {
    const plaintext = await this.aead.open(chunkNonce(file, chunk, last), chunkAad(file, offset, last), sealed);
    if (plaintext === null) {
      throw new Tampered(`chunk ${chunk} of file ${file} (offset ${offset}) did not authenticate`);
    }
    return plaintext;
  }
}

/** The chunks of one epoch, in order: segments [{file, start, end}] cut into chunkSize pieces (as Python). */
export class StreamPlan {
  constructor(segments, chunkSize) {
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) throw new RangeError("chunk size must be positive");
    const files = new Set();
    for (const { file, start, end } of segments) {
      if (!Number.isInteger(file) || file < 0 || file >= MAX_FILES) throw new LimitExceeded("file index beyond 32 bits");
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || start > end) {
        throw new LimitExceeded("segment beyond the safe range");
      }
      if (files.has(file)) throw new RangeError("a file appears twice in one epoch");
      files.add(file);
    }
    this.segments = segments.map(({ file, start, end }) => Object.freeze({ file, start, end }));
    this.chunkSize = chunkSize;
  }

  *positions() {
    for (const { file, start, end } of this.segments) {
      let offset = start;
      for (let chunk = 0; ; chunk++) {
        const length = Math.min(this.chunkSize, end - offset);
        const last = offset + length === end;
        yield { file, chunk, offset, length, last };
        if (last) break;
        offset += length;
      }
    }
  }

  chunkCount() {
    return this.segments.reduce((total, { start, end }) => total + Math.max(1, Math.ceil((end - start) / this.chunkSize)), 0);
  }

  ciphertextSize() {
    return this.segments.reduce((total, { start, end }) => total + end - start, 0) + TAG_SIZE * this.chunkCount();
  }
}

/**
 * One epoch's chunks in plan order: the position (file, chunk index, offset, last) each next chunk must have.
 * The nonce and associated data come from the position alone, so the sealer and the opener share this walk.
 */
class StreamCursor {
  constructor(cipher, plan) {
    this.cipher = cipher;
    this.iterator = plan.positions();
    this.position = this.#step();
  }

  get done() {
    return this.position === null;
  }

  // The position the next chunk must have, and move on; claimed before any await, so that several chunks may be
  // in work at once (each at its own position) while their results are used in order.
  claim() {
    const position = this.position;
    if (position !== null) this.position = this.#step();
    return position;
  }

  #step() {
    const step = this.iterator.next();
    return step.done ? null : step.value;
  }
}

/** Encrypts one epoch's chunks in plan order. */
export class StreamSealer extends StreamCursor {
  static async create(key, plan, backend = defaultBackend()) {
    return new StreamSealer(await ChunkCipher.create(key, backend), plan);
  }

  async sealNext(plaintext) {
    const position = this.position;
    if (position === null) throw new RangeError("the stream is complete");
    if (plaintext.length !== position.length) {
      throw new RangeError(`chunk ${position.chunk} of file ${position.file} is ${position.length} bytes`);
    }
    this.claim();
    return this.cipher.seal(position.file, position.chunk, position.offset, position.last, plaintext);
  }
}

/** Decrypts one epoch's chunks at their expected positions; as clients/crypto.py `StreamOpener`. */
export class StreamOpener extends StreamCursor {
  static async create(key, plan, backend = defaultBackend()) {
    return new StreamOpener(await ChunkCipher.create(key, backend), plan);
  }

  /** {file, offset, plaintext, last}; Tampered if the chunk is not the expected one. */
  async openNext(sealed) {
    const position = this.position;
    if (position === null) throw new Tampered("a chunk after the end of the stream");
    if (sealed.length !== position.length + TAG_SIZE) {
      throw new Tampered(`chunk ${position.chunk} of file ${position.file} has the wrong length`);
    }
    this.claim();
    const plaintext = await this.cipher.open(position.file, position.chunk, position.offset, position.last, sealed);
    return { file: position.file, offset: position.offset, plaintext, last: position.last };
  }

  /** Truncated if the stream stopped before its last chunk. */
  finish() {
    if (this.position !== null) {
      throw new Truncated(`file ${this.position.file} ended before its last chunk (offset ${this.position.offset})`);
    }
  }
}
