// The sending side of one transfer (protocol version 2, end-to-end encrypted), without any DOM: connect as
// role=send and learn the nameplate, draw the secret words, run a PAKE with each receiver as it joins (confirmed
// both ways, then the content key sealed to it), seal the offer to each, and stream the files as STREAM-sealed
// chunks (one File.stream() per file, pausing while the socket's send buffer is full), following the receivers'
// acknowledgements until `complete`. The page listens through `listener`.
//
// The relay sees the nameplate, sizes and timing; never a name, a byte of a file or a word of the code.

import { Connection, ConnectionClosed, roomUrl } from "./connection.js";
import { generateSecretWords } from "./codes.js";
import {
  CryptoError,
  Pake,
  RECEIVER,
  SENDER,
  StreamPlan,
  StreamSealer,
  TAG_SIZE,
  WrongCode,
  dataKey,
  newContentKey,
  newEpochSalt,
} from "./crypto.js";
import { createHashing } from "./hashing.js";
import { DEFAULT_CHUNK_SIZE, ProtocolError, escapeText, fromBase64, makeOffer, parseMessage, toBase64 } from "./protocol.js";
import { chunkBackend } from "./chunk-crypto.js";
import { openJson, sealJson } from "./sealing.js";

/** Pause reading the next slice while more than this many bytes wait in the WebSocket's send buffer. */
export const SEND_BUFFER_LIMIT = 16 * 1024 * 1024;
/**
 * Send at most this many bytes beyond what the slowest receiver has acknowledged as written. A browser's
 * WebSocket cannot stop reading, so without this a receiving tab whose disk (or download) is slower than the
 * network would queue the difference in memory. Receivers ack at least every 8 MiB; the window applies once
 * every receiver has sent an ack (acks are optional in the protocol, and one that never acks is not waited for).
 */
export const ACK_WINDOW = 64 * 1024 * 1024;
/** Chunks read and being sealed ahead of the one being sent. */
const SEAL_AHEAD = 4;
/** The one stream epoch of a transfer in this version (docs/protocol.md section 8.2). */
export const EPOCH = 0;

/** Terminal states of a session. */
export const FINAL_STATES = new Set(["verified", "failed", "cancelled"]);

/**
 * One send. `items` are {path, file} (file is a File/Blob); `dirs` are empty folders to create; `kind` "text"
 * offers one file as a text snippet for the receiver to read rather than save.
 * Listener methods (all optional): onCode(code), onState(state, detail), onProgress(progress).
 */
export class SendSession {
  constructor(items, { dirs = [], receivers = 1, kind = undefined, listener = {}, location = window.location } = {}) {
    this.items = items;
    this.receivers = receivers;
    this.listener = listener;
    this.location = location;
    this.offer = makeOffer(items.map((item) => ({ path: item.path, size: item.file.size })), dirs);
    // protocol.js checks a text offer's shape when it parses one; the send view makes exactly one small file.
    if (kind !== undefined) this.offer.kind = kind;
    this.total = this.offer.files.reduce((sum, entry) => sum + entry.size, 0);
    this.state = "idle";
    this.code = null;
    this.connection = null;
    this.sent = 0;
    this.joined = 0;
    this.fileOk = new Map(); // file index -> number of receivers that authenticated and stored it (from acks)
    this.verifiedBy = 0;
    this.acked = new Map(); // receiver peer -> chunks of the stream it has authenticated and written (from its acks)
    this.pakes = new Map(); // receiver peer -> its PAKE, until confirmed
    this.pairs = new Map(); // receiver peer -> its pair keys, once both PAKE messages passed
    this.channels = new Map(); // receiver peer -> its control channel, once confirmed both ways
    this.contentKey = newContentKey();
    this.sentChunks = 0;
    this.outcome = null; // how it ended: {code, reason, by, peer} (see words.js)
    this.startedAt = null; // Date.now() when the bytes started to flow, for the elapsed time and average rate
    this.endedAt = null;
    this.fileStarts = [];
    let start = 0;
    for (const entry of this.offer.files) {
      this.fileStarts.push(start);
      start += entry.size;
    }
  }

  /** Run the whole transfer; resolves with the final state ("verified", "failed" or "cancelled"). */
  async run() {
    this.hashing = await createHashing();
    this.#setState("connecting");
    try {
      const first = await this.#connect();
      await this.#on(first);
      while (!FINAL_STATES.has(this.state)) await this.#handle(await this.connection.next());
    } catch (error) {
      this.#fail(error);
    }
    return this.state;
  }

  /** Give up at any moment; the relay tells the receivers with `cancel` (no reason: it could name a file). */
  cancel() {
    if (FINAL_STATES.has(this.state)) return;
    this.connection?.sendMessage({ type: "cancel" });
    this.#end("cancelled", { code: "cancelled", by: "you" });
  }

  /** Files every receiver has verified so far. */
  get filesDelivered() {
    let count = 0;
    for (const verified of this.fileOk.values()) if (verified >= this.receivers) count += 1;
    return count;
  }

  /** Bytes handed to the network so far (sent minus what still waits in the socket's buffer). */
  get bytesOut() {
    const buffered = this.connection ? this.connection.bufferedAmount : 0;
    return Math.max(0, this.sent - buffered);
  }

  // Open a room: the relay allocates its nameplate and says it in `hello`; the secret words are drawn here.
  async #connect() {
    const url = roomUrl(null, { role: "send", receivers: String(this.receivers) }, this.location);
    this.connection = await Connection.open(url);
    const first = parseMessage(await this.connection.next());
    if (first.type === "hello") {
      if (first.nameplate === null) throw new ProtocolError("the relay gave this room no nameplate", "unexpected_message");
      this.code = `${first.nameplate}-${generateSecretWords()}`;
      this.listener.onCode?.(this.code);
    }
    return first;
  }

  async #handle(frame) {
    if (typeof frame !== "string") throw new ProtocolError("the relay sent a binary frame to the sender", "unexpected_message");
    await this.#on(parseMessage(frame));
  }

  async #on(message) {
    switch (message.type) {
      case "hello":
        // Each chunk grows by its 16-byte tag on the wire: the relay's max_message bounds the sealed chunk.
        this.chunkSize = Math.min(DEFAULT_CHUNK_SIZE, message.max_message - TAG_SIZE);
        this.offer.chunk_size = this.chunkSize;
        this.#setState("waiting", `0 of ${message.receivers} joined`);
        break;
      case "peer_joined":
        this.joined = message.joined;
        this.#setState("waiting", `${message.joined} of ${message.receivers} joined`);
        if (!this.pakes.has(message.peer)) {
          const pake = new Pake(SENDER, this.code);
          this.pakes.set(message.peer, pake);
          this.connection.sendMessage({ type: "pake", to: message.peer, data: toBase64(pake.outbound) });
        }
        break;
      case "pake":
        await this.#pake(message);
        break;
      case "confirm":
        await this.#confirm(message);
        break;
      case "paired":
        if (this.channels.size !== this.receivers) throw new ProtocolError("paired before every receiver was keyed", "unexpected_message");
        for (const [peer, channel] of [...this.channels].sort(([a], [b]) => a - b)) {
          this.connection.sendMessage({
            type: "offer", to: peer, total_size: this.total, files: this.offer.files.length, data: await sealJson(channel, this.offer),
          });
        }
        this.#setState("offered");
        break;
      case "accept":
        // Opened even though it says nothing yet: the control channel counts every message in order.
        if (message.data !== null) await openJson(this.#channel(message.peer), message.data);
        break;
      case "ack":
        if (message.epoch === EPOCH && message.peer !== null) {
          this.acked.set(message.peer, Math.max(this.acked.get(message.peer) ?? 0, message.chunks));
          this.#countDelivered();
        }
        break;
      case "decline":
        this.#end("cancelled", { code: "declined", reason: await this.#sealedReason(message), by: "peer", peer: message.peer });
        break;
      case "start":
        this.startedAt = Date.now();
        this.#setState("transferring");
        // Stream while this loop keeps reading the receivers' messages (acks, cancel, errors).
        this.streaming = this.#stream().catch((error) => this.#fail(error));
        break;
      case "verified":
        this.verifiedBy += 1;
        break;
      case "complete":
        if (this.verifiedBy < this.receivers) throw new ProtocolError("complete before every receiver verified", "unexpected_message");
        this.#end("verified", { code: "done", by: "relay" });
        break;
      case "cancel":
        this.#end("cancelled", { code: "cancelled", reason: await this.#sealedReason(message), by: "peer", peer: message.peer });
        break;
      case "error":
        this.#end("failed", {
          code: message.code, reason: message.message, by: message.peer === null ? "relay" : "peer", peer: message.peer,
        });
        break;
      case "peer_left":
        this.#end("failed", { code: "peer_left", by: "relay", peer: message.peer });
        break;
      default:
        throw new ProtocolError(`unexpected '${message.type}' message`, "unexpected_message");
    }
  }

  // A receiver's PAKE message: derive the pair's keys and send our confirmation. A message that is not a valid
  // PAKE message is a wrong code too (a relay in the middle would make its one guess this way).
  async #pake(message) {
    const pake = this.pakes.get(message.peer);
    if (pake === undefined || this.pairs.has(message.peer)) throw new ProtocolError("a PAKE message out of order", "unexpected_message");
    let keys;
    try {
      keys = await pake.finish(fromBase64(message.data));
    } catch (error) {
      if (error instanceof CryptoError) this.#wrongCode(message.peer);
      throw error;
    }
    this.pairs.set(message.peer, keys);
    this.connection.sendMessage({ type: "confirm", to: message.peer, data: toBase64(await keys.confirmation(SENDER)) });
  }

  // A receiver's confirmation: check it, then seal the transfer's content key to it.
  async #confirm(message) {
    const keys = this.pairs.get(message.peer);
    if (keys === undefined || this.channels.has(message.peer)) throw new ProtocolError("a confirmation out of order", "unexpected_message");
    try {
      await keys.checkConfirmation(RECEIVER, fromBase64(message.data));
    } catch (error) {
      if (error instanceof WrongCode) this.#wrongCode(message.peer);
      throw error;
    }
    this.connection.sendMessage({ type: "key", to: message.peer, data: toBase64(await keys.sealContentKey(this.contentKey)) });
    this.channels.set(message.peer, await keys.controlChannel(SENDER));
  }

  // The receiver typed another code: the relay ends the room for everyone with wrong_code (the code is spent).
  #wrongCode(peer) {
    this.connection.sendMessage({ type: "wrong_code", to: peer });
    this.#end("failed", { code: "wrong_code", by: "local", peer });
  }

  #channel(peer) {
    const channel = this.channels.get(peer);
    if (channel === undefined) throw new ProtocolError(`a sealed message from receiver ${peer}, which has no key`, "unexpected_message");
    return channel;
  }

  // The human reason a receiver sealed into its decline or cancel, if any (shown as a quote from them).
  async #sealedReason(message) {
    if (message.data === null || !this.channels.has(message.peer)) return "";
    try {
      const opened = await openJson(this.channels.get(message.peer), message.data);
      return opened !== null && typeof opened === "object" && typeof opened.reason === "string" ? escapeText(opened.reason.slice(0, 1000)) : "";
    } catch {
      return ""; // the transfer ends anyway; a reason that does not open is not shown
    }
  }

  // A file counts as delivered once every receiver acknowledged its last chunk (receivers ack each file's end).
  #countDelivered() {
    if (this.acked.size < this.receivers || this.fileEnds === undefined) return;
    const slowest = Math.min(...this.acked.values());
    this.fileEnds.forEach((end, index) => {
      if (end <= slowest) this.fileOk.set(index, this.receivers);
    });
    this.#progress();
  }

  // Open the one epoch (a sealed plan to each receiver), then seal and send every chunk in plan order. With
  // several receivers, each file's SHA-256 goes sealed to every receiver just before the file's last chunk: they
  // all hold the content key, so only the pair channel proves that the bytes are the sender's.
  async #stream() {
    const { hashing, connection } = this;
    const salt = newEpochSalt();
    const plan = new StreamPlan(this.offer.files.map((entry, file) => ({ file, start: 0, end: entry.size })), this.chunkSize);
    const peers = [...this.channels.keys()].sort((a, b) => a - b);
    const sealedPlan = { salt: toBase64(salt), chunk_size: this.chunkSize, segments: plan.segments.map((s) => [s.file, s.start, s.end]) };
    const plans = [];
    for (const peer of peers) plans.push(await sealJson(this.channels.get(peer), sealedPlan));
    connection.sendMessage({ type: "stream", epoch: EPOCH, to: peers, chunks: plan.chunkCount(), bytes: plan.ciphertextSize(), data: plans });
    this.fileEnds = [];
    let chunks = 0;
    for (const entry of this.offer.files) {
      chunks += Math.max(1, Math.ceil(entry.size / this.chunkSize));
      this.fileEnds.push(chunks);
    }
    const sealer = await StreamSealer.create(await dataKey(this.contentKey, salt), plan, chunkBackend());
    this.chunksPerWindow = Math.max(1, Math.floor(ACK_WINDOW / this.chunkSize));
    // Up to SEAL_AHEAD chunks are read and being sealed (WebCrypto works off the page's thread) while the oldest
    // is sent, so neither the file nor the cipher waits for the other.
    const inFlight = [];
    const sendOldest = async () => {
      const { index, length, sha256, sealing } = inFlight.shift();
      const sealed = await sealing;
      if (sha256 !== null) {
        for (const peer of peers) {
          connection.sendMessage({ type: "sealed", to: peer, data: await sealJson(this.channels.get(peer), { file: index, sha256 }) });
        }
      }
      await connection.drain(SEND_BUFFER_LIMIT, () => this.#aheadOfReceivers() > this.chunksPerWindow);
      if (FINAL_STATES.has(this.state)) return false;
      connection.sendMessage({ type: "chunk", epoch: EPOCH, size: sealed.length, xxh3_64: hashing.chunkDigest(sealed) });
      connection.sendBinary(sealed);
      this.sentChunks += 1;
      this.sent += length;
      this.#progress();
      return true;
    };
    for await (const item of this.#sealedChunks(sealer, this.receivers > 1)) {
      if (FINAL_STATES.has(this.state)) return; // leaving the loop stops reading the file
      inFlight.push(item);
      if (inFlight.length >= SEAL_AHEAD && !(await sendOldest())) return;
    }
    while (inFlight.length > 0) if (!(await sendOldest())) return;
    connection.sendMessage({ type: "end", epoch: EPOCH });
    this.#setState("verifying");
    // Keep the progress moving while the last megabytes leave the send buffer.
    while (this.state === "verifying" && connection.bufferedAmount > 0) {
      this.#progress();
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    this.#progress();
  }

  /**
   * Every chunk of the plan in order, each with its sealing under way: {index, length, sha256, sealing}. With
   * several receivers `sha256` is the file's digest on its last chunk (computed here, before the next file's
   * bytes reset the running digest), else null.
   */
  async *#sealedChunks(sealer, several) {
    for (const [index, entry] of this.offer.files.entries()) {
      const digest = several ? this.hashing.newFileDigest() : null;
      for await (const bytes of this.#chunks(this.items[index].file, entry.size)) {
        const last = sealer.position.last;
        digest?.update(bytes);
        const sealing = sealer.sealNext(bytes);
        sealing.catch(() => {}); // awaited when its turn comes; a transfer that ended first never looks at it
        yield { index, length: bytes.length, sha256: last && digest !== null ? digest.hexdigest() : null, sealing };
      }
    }
  }

  /**
   * The file's bytes as chunks of exactly chunkSize bytes (the last one shorter), each a Uint8Array owning its
   * buffer. One stream of the whole file (File.stream()) instead of a File.slice() per chunk: the browser reads
   * ahead into the stream on its own (bounded by the stream's queue), and a slice costs a round trip to the
   * browser process each (~1.5 ms of the page's time per MiB, and about 40% more CPU in all).
   */
  async *#chunks(file, size) {
    const name = file.name || "a file";
    if (size === 0) {
      // An empty file is one empty chunk: its authenticated last chunk is what completes it on the other side.
      if (file.size !== 0) throw new Error(`${name} changed while it was being sent`);
      yield new Uint8Array(0);
      return;
    }
    let reader;
    try {
      reader = file.stream().getReader();
    } catch (error) {
      throw new Error(`could not read ${name}: ${error.message}`);
    }
    let total = 0;
    let chunk = new Uint8Array(Math.min(this.chunkSize, size));
    let fill = 0;
    try {
      for (;;) {
        let result;
        try {
          result = await reader.read();
        } catch (error) {
          throw new Error(`could not read ${name}: ${error.message}`);
        }
        if (result.done) break;
        const value = result.value;
        if (total + value.length > size) throw new Error(`${name} changed while it was being sent`);
        total += value.length;
        for (let used = 0; used < value.length; ) {
          const take = Math.min(value.length - used, chunk.length - fill);
          chunk.set(value.subarray(used, used + take), fill);
          fill += take;
          used += take;
          if (fill === chunk.length) {
            yield chunk;
            chunk = new Uint8Array(Math.min(this.chunkSize, size - total + (value.length - used)));
            fill = 0;
          }
        }
      }
      if (total !== size || fill !== 0) throw new Error(`${name} changed while it was being sent`);
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // Chunks sent beyond the slowest receiver's last ack; 0 until every receiver has acked (see ACK_WINDOW).
  #aheadOfReceivers() {
    if (FINAL_STATES.has(this.state) || this.acked.size < this.receivers) return 0;
    return this.sentChunks - Math.min(...this.acked.values());
  }

  #progress() {
    this.listener.onProgress?.({ done: this.bytesOut, total: this.total, fileOk: this.fileOk, receivers: this.receivers });
  }

  #fail(error) {
    if (FINAL_STATES.has(this.state)) return;
    if (error instanceof ConnectionClosed) {
      const code = error.errorCode ?? "connection_lost";
      this.#end(code === "cancelled" ? "cancelled" : "failed", { code, reason: error.reason, by: "relay" });
      return;
    }
    if (error instanceof CryptoError && this.connection) {
      // A sealed message did not authenticate (or a limit of the nonce layout): end the room for everyone. The
      // words sent in clear name no file.
      const code = error instanceof WrongCode ? "wrong_code" : "tampered";
      this.connection.sendMessage({ type: "error", code, message: "a sealed message did not authenticate" });
      this.#end("failed", { code, by: "local" });
      return;
    }
    if (error instanceof ProtocolError && this.connection) {
      this.connection.sendMessage({ type: "error", code: error.code, message: "the sender's page refused a message" });
      this.#end("failed", { code: error.code, reason: escapeText(error.message), by: "local" });
      return;
    }
    // A local problem (an unreadable file): the receivers learn that the sender cancelled (a reason in clear
    // could name the file, which the relay must not see).
    this.connection?.sendMessage({ type: "cancel" });
    this.#end("failed", { code: "read_failed", reason: escapeText(error.message), by: "local" });
  }

  // Record how the session ended (words.js turns it into sentences), then enter the final state.
  #end(state, outcome) {
    if (FINAL_STATES.has(this.state)) return;
    this.outcome = outcome;
    this.endedAt = Date.now();
    this.#setState(state, "");
  }

  #setState(state, detail = "") {
    if (FINAL_STATES.has(this.state)) return;
    this.state = state;
    this.detail = detail;
    // Ending closes our socket; anything still queued (a cancel or error message) goes out first.
    if (FINAL_STATES.has(state)) this.connection?.close(1000);
    this.listener.onState?.(state, detail);
  }
}
