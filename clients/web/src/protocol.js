// The relay wire protocol, version 1, for the browser: message rules, path checks and the chunk-stream check.
//
// This mirrors relay/protocol.py; docs/protocol.md is the specification of both. Nothing here touches the
// DOM or a socket: functions take already-received frames and return values, or throw a ProtocolError that
// names the error code to report. Everything that comes from the wire is hostile input.

export const PROTOCOL_VERSION = 1;
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
export const DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024;
export const ACK_INTERVAL = 8 * 1024 * 1024;
export const MAX_FILES = 100_000;
export const MAX_TEXT = 1000;
export const MAX_SAFE_INT = Number.MAX_SAFE_INTEGER; // 2**53 - 1
export const CLOSE_NORMAL = 1000;

/** Error code -> WebSocket close code (docs/protocol.md section 5). */
export const CLOSE_CODES = Object.freeze({
  going_away: 1001,
  message_too_big: 1009,
  internal_error: 1011,
  bad_request: 4000,
  unsupported_version: 4001,
  malformed_message: 4002,
  unknown_type: 4003,
  unexpected_message: 4004,
  unsafe_path: 4005,
  room_not_found: 4404,
  room_full: 4409,
  room_taken: 4410,
  checksum_mismatch: 4020,
  size_mismatch: 4021,
  disk_full: 4022,
  file_exists: 4023,
  write_failed: 4024,
  peer_left: 4030,
  cancelled: 4031,
  declined: 4032,
  pairing_timeout: 4040,
  idle_timeout: 4041,
  handshake_timeout: 4042,
  offer_timeout: 4043,
  unauthorized: 4401,
  forbidden_origin: 4403,
  too_many_rooms: 4429,
  too_many_connections: 4430,
  rate_limited: 4431,
  transfer_too_large: 4413,
});

const BY_CLOSE_CODE = new Map(Object.entries(CLOSE_CODES).map(([code, close]) => [close, code]));

/** The error code a close code stands for, or null. */
export function errorCodeOfClose(closeCode) {
  return BY_CLOSE_CODE.get(closeCode) ?? null;
}

/** The other side broke the protocol; `code` is the error code to report (and so the close code). */
export class ProtocolError extends Error {
  constructor(message, code = "malformed_message") {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }

  get closeCode() {
    return CLOSE_CODES[this.code];
  }
}

const malformed = (message) => new ProtocolError(message, "malformed_message");
const unexpected = (message) => new ProtocolError(message, "unexpected_message");
const unsafe = (message) => new ProtocolError(message, "unsafe_path");

// --- text shown to people ----------------------------------------------------------------------------------

// Control characters (Unicode category Cc), the line/paragraph separators, and format characters (Cf, which
// include the bidi overrides that can make "exe.txt" look like "txt.exe").
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/u;
const SHOWN_ESCAPE_RE = /[\p{Cc}\p{Cf}\u2028\u2029]/gu;

/** Make wire text safe to show: control and bidi-override characters become visible escapes like Python's. */
export function escapeText(text) {
  return String(text).replace(SHOWN_ESCAPE_RE, (char) => {
    const cp = char.codePointAt(0);
    if (cp === 0x09) return "\\t";
    if (cp === 0x0a) return "\\n";
    if (cp === 0x0d) return "\\r";
    if (cp <= 0xff) return "\\x" + cp.toString(16).padStart(2, "0");
    if (cp <= 0xffff) return "\\u" + cp.toString(16).padStart(4, "0");
    return "\\U" + cp.toString(16).padStart(8, "0");
  });
}

// --- room codes --------------------------------------------------------------------------------------------

const ROOM_CODE_RE = /^[a-z0-9][a-z0-9-]{0,127}$/;

/** Turn what a person typed into a room code: lower case, spaces / `_` / `.` become `-`. */
export function normalizeCode(text) {
  return String(text).trim().toLowerCase().replace(/[\s_.]+/gu, "-").replace(/^-+|-+$/g, "");
}

export function isValidCode(code) {
  return ROOM_CODE_RE.test(code);
}

// --- paths -------------------------------------------------------------------------------------------------

const WINDOWS_RESERVED = new Set(["con", "prn", "aux", "nul"]);
for (let i = 1; i <= 9; i++) {
  WINDOWS_RESERVED.add(`com${i}`);
  WINDOWS_RESERVED.add(`lpt${i}`);
}
const WINDOWS_FORBIDDEN_RE = /[<>:"|?*\\]/;
const utf8 = new TextEncoder();

const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function isWellFormed(text) {
  return typeof text.isWellFormed === "function" ? text.isWellFormed() : !LONE_SURROGATE_RE.test(text);
}

function utf8Length(text) {
  return utf8.encode(text).length;
}

/**
 * Return `path` if it is a safe relative POSIX path for a receiver to create, else throw (unsafe_path).
 * Same rules as relay.protocol.check_path: nothing that could land outside the receiver's folder, hide as
 * something else on screen, or mean something special on Windows.
 */
export function checkPath(path) {
  if (typeof path !== "string") throw malformed("a path must be a string");
  const shown = escapeText(path);
  if (path === "") throw unsafe("an empty path was offered");
  if (!isWellFormed(path)) throw unsafe(`path is not valid Unicode: ${shown}`);
  if (utf8Length(path) > 4096) throw unsafe(`path too long: ${shown.slice(0, 80)}...`);
  if (path.startsWith("/")) throw unsafe(`absolute path refused: ${shown}`);
  if (CONTROL_RE.test(path)) throw unsafe(`control character in path refused: ${shown}`);
  const forbidden = path.match(WINDOWS_FORBIDDEN_RE);
  if (forbidden) throw unsafe(`character '${forbidden[0]}' in path refused: ${shown}`);
  for (const segment of path.split("/")) {
    if (segment === "" || segment === "." || segment === "..") {
      throw unsafe(`empty, '.' or '..' segment refused: ${shown}`);
    }
    if (utf8Length(segment) > 255) throw unsafe(`path segment too long: ${shown.slice(0, 80)}...`);
    if (segment.endsWith(".") || segment.endsWith(" ")) {
      throw unsafe(`segment ending in a dot or space refused: ${shown}`);
    }
    const stem = segment.split(".", 1)[0].replace(/ +$/, "").toLowerCase();
    if (WINDOWS_RESERVED.has(stem)) throw unsafe(`Windows-reserved name refused: ${shown}`);
  }
  return path;
}

// Python compares paths with str.casefold(); upper- then lower-casing gives the same folding for the cases
// that matter here (ASCII, accents, German sharp s).
function foldCase(text) {
  return text.toUpperCase().toLowerCase();
}

/** Refuse duplicate paths and a file that is also a parent folder of another entry. */
export function checkLayout(files, dirs) {
  const filePaths = new Set();
  let total = 0;
  for (const entry of files) {
    const key = foldCase(entry.path);
    if (filePaths.has(key)) throw unsafe(`path offered twice: ${escapeText(entry.path)}`);
    filePaths.add(key);
    total += entry.size;
  }
  if (total > MAX_SAFE_INT) throw malformed("total size too large");
  for (const path of [...files.map((entry) => entry.path), ...dirs]) {
    const parts = foldCase(path).split("/");
    for (let depth = 1; depth < parts.length; depth++) {
      if (filePaths.has(parts.slice(0, depth).join("/"))) {
        throw unsafe(`a file is also used as a folder: ${escapeText(path)}`);
      }
    }
  }
}

// --- fields ------------------------------------------------------------------------------------------------

// JSON.parse cannot tell 1 from 1.0, so "integer" here means a Number with no fraction part; Python would
// also refuse 1.0. Nothing a correct peer sends depends on the difference.
function intField(value, name, minimum = 0, maximum = MAX_SAFE_INT) {
  if (typeof value !== "number" || !Number.isInteger(value) || value < minimum || value > maximum) {
    throw malformed(`field '${name}' must be an integer from ${minimum} to ${maximum}`);
  }
  return value;
}

function strField(value, name, maximum = MAX_TEXT) {
  if (typeof value !== "string" || [...value].length > maximum) {
    throw malformed(`field '${name}' must be a string of at most ${maximum} characters`);
  }
  return value;
}

const HEX_RE = /^[0-9a-f]+$/;

function hexField(value, name, digits) {
  if (typeof value !== "string" || value.length !== digits || !HEX_RE.test(value)) {
    throw malformed(`field '${name}' must be ${digits} lower-case hex digits`);
  }
  return value;
}

function optionalPeer(data) {
  return data.peer === undefined || data.peer === null ? null : intField(data.peer, "peer");
}

function roleField(value) {
  if (value !== "send" && value !== "receive") throw malformed("field 'role' must be 'send' or 'receive'");
  return value;
}

// --- messages ----------------------------------------------------------------------------------------------

function parseOffer(data) {
  const files = data.files;
  const dirs = data.dirs === undefined ? [] : data.dirs;
  if (!Array.isArray(files) || files.length > MAX_FILES) {
    throw malformed(`field 'files' must be a list of at most ${MAX_FILES} entries`);
  }
  if (!Array.isArray(dirs) || dirs.length > MAX_FILES) {
    throw malformed(`field 'dirs' must be a list of at most ${MAX_FILES} entries`);
  }
  const entries = files.map((item) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) {
      throw malformed("each entry of 'files' must be an object");
    }
    return { path: checkPath(item.path), size: intField(item.size, "size") };
  });
  const checkedDirs = dirs.map((dir) => checkPath(dir));
  const chunkSize = intField(data.chunk_size === undefined ? DEFAULT_CHUNK_SIZE : data.chunk_size, "chunk_size", 1);
  checkLayout(entries, checkedDirs);
  return { type: "offer", files: entries, dirs: checkedDirs, chunk_size: chunkSize };
}

/** Per type: build the checked message from the parsed JSON object. Unknown extra fields are dropped. */
const PARSERS = {
  hello: (d) => ({
    type: "hello",
    version: intField(d.version, "version"),
    role: roleField(d.role),
    peer: intField(d.peer, "peer"),
    receivers: intField(d.receivers, "receivers", 1),
    max_message: intField(d.max_message, "max_message", 1),
  }),
  peer_joined: (d) => ({
    type: "peer_joined",
    peer: intField(d.peer, "peer"),
    joined: intField(d.joined, "joined"),
    receivers: intField(d.receivers, "receivers"),
  }),
  paired: (d) => ({ type: "paired", receivers: intField(d.receivers, "receivers") }),
  offer: parseOffer,
  accept: (d) => ({ type: "accept", peer: optionalPeer(d) }),
  decline: (d) => ({ type: "decline", reason: strField(d.reason ?? "", "reason"), peer: optionalPeer(d) }),
  start: () => ({ type: "start" }),
  chunk: (d) => ({
    type: "chunk",
    file: intField(d.file, "file"),
    offset: intField(d.offset, "offset"),
    size: intField(d.size, "size", 1),
    xxh3_64: hexField(d.xxh3_64, "xxh3_64", 16),
  }),
  file_done: (d) => ({
    type: "file_done",
    file: intField(d.file, "file"),
    size: intField(d.size, "size"),
    xxh3_128: hexField(d.xxh3_128, "xxh3_128", 32),
  }),
  done: () => ({ type: "done" }),
  ack: (d) => ({ type: "ack", file: intField(d.file, "file"), offset: intField(d.offset, "offset"), peer: optionalPeer(d) }),
  file_ok: (d) => ({ type: "file_ok", file: intField(d.file, "file"), peer: optionalPeer(d) }),
  verified: (d) => ({ type: "verified", peer: optionalPeer(d) }),
  complete: () => ({ type: "complete" }),
  cancel: (d) => ({ type: "cancel", reason: strField(d.reason ?? "", "reason"), peer: optionalPeer(d) }),
  error: (d) => {
    const code = strField(d.code, "code", 64);
    if (!Object.hasOwn(CLOSE_CODES, code)) throw malformed(`unknown error code '${escapeText(code)}'`);
    return { type: "error", code, message: strField(d.message ?? "", "message"), peer: optionalPeer(d) };
  },
  peer_left: (d) => ({ type: "peer_left", peer: intField(d.peer, "peer"), role: roleField(d.role) }),
};

/** Parse one text frame into its checked message object, or throw a ProtocolError. */
export function parseMessage(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw malformed("text frame is not valid JSON");
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw malformed("a control message must be a JSON object");
  }
  if (typeof data.type !== "string") throw malformed("a control message needs a string field 'type'");
  const parse = Object.hasOwn(PARSERS, data.type) ? PARSERS[data.type] : null;
  if (parse === null) throw new ProtocolError(`unknown message type '${escapeText(data.type.slice(0, 64))}'`, "unknown_type");
  return parse(data);
}

/** Build an offer message for local files, checking it by the same rules a receiver will apply. */
export function makeOffer(files, dirs = [], chunkSize = DEFAULT_CHUNK_SIZE) {
  const entries = files.map((entry) => ({ path: checkPath(entry.path), size: intField(entry.size, "size") }));
  const checkedDirs = dirs.map((dir) => checkPath(dir));
  checkLayout(entries, checkedDirs);
  return { type: "offer", files: entries, dirs: checkedDirs, chunk_size: chunkSize };
}

/** Serialise a message for a text frame, dropping null fields like relay.protocol.Message.to_json. */
export function encodeMessage(message) {
  const out = {};
  for (const [key, value] of Object.entries(message)) {
    if (value !== null && value !== undefined) out[key] = value;
  }
  return JSON.stringify(out);
}

/** Cut a reason or message to the protocol's 1,000 characters. */
export function clipText(text) {
  return [...String(text)].slice(0, MAX_TEXT).join("");
}

// --- the stream of one transfer ----------------------------------------------------------------------------

/**
 * Follows the chunk stream of one offer and refuses anything that breaks section 3's rules, like
 * relay.protocol.TransferCheck with hash_files. `hashing` supplies chunkDigest(bytes) and newFileDigest().
 * Feed it chunk(header), payload(bytes), fileDone(message) and done() in wire order.
 */
export class TransferCheck {
  constructor(offer, hashing, maxChunk = DEFAULT_MAX_MESSAGE) {
    this.offer = offer;
    this.hashing = hashing;
    this.maxChunk = maxChunk;
    this.fileIndex = 0;
    this.offset = 0;
    this.pending = null;
    this.finished = false;
    this.bytesDone = 0;
    this.fileDigest = hashing.newFileDigest();
  }

  chunk(header) {
    if (this.pending !== null) throw unexpected("a chunk header arrived where its payload was expected");
    this.#checkOpen();
    if (header.file !== this.fileIndex) {
      throw unexpected(`chunk for file ${header.file} while file ${this.fileIndex} is being sent`);
    }
    if (header.offset !== this.offset) throw unexpected(`chunk at offset ${header.offset}, expected ${this.offset}`);
    const limit = Math.min(this.offer.chunk_size, this.maxChunk);
    if (header.size > limit) {
      throw new ProtocolError(`chunk of ${header.size} bytes is over the chunk size ${limit}`, "size_mismatch");
    }
    if (header.offset + header.size > this.offer.files[this.fileIndex].size) {
      throw new ProtocolError(`chunk runs past the end of file ${this.fileIndex}`, "size_mismatch");
    }
    this.pending = header;
  }

  /** Check a binary frame (Uint8Array) against its header; return the header it belongs to. */
  payload(bytes) {
    const header = this.pending;
    if (header === null) throw unexpected("binary frame without a chunk header");
    if (bytes.length !== header.size) {
      throw new ProtocolError(`payload of ${bytes.length} bytes, header said ${header.size}`, "size_mismatch");
    }
    if (this.hashing.chunkDigest(bytes) !== header.xxh3_64) {
      throw new ProtocolError(
        `chunk at offset ${header.offset} of file ${header.file} failed its xxh3_64 check`,
        "checksum_mismatch",
      );
    }
    this.fileDigest.update(bytes);
    this.pending = null;
    this.offset += header.size;
    this.bytesDone += header.size;
    return header;
  }

  fileDone(message) {
    if (this.pending !== null) throw unexpected("file_done arrived where a payload was expected");
    this.#checkOpen();
    if (message.file !== this.fileIndex) {
      throw unexpected(`file_done for file ${message.file} while file ${this.fileIndex} is open`);
    }
    const size = this.offer.files[this.fileIndex].size;
    if (message.size !== size || this.offset !== size) {
      throw new ProtocolError(`file ${this.fileIndex} ended at ${this.offset} bytes, offer said ${size}`, "size_mismatch");
    }
    if (this.fileDigest.hexdigest() !== message.xxh3_128) {
      throw new ProtocolError(
        `file ${escapeText(this.offer.files[this.fileIndex].path)} failed its xxh3_128 check`,
        "checksum_mismatch",
      );
    }
    this.fileDigest = this.hashing.newFileDigest();
    this.fileIndex += 1;
    this.offset = 0;
  }

  done() {
    if (this.pending !== null || this.fileIndex !== this.offer.files.length) {
      throw unexpected("done arrived before every file was finished");
    }
    this.finished = true;
  }

  #checkOpen() {
    if (this.fileIndex >= this.offer.files.length) throw unexpected("data after the last offered file");
  }
}
