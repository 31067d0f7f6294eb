// The relay wire protocol, version 2 (end-to-end encrypted), for the browser: the messages the page sends and
// receives, the rules of the offer it finds inside a sealed message, and path checks.
//
// This mirrors relay/protocol.py; docs/protocol.md (section 8) is the specification of both. Nothing here touches
// the DOM or a socket: functions take already-received frames and return values, or throw a ProtocolError that
// names the error code to report. Everything that comes from the wire is hostile input, and so is everything a
// sealed message holds once it opened (a peer can seal anything).

export const PROTOCOL_VERSION = 2;
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
  wrong_code: 4033,
  tampered: 4025,
  resume_refused: 4034,
  dropped: 4035,
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
export const unexpected = (message) => new ProtocolError(message, "unexpected_message");
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

// --- paths -------------------------------------------------------------------------------------------------

export const MAX_PATH_BYTES = 4096;
export const MAX_SEGMENT_BYTES = 255;
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
 * Same rules as relay.protocol.check_path: nothing that could land outside the receiver's folder or hide as
 * something else on screen. Names only some file systems refuse (`aux.c`, `a:b`, `trailing.`) are legal on the
 * wire; each receiver maps what its own file system cannot store.
 */
export function checkPath(path) {
  if (typeof path !== "string") throw malformed("a path must be a string");
  const shown = escapeText(path);
  if (path === "") throw unsafe("an empty path was offered");
  if (!isWellFormed(path)) throw unsafe(`path is not valid Unicode: ${shown}`);
  if (utf8Length(path) > MAX_PATH_BYTES) throw unsafe(`path too long: ${shown.slice(0, 80)}...`);
  if (path.startsWith("/")) throw unsafe(`absolute path refused: ${shown}`);
  if (CONTROL_RE.test(path)) throw unsafe(`control character in path refused: ${shown}`);
  if (path.includes("\\")) throw unsafe(`backslash in path refused: ${shown}`);
  for (const segment of path.split("/")) {
    if (segment === "" || segment === "." || segment === "..") {
      throw unsafe(`empty, '.' or '..' segment refused: ${shown}`);
    }
    if (utf8Length(segment) > MAX_SEGMENT_BYTES) throw unsafe(`path segment too long: ${shown.slice(0, 80)}...`);
  }
  return path;
}

/**
 * The form two names are compared in, like relay.protocol.path_key: NFC after case folding. Python folds with
 * str.casefold(); upper- then lower-casing gives the same folding for the cases that matter here (ASCII,
 * accents, German sharp s).
 */
export function pathKey(path) {
  return path.normalize("NFC").toUpperCase().toLowerCase().normalize("NFC");
}

function twins(first, second) {
  return first === second ? escapeText(first) : `${escapeText(first)} and ${escapeText(second)}`;
}

export const OFFER_KINDS = Object.freeze(["files", "text", "stdin"]);
export const MAX_TEXT_OFFER = 1024 * 1024;
export const MAX_MTIME = 253_402_300_799; // 9999-12-31T23:59:59Z

/**
 * Refuse an offer whose names cannot all exist side by side in one folder, on any file system (same rules as
 * relay.protocol.Offer.check_layout): a path twice (as files, folders or one of each, compared by pathKey), a
 * file that is also a folder above another entry, one folder under two spellings; a text/stdin offer is one file.
 */
export function checkLayout(files, dirs, kind = "files") {
  if (kind !== "files") {
    if (files.length !== 1 || dirs.length !== 0) throw malformed(`a '${kind}' offer holds exactly one file and no folder`);
    if (kind === "text" && files[0].size > MAX_TEXT_OFFER) throw malformed(`a text offer is at most ${MAX_TEXT_OFFER} bytes`);
  }
  let total = 0;
  for (const entry of files) total += entry.size;
  if (total > MAX_SAFE_INT) throw malformed("total size too large");
  const fileKeys = new Map();
  for (const entry of files) {
    const key = pathKey(entry.path);
    if (fileKeys.has(key)) throw unsafe(`path offered twice: ${twins(fileKeys.get(key), entry.path)}`);
    fileKeys.set(key, entry.path);
  }
  const folderKeys = new Map();
  for (const path of dirs) {
    const key = pathKey(path);
    if (folderKeys.has(key)) throw unsafe(`folder offered twice: ${twins(folderKeys.get(key), path)}`);
    folderKeys.set(key, path);
  }
  for (const path of [...files.map((entry) => entry.path), ...dirs]) {
    const segments = path.split("/");
    for (let depth = 1; depth < segments.length; depth++) {
      const folder = segments.slice(0, depth).join("/");
      const key = pathKey(folder);
      if (!folderKeys.has(key)) folderKeys.set(key, folder);
      const spelled = folderKeys.get(key);
      if (spelled !== folder) throw unsafe(`one folder offered under two names: ${twins(spelled, folder)}`);
    }
  }
  for (const [key, path] of fileKeys) {
    if (folderKeys.has(key)) throw unsafe(`a path is both a file and a folder: ${twins(path, folderKeys.get(key))}`);
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

function fileEntry(item) {
  if (item === null || typeof item !== "object" || Array.isArray(item)) {
    throw malformed("each entry of 'files' must be an object");
  }
  const entry = { path: checkPath(item.path), size: intField(item.size, "size") };
  if (item.mtime !== undefined && item.mtime !== null) entry.mtime = intField(item.mtime, "mtime", 0, MAX_MTIME);
  const executable = item.exec === undefined ? false : item.exec;
  if (typeof executable !== "boolean") throw malformed("field 'exec' must be true or false");
  if (executable) entry.exec = true;
  return entry;
}

/**
 * Check the offer a sender sealed (the version 1 offer object: files, dirs, chunk_size, kind) with the same rules
 * as relay.protocol.Offer.from_dict; returns {files, dirs, chunk_size, kind?} or throws a ProtocolError.
 */
export function checkOffer(data) {
  if (data === null || typeof data !== "object" || Array.isArray(data)) throw malformed("the offer must be a JSON object");
  if (!encodable(data)) throw malformed("the offer holds a string that is not valid Unicode (a lone surrogate)");
  if (data.type !== "offer") throw malformed("a sealed offer is an object of type 'offer'");
  const files = data.files;
  const dirs = data.dirs === undefined ? [] : data.dirs;
  const kind = data.kind === undefined ? "files" : data.kind;
  if (!Array.isArray(files) || files.length > MAX_FILES) {
    throw malformed(`field 'files' must be a list of at most ${MAX_FILES} entries`);
  }
  if (!Array.isArray(dirs) || dirs.length > MAX_FILES) {
    throw malformed(`field 'dirs' must be a list of at most ${MAX_FILES} entries`);
  }
  if (!OFFER_KINDS.includes(kind)) throw malformed("field 'kind' must be 'files', 'text' or 'stdin'");
  const entries = files.map(fileEntry);
  const checkedDirs = dirs.map((dir) => checkPath(dir));
  const chunkSize = intField(data.chunk_size === undefined ? DEFAULT_CHUNK_SIZE : data.chunk_size, "chunk_size", 1);
  checkLayout(entries, checkedDirs, kind);
  const offer = { files: entries, dirs: checkedDirs, chunk_size: chunkSize };
  if (kind !== "files") offer.kind = kind;
  return offer;
}

// Opaque values travel as standard base64 with padding; the relay checks their decoded length, and so does the
// page (a sealed value is at least one AES-GCM tag and at most max_message bytes).
const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
export const TAG_SIZE = 16;
export const PAKE_SIZE = 33;
export const CONFIRM_SIZE = 32;
export const SEALED_KEY_SIZE = 48;
export const MAX_EPOCH = 2 ** 32 - 1;
export const RESYNC_HALF_SIZE = 16;
export const MAX_RECEIVERS_FIELD = 1000;

function b64Field(value, name, low = TAG_SIZE, high = DEFAULT_MAX_MESSAGE) {
  if (typeof value !== "string" || value.length % 4 !== 0 || value.length > 4 * Math.ceil(high / 3) || !B64_RE.test(value)) {
    throw malformed(`field '${name}' must be standard base64 of ${low} to ${high} bytes`);
  }
  const decoded = (value.length / 4) * 3 - (value.endsWith("==") ? 2 : value.endsWith("=") ? 1 : 0);
  if (decoded < low || decoded > high) throw malformed(`field '${name}' must be base64 of ${low} to ${high} bytes`);
  return value;
}

function optionalB64(value, name) {
  return value === undefined || value === null ? null : b64Field(value, name);
}

function errorCodeField(value, name) {
  const code = strField(value, name, 64);
  if (!Object.hasOwn(CLOSE_CODES, code)) throw malformed(`unknown error code '${escapeText(code)}'`);
  return code;
}

/** Decode a base64 field already checked by parseMessage. */
export function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Standard base64 with padding of `bytes`. */
export function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/**
 * Per type: build the checked message from the parsed JSON object (version 2, as the relay forwards it to a
 * party: `peer` on what comes from a receiver, never `to`). Unknown extra fields are dropped.
 */
const PARSERS = {
  hello: (d) => {
    const hello = {
      type: "hello",
      version: intField(d.version, "version"),
      role: roleField(d.role),
      peer: intField(d.peer, "peer"),
      receivers: intField(d.receivers, "receivers", 1),
      max_message: intField(d.max_message, "max_message", 1),
      nameplate: null,
    };
    if (d.nameplate !== undefined && d.nameplate !== null) {
      if (typeof d.nameplate !== "string" || !/^[0-9]{1,8}$/.test(d.nameplate)) {
        throw malformed("field 'nameplate' must be 1 to 8 decimal digits");
      }
      hello.nameplate = d.nameplate;
    }
    return hello;
  },
  peer_joined: (d) => ({
    type: "peer_joined",
    peer: intField(d.peer, "peer"),
    joined: intField(d.joined, "joined"),
    receivers: intField(d.receivers, "receivers"),
  }),
  paired: (d) => ({ type: "paired", receivers: intField(d.receivers, "receivers") }),
  pake: (d) => ({ type: "pake", data: b64Field(d.data, "data", PAKE_SIZE, PAKE_SIZE), peer: optionalPeer(d) }),
  confirm: (d) => ({ type: "confirm", data: b64Field(d.data, "data", CONFIRM_SIZE, CONFIRM_SIZE), peer: optionalPeer(d) }),
  key: (d) => ({ type: "key", data: b64Field(d.data, "data", SEALED_KEY_SIZE, SEALED_KEY_SIZE) }),
  wrong_code: () => ({ type: "wrong_code" }),
  offer: (d) => ({
    type: "offer",
    total_size: intField(d.total_size, "total_size"),
    files: intField(d.files, "files", 1, MAX_FILES),
    data: b64Field(d.data, "data"),
  }),
  accept: (d) => ({ type: "accept", data: optionalB64(d.data, "data"), peer: optionalPeer(d) }),
  decline: (d) => ({
    type: "decline",
    code: errorCodeField(d.code ?? "declined", "code"),
    data: optionalB64(d.data, "data"),
    peer: optionalPeer(d),
  }),
  start: () => ({ type: "start" }),
  stream: (d) => ({
    type: "stream",
    epoch: intField(d.epoch, "epoch", 0, MAX_EPOCH),
    chunks: intField(d.chunks, "chunks", 1),
    bytes: intField(d.bytes, "bytes", TAG_SIZE),
    data: b64Field(d.data, "data"),
  }),
  chunk: (d) => ({
    type: "chunk",
    epoch: intField(d.epoch, "epoch", 0, MAX_EPOCH),
    size: intField(d.size, "size", TAG_SIZE),
    xxh3_64: hexField(d.xxh3_64, "xxh3_64", 16),
  }),
  end: (d) => ({ type: "end", epoch: intField(d.epoch, "epoch", 0, MAX_EPOCH) }),
  ack: (d) => ({
    type: "ack", epoch: intField(d.epoch, "epoch", 0, MAX_EPOCH), chunks: intField(d.chunks, "chunks"), peer: optionalPeer(d),
  }),
  sealed: (d) => ({ type: "sealed", data: b64Field(d.data, "data"), peer: optionalPeer(d) }),
  verified: (d) => ({ type: "verified", peer: optionalPeer(d) }),
  complete: () => ({ type: "complete" }),
  cancel: (d) => ({ type: "cancel", data: optionalB64(d.data, "data"), peer: optionalPeer(d) }),
  error: (d) => ({
    type: "error", code: errorCodeField(d.code, "code"), message: strField(d.message ?? "", "message"), peer: optionalPeer(d),
  }),
  peer_left: (d) => ({ type: "peer_left", peer: intField(d.peer, "peer"), role: roleField(d.role) }),
  // Resume (docs/protocol.md section 10): a party's seat parked, a party back, a pair's fresh resync halves.
  reconnecting: (d) => ({ type: "reconnecting", peer: intField(d.peer, "peer", 0, MAX_RECEIVERS_FIELD) }),
  resumed: (d) => {
    const parked = d.parked === undefined ? [] : d.parked;
    if (!Array.isArray(parked) || parked.length > MAX_RECEIVERS_FIELD + 1) throw malformed("field 'parked' must be a list of peers");
    return {
      type: "resumed",
      peer: intField(d.peer, "peer", 0, MAX_RECEIVERS_FIELD),
      parked: parked.map((peer) => intField(peer, "parked", 0, MAX_RECEIVERS_FIELD)),
    };
  },
  resync: (d) => ({ type: "resync", half: b64Field(d.half, "half", RESYNC_HALF_SIZE, RESYNC_HALF_SIZE), peer: optionalPeer(d) }),
  // Receivers the relay dropped at its resume window's end: the transfer goes on without them.
  dropped: (d) => {
    const peers = d.peers;
    if (!Array.isArray(peers) || peers.length < 1 || peers.length > MAX_RECEIVERS_FIELD) {
      throw malformed(`field 'peers' must be a list of 1 to ${MAX_RECEIVERS_FIELD} receivers`);
    }
    const dropped = peers.map((peer) => intField(peer, "peers", 1, MAX_RECEIVERS_FIELD));
    if (new Set(dropped).size !== dropped.length) throw malformed("field 'peers' names a receiver twice");
    return { type: "dropped", peers: dropped };
  },
};

// A lone surrogate reaches a parsed string only through a \uD800-\uDFFF escape (or as itself); frames without
// either skip the walk.
const MAY_HOLD_SURROGATE_RE = /[\ud800-\udfff]|\\u[dD][89a-fA-F]/;

/** Whether every string in parsed JSON (keys included) is valid Unicode; iterative, so depth costs no stack. */
function encodable(data) {
  const pending = [data];
  while (pending.length > 0) {
    const item = pending.pop();
    if (typeof item === "string") {
      if (!isWellFormed(item)) return false;
    } else if (item !== null && typeof item === "object") {
      if (!Array.isArray(item)) for (const key of Object.keys(item)) pending.push(key);
      for (const value of Object.values(item)) pending.push(value);
    }
  }
  return true;
}

/**
 * Parse one text frame into its checked message object, or throw a ProtocolError. A string anywhere in the frame
 * that is not valid Unicode (a lone surrogate, written "\ud800") makes the whole frame malformed_message.
 */
export function parseMessage(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    throw malformed("text frame is not valid JSON");
  }
  if (MAY_HOLD_SURROGATE_RE.test(text) && !encodable(data)) {
    throw malformed("text frame holds a string that is not valid Unicode (a lone surrogate)");
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw malformed("a control message must be a JSON object");
  }
  if (typeof data.type !== "string") throw malformed("a control message needs a string field 'type'");
  const parse = Object.hasOwn(PARSERS, data.type) ? PARSERS[data.type] : null;
  if (parse === null) throw new ProtocolError(`unknown message type '${escapeText(data.type.slice(0, 64))}'`, "unknown_type");
  return parse(data);
}

/** Build the offer object for local files (sealed before it leaves the page), checking it by the same rules a receiver will apply. */
export function makeOffer(files, dirs = [], chunkSize = DEFAULT_CHUNK_SIZE) {
  const entries = files.map(fileEntry);
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
