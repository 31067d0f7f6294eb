// The sending side of one transfer, without any DOM: connect as role=send, wait for the receivers, offer the
// files, stream them chunk by chunk (one File.stream() per file, pausing while the socket's send buffer is full),
// and follow the receivers' acknowledgements until `complete`. The page listens through `listener`.

import { Connection, ConnectionClosed, roomUrl } from "./connection.js";
import { generateCode } from "./codes.js";
import { createHashing } from "./hashing.js";
import { DEFAULT_CHUNK_SIZE, ProtocolError, clipText, escapeText, makeOffer, parseMessage } from "./protocol.js";

/** Pause reading the next slice while more than this many bytes wait in the WebSocket's send buffer. */
export const SEND_BUFFER_LIMIT = 16 * 1024 * 1024;
/**
 * Send at most this many bytes beyond what the slowest receiver has acknowledged as written. A browser's
 * WebSocket cannot stop reading, so without this a receiving tab whose disk (or download) is slower than the
 * network would queue the difference in memory. Receivers ack at least every 8 MiB; the window applies once
 * every receiver has sent an ack (acks are optional in the protocol, and one that never acks is not waited for).
 */
export const ACK_WINDOW = 64 * 1024 * 1024;
const CODE_ATTEMPTS = 3;

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
    this.fileOk = new Map(); // file index -> number of receivers that verified it
    this.verifiedBy = 0;
    this.acked = new Map(); // receiver peer -> bytes of the whole offer it has written (from its acks)
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

  /** Give up at any moment; the relay tells the receivers with `cancel`. */
  cancel(reason = "cancelled by the sender") {
    if (FINAL_STATES.has(this.state)) return;
    this.connection?.sendMessage({ type: "cancel", reason: clipText(reason) });
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

  // Open the room with a fresh code; a code already in use (room_taken) gets a new one.
  async #connect() {
    for (let attempt = 1; ; attempt++) {
      this.code = generateCode();
      const url = roomUrl(this.code, { role: "send", receivers: String(this.receivers) }, this.location);
      this.connection = await Connection.open(url);
      const first = parseMessage(await this.connection.next());
      if (first.type === "error" && first.code === "room_taken" && attempt < CODE_ATTEMPTS) {
        this.connection.close();
        continue;
      }
      if (first.type === "hello") this.listener.onCode?.(this.code);
      return first;
    }
  }

  async #handle(frame) {
    if (typeof frame !== "string") throw new ProtocolError("the relay sent a binary frame to the sender", "unexpected_message");
    await this.#on(parseMessage(frame));
  }

  async #on(message) {
    switch (message.type) {
      case "hello":
        this.chunkSize = Math.min(DEFAULT_CHUNK_SIZE, message.max_message);
        this.offer.chunk_size = this.chunkSize;
        this.#setState("waiting", `0 of ${message.receivers} joined`);
        break;
      case "peer_joined":
        this.joined = message.joined;
        this.#setState("waiting", `${message.joined} of ${message.receivers} joined`);
        break;
      case "paired":
        this.connection.sendMessage(this.offer);
        this.#setState("offered");
        break;
      case "accept":
        break;
      case "ack":
        if (message.file < this.fileStarts.length) {
          const position = this.fileStarts[message.file] + message.offset;
          this.acked.set(message.peer, Math.max(this.acked.get(message.peer) ?? 0, position));
        }
        break;
      case "decline":
        this.#end("cancelled", { code: "declined", reason: message.reason, by: "peer", peer: message.peer });
        break;
      case "start":
        this.startedAt = Date.now();
        this.#setState("transferring");
        // Stream while this loop keeps reading the receivers' messages (acks, cancel, errors).
        this.streaming = this.#stream().catch((error) => this.#fail(error));
        break;
      case "file_ok":
        this.fileOk.set(message.file, (this.fileOk.get(message.file) ?? 0) + 1);
        this.#progress();
        break;
      case "verified":
        this.verifiedBy += 1;
        break;
      case "complete":
        this.#end("verified", { code: "done", by: "relay" });
        break;
      case "cancel":
        this.#end("cancelled", { code: "cancelled", reason: message.reason, by: "peer", peer: message.peer });
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

  async #stream() {
    const { hashing, connection } = this;
    for (const [index, entry] of this.offer.files.entries()) {
      const file = this.items[index].file;
      const digest = hashing.newFileDigest();
      let offset = 0;
      const chunks = this.#chunks(file, entry.size);
      try {
        for (;;) {
          const { value: bytes, done } = await chunks.next();
          if (done || FINAL_STATES.has(this.state)) break;
          const header = { type: "chunk", file: index, offset, size: bytes.length, xxh3_64: hashing.chunkDigest(bytes) };
          digest.update(bytes);
          await connection.drain(SEND_BUFFER_LIMIT, () => this.#aheadOfReceivers() > ACK_WINDOW);
          if (FINAL_STATES.has(this.state)) break;
          connection.sendMessage(header);
          connection.sendBinary(bytes);
          offset += bytes.length;
          this.sent += bytes.length;
          this.#progress();
        }
      } finally {
        await chunks.return(undefined); // stops reading the file when the transfer ended early
      }
      if (FINAL_STATES.has(this.state)) return;
      connection.sendMessage({ type: "file_done", file: index, size: entry.size, xxh3_128: digest.hexdigest() });
    }
    connection.sendMessage({ type: "done" });
    this.#setState("verifying");
    // Keep the progress moving while the last megabytes leave the send buffer.
    while (this.state === "verifying" && connection.bufferedAmount > 0) {
      this.#progress();
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    this.#progress();
  }

  /**
   * The file's bytes as chunks of exactly chunkSize bytes (the last one shorter), each a Uint8Array owning its
   * buffer. One stream of the whole file (File.stream()) instead of a File.slice() per chunk: the browser reads
   * ahead into the stream on its own (bounded by the stream's queue), and a slice costs a round trip to the
   * browser process each (~1.5 ms of the page's time per MiB, and about 40% more CPU in all).
   */
  async *#chunks(file, size) {
    const name = file.name || "a file";
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

  // Bytes sent beyond the slowest receiver's last ack; 0 until every receiver has acked (see ACK_WINDOW).
  #aheadOfReceivers() {
    if (FINAL_STATES.has(this.state) || this.acked.size < this.receivers) return 0;
    return this.sent - Math.min(...this.acked.values());
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
    if (error instanceof ProtocolError && this.connection) {
      this.connection.sendMessage({ type: "error", code: error.code, message: clipText(error.message) });
      this.#end("failed", { code: error.code, reason: escapeText(error.message), by: "local" });
      return;
    }
    // A local problem (an unreadable file): tell the receivers why the transfer stops.
    this.connection?.sendMessage({ type: "cancel", reason: clipText(error.message) });
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
