// The sending side of one transfer (protocol version 2, end-to-end encrypted), without any DOM: connect as
// role=send and learn the nameplate, draw the secret words, run a PAKE with each receiver as it joins (confirmed
// both ways, then the content key sealed to it), seal the offer to each, and stream the files as STREAM-sealed
// chunks (one File.stream() per file, pausing while the socket's send buffer is full), following the receivers'
// acknowledgements until `complete`. The page listens through `listener`.
//
// Resume (docs/protocol.md section 10): when a receiver's connection drops the relay parks its seat and says
// `reconnecting`; the epoch under way is abandoned. Once every seat is back the page answers each returning
// receiver's `resync` (fresh control keys), collects every receiver's sealed position, and opens the next epoch
// (a fresh salt, so a fresh data key) from the earliest of them. When the page's own socket breaks it takes
// its seat back the same way (one token per receiver; each receiver resyncs on `resumed` with peer 0).
//
// The relay sees the nameplate, sizes and timing; never a name, a byte of a file or a word of the code.

import { Connection, ConnectionClosed, requestSeat, roomUrl, withBackoff } from "./connection.js";
import { generateSecretWords } from "./codes.js";
import {
  CryptoError,
  Pake,
  RECEIVER,
  SENDER,
  concatBytes,
  newResyncHalf,
  nextResumeToken,
  resumeVerifier,
  StreamPlan,
  StreamSealer,
  TAG_SIZE,
  WrongCode,
  dataKey,
  newContentKey,
  newEpochSalt,
} from "./crypto.js";
import { createHashing } from "./hashing.js";
import {
  ProtocolError, escapeText, fromBase64, makeOffer, parseMessage, toBase64,
} from "./protocol.js";
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
/**
 * The plaintext of one chunk, as this page cuts files (the sender chooses; the sealed plan and the offer say
 * it: docs/protocol.md section 8). Half of protocol.js's DEFAULT_CHUNK_SIZE (1 MiB, the terminal client's) on
 * purpose, measured page to page (docs/design/speed.md, issue 10): Chromium's allocator maps every buffer of
 * about 1 MiB or more afresh from the kernel and unmaps it on free, so each 1 MiB chunk, its sealed copy and the
 * frame carrying it paid page faults and zeroing (crypto.subtle.encrypt alone: about 2.5 ms per MiB at 1 MiB,
 * 0.9 at 512 or 768 KiB); and the relay spends less per MiB on a browser's 512 KiB frames than on 768 KiB ones
 * (about 2.1 against 3.1 ms).
 */
export const PAGE_CHUNK_SIZE = 512 * 1024;
/**
 * Chunks read and being sealed ahead of the one being sent: 4 MiB at PAGE_CHUNK_SIZE. Each chunk crosses threads
 * twice (to the AES worker and back), and on a busy machine every crossing waits for a CPU; with 4 of 512 KiB
 * the pipeline ran dry (issue 10: 63-70 MiB/s against 100-116 with 8, alternating runs).
 */
const SEAL_AHEAD = 8;

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
    this.verifiedBy = new Set(); // receivers whose `verified` the relay passed on (each holds every file)
    this.dropped = new Set(); // receivers the relay dropped at its resume window's end: the transfer goes on without them
    this.acked = new Map(); // receiver peer -> chunks of the stream it has authenticated and written (from its acks)
    this.pakes = new Map(); // receiver peer -> its PAKE, until confirmed
    this.pairs = new Map(); // receiver peer -> its pair keys, once both PAKE messages passed
    this.channels = new Map(); // receiver peer -> its control channel, once confirmed both ways
    this.contentKey = newContentKey();
    this.tokens = new Map(); // receiver peer -> this seat's current resume token for that pair
    this.epoch = 0; // the epoch being sent (or the last one opened)
    this.parked = false; // a seat is away: the epoch under way is abandoned
    this.away = new Set(); // the seats the relay says are away
    this.positions = new Map(); // receiver peer -> [file, bytes held], reported after a resume
    this.resumes = 0;
    this.waiters = [];
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
      while (!FINAL_STATES.has(this.state)) {
        let frame;
        try {
          frame = await this.connection.next();
        } catch (error) {
          const streaming = ["transferring", "verifying", "reconnecting"].includes(this.state);
          if (!(error instanceof ConnectionClosed) || error.errorCode !== null || !streaming || this.tokens.size === 0) throw error;
          await this.#resume();
          continue;
        }
        await this.#handle(frame);
      }
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
        this.chunkSize = Math.min(PAGE_CHUNK_SIZE, message.max_message - TAG_SIZE);
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
        if (message.epoch === this.epoch && message.peer !== null && !this.parked) {
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
        this.verifiedBy.add(message.peer);
        this.#notify(); // one waiting for positions no longer waits for this receiver's
        break;
      case "complete": {
        const verified = [...this.verifiedBy].filter((peer) => !this.dropped.has(peer));
        if (verified.length === 0 || verified.length + this.dropped.size < this.receivers) {
          throw new ProtocolError("complete before every receiver verified", "unexpected_message");
        }
        this.#end("verified", { code: "done", by: "relay", dropped: [...this.dropped].sort((a, b) => a - b) });
        break;
      }
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
      case "reconnecting":
        if (!this.#streaming() || message.peer === 0) throw new ProtocolError("'reconnecting' out of order", "unexpected_message");
        this.away.add(message.peer);
        this.#park(`Receiver ${message.peer}'s connection was lost; waiting for it to come back.`);
        break;
      case "resumed":
        if (!this.#streaming()) throw new ProtocolError("'resumed' out of order", "unexpected_message");
        this.away = new Set(message.parked);
        this.#notify();
        break;
      case "dropped":
        if (!this.#streaming()) throw new ProtocolError("'dropped' out of order", "unexpected_message");
        this.#drop(message.peers);
        break;
      case "resync":
        await this.#resync(message);
        break;
      case "sealed":
        await this.#position(message);
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
    // This seat's verifier for the pair: with one per receiver, a drop of ours parks the seat (section 10).
    this.tokens.set(message.peer, keys.resumeToken(SENDER));
    this.connection.sendMessage({ type: "resume_id", to: message.peer, verifier: resumeVerifier(keys.resumeToken(SENDER)) });
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
    if (this.acked.size < this.channels.size || this.fileEnds === undefined) return;
    const slowest = Math.min(...this.acked.values());
    this.fileEnds.forEach((end, index) => {
      if (end <= slowest) this.fileOk.set(index, this.receivers);
    });
    this.#progress();
  }

  // Epoch 0 from the start; after each resume a new epoch from the earliest position any receiver holds, until
  // every receiver verified (a seat that drops after `end` reopens one too).
  async #stream() {
    let start = [0, 0];
    for (;;) {
      const ended = await this.#streamEpoch(start);
      if (ended) {
        this.#setState("verifying");
        // Keep the progress moving while the last megabytes leave the send buffer, until the end or a drop.
        let changed = this.#changed();
        while (this.state === "verifying" && !this.parked) {
          this.#progress();
          const woke = await Promise.race([changed.then(() => true), sleep(200).then(() => false)]);
          if (woke) changed = this.#changed();
        }
      }
      if (FINAL_STATES.has(this.state)) return;
      start = await this.#nextStart();
      if (start === null) return;
      this.epoch += 1;
      this.#setState("transferring", "connection restored");
    }
  }

  // Wait until every seat is back and every receiver that has not verified said what it holds (one that verified
  // holds every file and may have left: the relay does not wait for it, docs/protocol.md section 10); the earliest
  // [file, have] of all. With every receiver verified, `complete` comes next, not an epoch.
  async #nextStart() {
    while (!FINAL_STATES.has(this.state) && (this.away.size > 0 || !this.#positionsIn())) await this.#changed();
    if (FINAL_STATES.has(this.state)) return null;
    const sizes = this.offer.files.map((entry) => entry.size);
    let start = null;
    for (const [peer, [file, have]] of this.positions) {
      const valid = Number.isSafeInteger(file) && Number.isSafeInteger(have)
        && ((file >= 0 && file < sizes.length && have >= 0 && have <= sizes[file]) || (file === sizes.length && have === 0));
      if (!valid) throw new ProtocolError(`receiver ${peer} reported a position outside the offer`, "unexpected_message");
      if (start === null || file < start[0] || (file === start[0] && have < start[1])) start = [file, have];
    }
    this.positions.clear();
    this.parked = false;
    if (start[0] >= sizes.length) {
      // Every receiver holds every byte: the last file's last chunk again (an epoch carries at least one chunk).
      const last = sizes.length - 1;
      start = [last, Math.max(0, Math.floor((sizes[last] - 1) / this.chunkSize) * this.chunkSize)];
    }
    return start;
  }

  // One epoch from `start` ([file, offset]): a sealed plan to each receiver, then every chunk in plan order.
  // With several receivers, each file's SHA-256 goes sealed to every receiver just before the file's last
  // chunk: they all hold the content key, so only the pair channel proves that the bytes are the sender's.
  // True once `end` went out; false if a seat dropped first (the epoch is abandoned).
  async #streamEpoch([startFile, startOffset]) {
    const { hashing, connection } = this;
    const epoch = this.epoch;
    const salt = newEpochSalt();
    const files = this.offer.files;
    const segments = files.slice(startFile).map((entry, i) => ({ file: startFile + i, start: i === 0 ? startOffset : 0, end: entry.size }));
    const plan = new StreamPlan(segments, this.chunkSize);
    const peers = [...this.channels.keys()].sort((a, b) => a - b);
    const sealedPlan = { salt: toBase64(salt), chunk_size: this.chunkSize, segments: plan.segments.map((s) => [s.file, s.start, s.end]) };
    const plans = [];
    for (const peer of peers) plans.push(await sealJson(this.channels.get(peer), sealedPlan));
    connection.sendMessage({ type: "stream", epoch, to: peers, chunks: plan.chunkCount(), bytes: plan.ciphertextSize(), data: plans });
    // Delivery counting (acks count this epoch's chunks): files before the start are held by every receiver.
    this.fileEnds = new Array(files.length).fill(0);
    let chunks = 0;
    for (const { file, start, end } of plan.segments) {
      chunks += Math.max(1, Math.ceil((end - start) / this.chunkSize));
      this.fileEnds[file] = chunks;
    }
    for (let file = 0; file < startFile; file++) this.fileOk.set(file, this.receivers);
    this.acked.clear();
    this.sentChunks = 0;
    this.sent = this.fileStarts[startFile] + startOffset;
    const sealer = await StreamSealer.create(await dataKey(this.contentKey, salt), plan, chunkBackend());
    this.chunksPerWindow = Math.max(1, Math.floor(ACK_WINDOW / this.chunkSize));
    // Up to SEAL_AHEAD chunks are read and being sealed (on the encryption worker) while the oldest is sent, so
    // neither the file nor the cipher waits for the other.
    const inFlight = [];
    const sendOldest = async () => {
      const { index, length, sha256, sealing } = inFlight.shift();
      const sealed = await sealing;
      if (this.parked || FINAL_STATES.has(this.state)) return false;
      if (sha256 !== null) {
        for (const peer of peers) {
          connection.sendMessage({ type: "sealed", to: peer, data: await sealJson(this.channels.get(peer), { file: index, sha256 }) });
        }
      }
      await connection.drain(SEND_BUFFER_LIMIT, () => this.#aheadOfReceivers() > this.chunksPerWindow);
      if (this.parked || FINAL_STATES.has(this.state)) return false;
      connection.sendMessage({ type: "chunk", epoch, size: sealed.length, xxh3_64: hashing.chunkDigest(sealed) });
      connection.sendBinary(sealed);
      this.sentChunks += 1;
      this.sent += length;
      this.#progress();
      return true;
    };
    for await (const item of this.#sealedChunks(sealer, plan.segments, this.receivers > 1)) {
      if (this.parked || FINAL_STATES.has(this.state)) return false; // leaving the loop stops reading the file
      inFlight.push(item);
      if (inFlight.length >= SEAL_AHEAD && !(await sendOldest())) return false;
    }
    while (inFlight.length > 0) if (!(await sendOldest())) return false;
    connection.sendMessage({ type: "end", epoch });
    return true;
  }

  // The relay dropped these receivers (they did not come back within its resume window): no epoch names them any
  // more and nothing waits for their positions, acks or `verified`; the others say where they are and go on.
  #drop(peers) {
    for (const peer of peers) {
      if (!this.pairs.has(peer) || this.dropped.has(peer)) continue;
      this.dropped.add(peer);
      this.channels.delete(peer);
      this.acked.delete(peer);
      this.positions.delete(peer);
      this.away.delete(peer);
    }
    const named = [...this.dropped].sort((a, b) => a - b).map((peer) => `Receiver ${peer}`).join(", ");
    const verb = this.dropped.size === 1 ? "was" : "were";
    this.droppedNote = `${named} did not come back within the resume window and ${verb} dropped; the others go on.`;
    this.#setState(this.state, this.droppedNote);
    this.#notify();
  }

  #positionsIn() {
    const waitingFor = [...this.channels.keys()].filter((peer) => !this.verifiedBy.has(peer));
    return waitingFor.length > 0 && waitingFor.every((peer) => this.positions.has(peer));
  }

  // A seat dropped: the epoch under way is abandoned (nothing more of it is sent); positions come after resume.
  #park(detail) {
    this.parked = true;
    this.positions.clear();
    this.#setState("reconnecting", detail);
    this.#notify();
  }

  #streaming() {
    return ["transferring", "verifying", "reconnecting"].includes(this.state);
  }

  // A returning receiver's half of its pair's new control keys: answer with ours and prove the new channel.
  async #resync(message) {
    const keys = this.pairs.get(message.peer);
    if (!this.#streaming() || keys === undefined || !this.channels.has(message.peer)) {
      throw new ProtocolError("a resync out of order", "unexpected_message");
    }
    const half = newResyncHalf();
    const old = this.channels.get(message.peer);
    const channel = await keys.controlChannel(SENDER, concatBytes(half, fromBase64(message.half)));
    this.channels.set(message.peer, channel);
    this.positions.delete(message.peer);
    this.connection.sendMessage({ type: "resync", to: message.peer, half: toBase64(half) });
    this.connection.sendMessage({ type: "sealed", to: message.peer, data: await sealJson(channel, { received: old.received }) });
  }

  // A receiver's sealed position after a resume: {file, have} (the file it is in, the bytes of it it holds).
  async #position(message) {
    const note = await openJson(this.#channel(message.peer), message.data);
    const valid = this.#streaming() && note !== null && typeof note === "object"
      && Number.isSafeInteger(note.file) && Number.isSafeInteger(note.have);
    if (!valid) throw new ProtocolError("a sealed message the sender does not expect", "unexpected_message");
    this.positions.set(message.peer, [note.file, note.have]);
    this.#notify();
  }

  // This page's socket broke without a close code: take the seat back (one token per receiver), bounded attempts
  // with backoff within the resume window (connection.js). The receivers then resync with us and say what they hold.
  async #resume() {
    this.#park("Connection lost, reconnecting");
    this.away.add(0);
    let next = null;
    const { taken, attempts } = await withBackoff({
      onAttempt: (attempt) => this.#setState("reconnecting", `Connection lost, reconnecting (attempt ${attempt})`),
      stopped: () => FINAL_STATES.has(this.state),
      attempt: async () => {
        next = new Map();
        for (const [peer, token] of this.tokens) next.set(peer, await nextResumeToken(token));
        const tokens = {};
        for (const [peer, token] of this.tokens) tokens[String(peer)] = { token: hex(token), next_verifier: resumeVerifier(next.get(peer)) };
        const room = { receivers: this.receivers, total_size: this.total, files: this.offer.files.length };
        const url = roomUrl(this.code.split("-", 1)[0], { role: "send", resume: "1" }, this.location);
        // Receivers that verified hold every file and do not come back, and those the relay dropped are out of the
        // transfer: a relay restarted meanwhile must not wait for either (docs/protocol.md section 10.2).
        const verified = [...this.verifiedBy].filter((peer) => !this.dropped.has(peer)).sort((a, b) => a - b);
        const dropped = [...this.dropped].sort((a, b) => a - b);
        return requestSeat(url, {
          type: "resume", peer: 0, tokens, room,
          ...(verified.length > 0 ? { verified } : {}), ...(dropped.length > 0 ? { dropped } : {}),
        }, 0);
      },
    });
    if (FINAL_STATES.has(this.state)) {
      taken?.[0].close(1000);
      return;
    }
    if (taken === null) {
      throw new ConnectionClosed(1006, `the connection to the relay was lost and could not be restored (${attempts} attempts)`);
    }
    const [connection, resumed] = taken;
    this.tokens = next; // each token is good once
    this.connection = connection;
    this.resumes += 1;
    this.away = new Set(resumed.parked);
    this.#setState("reconnecting", "Connection restored; waiting for the receivers.");
    this.#notify();
  }

  // Wake whoever waits for a change of the room (a seat back, a position, the end).
  #notify() {
    for (const wake of this.waiters.splice(0)) wake();
  }

  #changed() {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /**
   * Every chunk of the plan in order, each with its sealing under way: {index, length, sha256, sealing}. With
   * several receivers `sha256` is the file's digest on its last chunk (computed here, before the next file's
   * bytes reset the running digest), else null.
   */
  async *#sealedChunks(sealer, segments, several) {
    for (const { file: index, start, end } of segments) {
      const digest = several ? this.hashing.newFileDigest() : null;
      const file = this.items[index].file;
      if (digest !== null && start > 0) {
        // The file's digest covers the bytes the receivers already hold (a resumed epoch starts inside it).
        for await (const bytes of this.#chunks(file.slice(0, start), start)) digest.update(bytes);
      }
      for await (const bytes of this.#chunks(start > 0 ? file.slice(start) : file, end - start)) {
        const { last } = sealer.position;
        const length = bytes.length;
        digest?.update(bytes);
        // The chunk's buffer goes to the encryption worker (transferred, not copied): `bytes` is empty from here on.
        const sealing = sealer.sealNext(bytes);
        sealing.catch(() => {}); // awaited when its turn comes; a transfer that ended first never looks at it
        yield { index, length, sha256: last && digest !== null ? digest.hexdigest() : null, sealing };
      }
    }
  }

  /**
   * The file's bytes as chunks of exactly chunkSize bytes (the last one shorter), each a Uint8Array owning its
   * buffer. One stream of the whole file (File.stream()) instead of a File.slice() per chunk: the browser reads
   * ahead into the stream on its own (bounded by the stream's queue), and a slice costs a round trip to the
   * browser process each (~1.5 ms of the page's time per MiB, and about 40% more CPU in all).
   *
   * Where the file's stream is a byte stream (Chromium), the stream writes straight into the chunk ("BYOB"
   * reads): no buffer of its own per 64 KiB read for the page to copy from and then collect (the sending page's
   * busiest function and most of its garbage collection, issue 10). Elsewhere, its pieces are copied in.
   */
  async *#chunks(file, size) {
    const name = file.name || "a file";
    if (size === 0) {
      // An empty file is one empty chunk: its authenticated last chunk is what completes it on the other side.
      if (file.size !== 0) throw new Error(`${name} changed while it was being sent`);
      yield new Uint8Array(0);
      return;
    }
    let stream;
    try {
      stream = file.stream();
    } catch (error) {
      throw new Error(`could not read ${name}: ${error.message}`);
    }
    let byob = null;
    try {
      byob = stream.getReader({ mode: "byob" });
    } catch {
      // not a byte stream here: read its pieces
    }
    const reader = byob ?? stream.getReader();
    const read = async (view) => {
      try {
        return await (view === undefined ? reader.read() : reader.read(view));
      } catch (error) {
        throw new Error(`could not read ${name}: ${error.message}`);
      }
    };
    try {
      if (byob !== null) yield* this.#filledChunks(read, name, size);
      else yield* this.#copiedChunks(read, name, size);
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // Chunks read straight into their buffers: each read fills the rest of the chunk as far as the stream has
  // bytes, and hands back the same memory under a new buffer (the view it was given is detached).
  async *#filledChunks(read, name, size) {
    let total = 0;
    while (total < size) {
      const length = Math.min(this.chunkSize, size - total); // (a detached view's length reads 0)
      let buffer = new ArrayBuffer(length);
      let fill = 0;
      while (fill < length) {
        const result = await read(new Uint8Array(buffer, fill, length - fill));
        if (result.done) throw new Error(`${name} changed while it was being sent`);
        buffer = result.value.buffer;
        fill += result.value.length;
      }
      total += length;
      yield new Uint8Array(buffer);
    }
    // The file must end here: a file that grew meanwhile is not the one offered.
    const after = await read(new Uint8Array(1));
    if (!after.done) throw new Error(`${name} changed while it was being sent`);
  }

  // Chunks copied together from the stream's own pieces.
  async *#copiedChunks(read, name, size) {
    let total = 0;
    let chunk = new Uint8Array(Math.min(this.chunkSize, size));
    let fill = 0;
    for (;;) {
      const result = await read();
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
  }

  // Chunks sent beyond the slowest receiver's last ack; 0 until every receiver has acked (see ACK_WINDOW).
  #aheadOfReceivers() {
    if (FINAL_STATES.has(this.state) || this.acked.size < this.channels.size) return 0;
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
    this.#notify();
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
