// The receiving side of one transfer (protocol version 2, end-to-end encrypted), without any DOM: join the room
// of the code's nameplate as role=receive, run the PAKE with the sender (its confirmation is checked before ours
// is sent), open the sealed content key and the sealed offer, and once the person accepts, open every chunk at
// the position the sealed plan says comes next before anything is written to the sink. A file is complete only
// at its authenticated last chunk (and, with several receivers, once its sealed SHA-256 matched).
//
// Resume (docs/protocol.md section 10): with a sink that can carry on (a chosen folder or file, whose open file
// survives a lost connection), the page registers its seat's verifier when it accepts. If the socket then breaks
// without a close code, it takes its seat back (`resume=1`, the seat token, the next one's verifier), draws fresh
// control keys with the sender (`resync` halves), tells it sealed which file it is in and how many bytes of it
// it holds, and opens the sender's next epoch, skipping authenticated bytes it already has. A download to the
// downloads folder cannot continue where it stopped: it registers no verifier, and a lost connection ends it,
// saying so.

import { Connection, ConnectionClosed, MAX_RESUME_NOISE, requestSeat, roomUrl, withBackoff } from "./connection.js";
import {
  CryptoError,
  EPOCH_SALT_SIZE,
  Pake,
  RECEIVER,
  SENDER,
  concatBytes,
  newResyncHalf,
  nextResumeToken,
  resumeVerifier,
  StreamOpener,
  StreamPlan,
  Tampered,
  WrongCode,
  dataKey,
  splitCode,
} from "./crypto.js";
import { createHashing } from "./hashing.js";
import {
  ACK_INTERVAL, ProtocolError, checkOffer, escapeText, fromBase64, parseMessage, toBase64, unexpected,
} from "./protocol.js";
import { chunkBackend } from "./chunk-crypto.js";
import { openJson, sealJson } from "./sealing.js";
import { FINAL_STATES } from "./sender.js";
import { SinkError } from "./sinks.js";

const SHA256_RE = /^[0-9a-f]{64}$/;
/** Chunks opening at once before the oldest is stored: 4 MiB of 512 KiB chunks (see sender.js SEAL_AHEAD). */
const OPEN_AHEAD = 8;

/** Messages that end the room, whenever they come. */
const ENDINGS = new Set(["error", "peer_left", "cancel"]);

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** The connection was lost and the seat could not be taken back (or the sink cannot resume). */
class ConnectionLost extends Error {
  constructor(message, code = "connection_lost") {
    super(message);
    this.name = "ConnectionLost";
    this.code = code;
  }
}

/**
 * One receive with `code` (already normalised: "<nameplate>-<words>"). Listener methods (all optional):
 * onState(state, detail), onOffer(offer), onProgress({done, total, file, fileDone, verifiedFiles}).
 * States: connecting, keying, waiting (for the offer), offered, transferring, verifying, verified, failed,
 * cancelled.
 */
export class ReceiveSession {
  constructor(code, { listener = {}, location = window.location } = {}) {
    this.code = code;
    this.nameplate = splitCode(code).nameplate; // InvalidCode before anything is sent
    this.listener = listener;
    this.location = location;
    this.state = "idle";
    this.offer = null;
    this.sink = null;
    this.accepted = false;
    this.stopping = false;
    this.verifiedSent = false;
    this.fileOpen = false;
    this.verifiedFiles = 0;
    this.maxMessage = undefined;
    this.several = false;
    this.pake = null;
    this.keys = null;
    this.channel = null;
    this.contentKey = null;
    this.opener = null;
    this.header = null; // the chunk header whose binary frame comes next
    this.openings = []; // chunks being opened, oldest first (see #payload)
    this.storing = Promise.resolve(); // the chain that stores them in order
    this.steps = []; // the chain's step for each chunk not yet known to be stored, oldest first
    this.digests = new Map(); // file index -> sealed SHA-256 (several receivers)
    this.fileDigest = null;
    this.epoch = null; // the epoch whose stream is open (or was, before a resume abandoned it)
    this.peer = null; // this receiver's number in the room (its hello)
    this.seatToken = null; // the resume token of this seat, once its verifier is registered
    this.resumes = 0; // seats taken back
    this.resynced = false; // the control keys were drawn anew: the sender's sealed {"received"} may come
    this.chunks = 0; // chunks of the current epoch handled
    this.bytesDone = 0;
    this.fileDone = 0;
    this.lastAck = 0;
    this.outcome = null; // how it ended: {code, reason, by, peer} (see words.js)
    this.startedAt = null;
    this.endedAt = null;
  }

  /** Run until the transfer ends; resolves with the final state. */
  async run() {
    this.hashing = await createHashing();
    this.#setState("connecting");
    try {
      this.connection = await Connection.open(roomUrl(this.nameplate, { role: "receive" }, this.location));
      while (!FINAL_STATES.has(this.state)) {
        let frame;
        try {
          frame = await this.connection.next();
        } catch (error) {
          if (!(error instanceof ConnectionClosed) || error.errorCode !== null || FINAL_STATES.has(this.state)) throw error;
          if (this.verifiedSent) {
            // Every file was authenticated and is stored under its name: only the relay's `complete` was missing
            // (as the terminal client, which keeps its files whatever happens after it verified).
            this.#end("verified", { code: "done", by: "local" });
            break;
          }
          if (this.state !== "transferring" && this.state !== "reconnecting") throw error;
          await this.#resume(); // throws if the seat cannot be taken back
          continue;
        }
        if (FINAL_STATES.has(this.state)) break;
        if (typeof frame === "string") await this.#on(parseMessage(frame));
        else await this.#payload(new Uint8Array(frame));
      }
    } catch (error) {
      await this.#fail(error);
    }
    return this.state;
  }

  /** Accept the offer into `sink` (already chosen by the person); throws SinkError if it cannot hold it. */
  async accept(sink) {
    if (this.state !== "offered") return;
    try {
      await sink.prepare(this.offer);
    } catch (error) {
      if (error instanceof SinkError) this.listener.onState?.("offered", escapeText(error.message));
      throw error;
    }
    if (this.state !== "offered") return;
    this.sink = sink;
    this.accepted = true;
    if (sink.resumable) {
      // Registered before the stream starts, so a drop during it parks this seat instead of ending the room.
      this.seatToken = this.keys.resumeToken(RECEIVER);
      this.connection.sendMessage({ type: "resume_id", verifier: resumeVerifier(this.seatToken) });
    }
    this.connection.sendMessage({ type: "accept", data: await sealJson(this.channel, {}) });
    this.startedAt = Date.now();
    this.#setState("transferring", `saving to ${sink.label}`);
  }

  /** Say no to the offer. The page sends no reason of its own: the sender's page already says it was declined. */
  decline() {
    if (this.state !== "offered") return;
    this.connection.sendMessage({ type: "decline", code: "declined" });
    this.#end("cancelled", { code: "declined", by: "you" });
  }

  cancel() {
    if (FINAL_STATES.has(this.state)) return;
    this.connection?.sendMessage({ type: "cancel" });
    this.#discard();
    this.#end("cancelled", { code: "cancelled", by: "you" });
  }

  /** Bytes of plaintext authenticated and written so far. */
  get done() {
    return this.bytesDone;
  }

  async #on(message) {
    switch (message.type) {
      case "hello":
        if (this.pake !== null) throw unexpected("a second hello");
        this.peer = message.peer;
        this.maxMessage = message.max_message;
        this.receivers = message.receivers;
        this.several = message.receivers > 1;
        this.pake = new Pake(RECEIVER, this.code);
        this.connection.sendMessage({ type: "pake", data: toBase64(this.pake.outbound) });
        this.#setState("keying", "checking the code with the sender");
        return;
      case "pake":
        if (this.pake === null || this.keys !== null) throw unexpected("a PAKE message out of order");
        try {
          this.keys = await this.pake.finish(fromBase64(message.data));
        } catch (error) {
          if (error instanceof CryptoError) this.#wrongCode();
          throw error;
        }
        return;
      case "confirm":
        if (this.keys === null || this.channel !== null) throw unexpected("a confirmation out of order");
        try {
          await this.keys.checkConfirmation(SENDER, fromBase64(message.data));
        } catch (error) {
          if (error instanceof WrongCode) this.#wrongCode();
          throw error;
        }
        this.channel = await this.keys.controlChannel(RECEIVER);
        this.connection.sendMessage({ type: "confirm", data: toBase64(await this.keys.confirmation(RECEIVER)) });
        return;
      case "key":
        if (this.channel === null || this.contentKey !== null) throw unexpected("a content key out of order");
        this.contentKey = await this.keys.openContentKey(fromBase64(message.data));
        this.#setState("waiting", "waiting for the sender's offer");
        return;
      case "offer":
        await this.#offer(message);
        return;
      case "stream":
        await this.#stream(message);
        return;
      case "sealed":
        await this.#sealed(message);
        return;
      case "chunk":
        if (this.opener === null || this.header !== null || message.epoch !== this.epoch) throw unexpected("a chunk header out of order");
        if (message.size > this.maxMessage) throw new ProtocolError(`a chunk of ${message.size} bytes is over max_message`, "size_mismatch");
        this.header = message;
        return;
      case "end":
        if (this.opener === null || this.header !== null || message.epoch !== this.epoch) throw unexpected("'end' out of order");
        await this.storing;
        this.steps = [];
        if (FINAL_STATES.has(this.state) || this.stopping) return; // a chunk failed while it was stored
        this.opener.finish(); // Truncated if the stream stopped before its last chunk
        if (this.verifiedSent) return; // a catch-up epoch for another receiver, after ours had ended
        if (this.verifiedFiles !== this.offer.files.length) throw new Tampered("the stream ended before every file was complete");
        // Every file authenticated: a chosen folder gives the files their names now, a zip writes its table of contents.
        await this.sink.finish?.();
        this.verifiedSent = true;
        this.connection.sendMessage({ type: "verified" });
        this.#setState("verifying", "every file authenticated; waiting for the relay to confirm");
        return;
      case "complete":
        if (this.state !== "verifying") throw unexpected("complete before every file was authenticated");
        this.#end("verified", { code: "done", by: "relay" });
        return;
      case "cancel":
        await this.#discard();
        this.#end("cancelled", { code: "cancelled", by: "peer", peer: message.peer ?? 0 });
        return;
      case "error":
        await this.#discard();
        this.#end("failed", {
          code: message.code, reason: message.message, by: message.peer === null ? "relay" : "peer", peer: message.peer,
        });
        return;
      case "peer_left":
        await this.#discard();
        this.#end("failed", { code: "peer_left", by: "relay", peer: message.role === "send" ? 0 : message.peer });
        return;
      case "reconnecting":
        // Another party's connection dropped: the relay parks its seat and the epoch under way is abandoned.
        if (!this.accepted || message.peer === this.peer) throw unexpected("'reconnecting' out of order");
        await this.#abandonEpoch();
        if (this.verifiedSent) return; // every file is ours already; the others' catch-up epoch is only skipped
        this.#setState("reconnecting", message.peer === 0
          ? "The sender's connection was lost; waiting for it to come back."
          : "Another receiver's connection was lost; waiting for it to come back.");
        return;
      case "resumed":
        if (!this.accepted || message.peer === this.peer) throw unexpected("'resumed' out of order");
        if (message.peer === 0) {
          // The sender came back: this pair draws fresh control keys (the receiver starts), and says what it holds.
          await this.#abandonEpoch();
          await this.#resync();
          if (this.state === "reconnecting" && message.parked.length === 0) this.#setState("transferring", `saving to ${this.sink.label}`);
        } else if (message.parked.length === 0) {
          // Everyone is back: the sender opens its next epoch from what every receiver holds (unchanged keys).
          await this.#abandonEpoch();
          const [file, have] = this.#held();
          this.connection.sendMessage({ type: "sealed", data: await sealJson(this.channel, { file, have }) });
          if (this.state === "reconnecting") this.#setState("transferring", `saving to ${this.sink.label}`);
        }
        return;
      case "dropped":
        // Receivers that did not come back within the resume window: the room goes on without them. Nobody is
        // away any more, so the sender opens its next epoch from what every receiver still in it holds.
        if (!this.accepted || message.peers.includes(this.peer)) throw unexpected("'dropped' out of order");
        if (this.verifiedSent) return;
        await this.#abandonEpoch();
        {
          const [file, have] = this.#held();
          this.connection.sendMessage({ type: "sealed", data: await sealJson(this.channel, { file, have }) });
        }
        if (this.state === "reconnecting") this.#setState("transferring", `saving to ${this.sink.label}`);
        return;
      default:
        throw unexpected(`unexpected '${message.type}' message`);
    }
  }

  // The sealed offer: opened on the pair's channel, checked by the version 1 offer rules, and its totals must be
  // the clear ones the relay checked against its limits.
  async #offer(message) {
    if (this.contentKey === null || this.offer !== null) throw unexpected("an offer out of order");
    const offer = checkOffer(await openJson(this.channel, message.data));
    const total = offer.files.reduce((sum, entry) => sum + entry.size, 0);
    if (total !== message.total_size || offer.files.length !== message.files) {
      throw new Tampered("the offer's clear totals differ from the sealed offer");
    }
    this.offer = offer;
    this.total = total;
    this.#setState("offered", "");
    this.listener.onOffer?.(offer);
  }

  // The sealed plan of an epoch: epoch 0 holds every file whole and in order; an epoch after a resume starts no
  // later than what this page holds ([file, start, size of file], then the files after it whole). A salt of 32
  // bytes, a chunk size the relay's frames can carry, and clear totals that the plan implies.
  async #stream(message) {
    const first = this.epoch === null;
    if (!this.accepted || this.opener !== null || (first ? message.epoch !== 0 : message.epoch <= this.epoch)) {
      throw unexpected("a stream out of order");
    }
    const plan = await openJson(this.channel, message.data);
    const files = this.offer.files;
    const [heldFile, heldBytes] = this.#held();
    const start = plan !== null && typeof plan === "object" && Array.isArray(plan.segments) ? plan.segments[0] : null;
    let expected = null;
    if (Array.isArray(start) && start.length === 3 && start.every(Number.isSafeInteger)) {
      const [file, from] = start;
      const notAfter = file < heldFile || (file === heldFile && from <= heldBytes);
      if (file >= 0 && file < files.length && from >= 0 && from <= files[file].size && notAfter) {
        expected = [[file, from, files[file].size], ...files.slice(file + 1).map((entry, i) => [file + 1 + i, 0, entry.size])];
      }
    }
    const valid = expected !== null && typeof plan.salt === "string"
      && Number.isSafeInteger(plan.chunk_size) && plan.chunk_size >= 1 && plan.chunk_size <= this.maxMessage
      && JSON.stringify(plan.segments) === JSON.stringify(expected);
    if (!valid) throw new Tampered("the sealed plan does not match the offer");
    let salt;
    try {
      salt = fromBase64(plan.salt);
    } catch {
      throw new Tampered("the sealed plan's salt is not base64");
    }
    if (salt.length !== EPOCH_SALT_SIZE) throw new Tampered("the sealed plan's salt has the wrong length");
    const streamPlan = new StreamPlan(expected.map(([file, from, end]) => ({ file, start: from, end })), plan.chunk_size);
    if (streamPlan.chunkCount() !== message.chunks || streamPlan.ciphertextSize() !== message.bytes) {
      throw new Tampered("the stream's clear totals differ from its sealed plan");
    }
    this.opener = await StreamOpener.create(await dataKey(this.contentKey, salt), streamPlan, chunkBackend());
    this.epoch = message.epoch;
    this.chunks = 0;
    if (this.state === "reconnecting") this.#setState("transferring", `saving to ${this.sink.label}`);
  }

  // With several receivers, the sender seals each file's SHA-256 to each of them before the file's last chunk.
  async #sealed(message) {
    if (this.channel === null) throw unexpected("a sealed message before keying");
    const note = await openJson(this.channel, message.data);
    if (this.resynced && note !== null && typeof note === "object" && Number.isSafeInteger(note.received)) {
      this.resynced = false; // the sender's proof that it holds the pair key, after a resync
      return;
    }
    // After a resume the sender seals the digest of the file it starts in again.
    const valid = this.several && this.offer !== null && note !== null && typeof note === "object"
      && Number.isInteger(note.file) && note.file >= 0 && note.file < this.offer.files.length
      && typeof note.sha256 === "string" && SHA256_RE.test(note.sha256)
      && (!this.digests.has(note.file) || this.epoch > 0);
    if (!valid) throw unexpected("a sealed message this receiver does not expect");
    this.digests.set(note.file, note.sha256);
  }

  // One ciphertext chunk: its transport checksum, then it starts opening at the position the plan expects next.
  // Up to OPEN_AHEAD chunks open at once (WebCrypto works off the page's thread); they are stored in order, and
  // nothing of a chunk is written before it authenticated.
  async #payload(bytes) {
    const header = this.header;
    if (header === null || this.opener === null) throw unexpected("binary frame without a chunk header");
    if (bytes.length !== header.size) {
      throw new ProtocolError(`payload of ${bytes.length} bytes, header said ${header.size}`, "size_mismatch");
    }
    if (this.hashing.chunkDigest(bytes) !== header.xxh3_64) {
      throw new ProtocolError(`chunk ${this.chunks + this.openings.length} failed its xxh3_64 check`, "checksum_mismatch");
    }
    this.header = null;
    // Tampered unless it is the chunk the plan expects here. Its buffer goes to the encryption worker (transferred,
    // not copied): `bytes` is empty from here on.
    const opening = this.opener.openNext(bytes);
    opening.catch(() => {}); // looked at in its turn; a transfer that ended first never does
    this.openings.push(opening);
    // Stored as soon as it opened and the chunk before it was stored; a failure ends the session from here (the
    // loop may be waiting for a frame that the sender will never send).
    this.storing = this.storing
      .then(() => (FINAL_STATES.has(this.state) || this.stopping ? undefined : this.#storeOldest()))
      .catch((error) => this.#fail(error));
    this.steps.push(this.storing);
    if (this.steps.length >= OPEN_AHEAD) await this.steps.shift();
  }

  // Store the oldest chunk once it authenticated: open its file at its first chunk, commit it at its last.
  async #storeOldest() {
    const chunk = await this.openings.shift();
    this.chunks += 1;
    // After a resume the epoch may start before what this page holds (another receiver was behind, or the
    // sender resends a last chunk): authenticated bytes it already has are skipped, never written twice.
    const [current, have] = this.#held();
    if (chunk.file < current || (chunk.offset + chunk.plaintext.length <= have && !chunk.last)) return;
    if (chunk.file !== current || chunk.offset > have) {
      throw new Tampered(`file ${chunk.file}: a chunk at ${chunk.offset} after only ${have} bytes`);
    }
    const plaintext = chunk.offset === have ? chunk.plaintext : chunk.plaintext.slice(have - chunk.offset);
    if (!this.fileOpen) {
      await this.sink.openFile(chunk.file, this.offer.files[chunk.file]);
      this.fileOpen = true;
      this.fileDone = 0;
      if (this.several) this.fileDigest = this.hashing.newFileDigest();
    }
    const length = plaintext.length;
    // Hashed before it is written: a download sink hands the buffer over to the service worker (it is detached).
    this.fileDigest?.update(plaintext);
    if (length > 0) await this.sink.write(plaintext);
    this.bytesDone += length;
    this.fileDone += length;
    if (chunk.last) {
      if (this.several && this.digests.get(chunk.file) !== this.fileDigest.hexdigest()) {
        throw new Tampered(`file ${chunk.file} does not match the sender's sealed SHA-256`);
      }
      this.fileOpen = false;
      await this.sink.closeFile();
      this.verifiedFiles += 1;
    }
    if (chunk.last || this.bytesDone - this.lastAck >= ACK_INTERVAL) {
      this.lastAck = this.bytesDone;
      this.connection.sendMessage({ type: "ack", epoch: this.epoch, chunks: this.chunks });
    }
    this.#progress(chunk.file, chunk.last ? this.offer.files[chunk.file].size : this.fileDone);
  }

  // [file in progress, bytes of it written]: files are stored in order, so every file before it is complete.
  #held() {
    return [this.verifiedFiles, this.fileOpen ? this.fileDone : 0];
  }

  // The epoch under way will not finish (a party's connection dropped): store every chunk that arrived whole, and
  // wait for the sender's next epoch.
  async #abandonEpoch() {
    this.header = null;
    this.opener = null;
    await this.storing;
    this.openings = [];
    this.steps = [];
  }

  // This page's socket broke without a close code. Take the seat back (bounded attempts with backoff within the
  // resume window, connection.js), draw fresh control keys with the sender and tell it what we hold; or end plainly.
  async #resume() {
    await this.#abandonEpoch();
    if (FINAL_STATES.has(this.state) || this.stopping) return;
    if (this.seatToken === null) {
      throw new ConnectionLost("a download to the downloads folder cannot continue where it stopped", "not_resumable");
    }
    let next = null;
    const { taken, attempts } = await withBackoff({
      onAttempt: (attempt) => this.#setState("reconnecting", `Connection lost, reconnecting (attempt ${attempt})`),
      stopped: () => FINAL_STATES.has(this.state), // the person cancelled meanwhile
      attempt: async () => {
        next = await nextResumeToken(this.seatToken);
        const url = roomUrl(this.nameplate, { role: "receive", resume: "1" }, this.location);
        return requestSeat(url, {
          type: "resume", peer: this.peer, token: hex(this.seatToken), next_verifier: resumeVerifier(next),
          room: { receivers: this.receivers, total_size: this.total, files: this.offer.files.length },
        }, this.peer);
      },
    });
    if (FINAL_STATES.has(this.state)) {
      taken?.[0].close(1000);
      return;
    }
    if (taken === null) throw new ConnectionLost(`the connection to the relay was lost and could not be restored (${attempts} attempts)`);
    const [connection, resumed] = taken;
    this.seatToken = next; // each token is good once: the relay now holds the next one's verifier
    this.connection = connection;
    this.resumes += 1;
    if (resumed.parked.includes(0)) {
      // The sender is away too (a relay restart drops everyone): we resync when it comes back (its `resumed`).
      this.#setState("reconnecting", "Connection restored; waiting for the sender to come back.");
      return;
    }
    await this.#resync();
    this.#setState("transferring", `saving to ${this.sink.label} (connection restored)`);
  }

  // Fresh control keys for this pair: our half, the sender's, then our position sealed under the new keys.
  async #resync() {
    const half = newResyncHalf();
    this.connection.sendMessage({ type: "resync", half: toBase64(half) });
    let message = null;
    for (let read = 0; read < MAX_RESUME_NOISE && message === null; read++) {
      const frame = await this.connection.next();
      if (typeof frame !== "string") throw unexpected("a binary frame before the sender's resync");
      const next = parseMessage(frame);
      if (next.type === "resync") message = next;
      else if (ENDINGS.has(next.type)) {
        await this.#on(next); // the room ended meanwhile: say why
        return;
      } else if (!["resumed", "reconnecting", "dropped"].includes(next.type)) throw unexpected(`'${next.type}' before the sender's resync`);
    }
    if (message === null) throw unexpected("the sender did not resync");
    const received = this.channel.received;
    this.channel = await this.keys.controlChannel(RECEIVER, concatBytes(fromBase64(message.half), half));
    this.resynced = true;
    const [file, have] = this.#held();
    this.connection.sendMessage({ type: "sealed", data: await sealJson(this.channel, { received, file, have }) });
  }

  // The code was not the sender's: tell the relay, which ends the room for everyone (the code is spent).
  #wrongCode() {
    this.connection.sendMessage({ type: "wrong_code" });
    this.#end("failed", { code: "wrong_code", by: "local" });
  }

  // Throw away the file being written; a sink that keeps nothing unless everything arrived (a zip, a chosen
  // folder) also throws away the files written whole. Resolves once that is done.
  async #discard() {
    this.stopping = true; // the chain that stores chunks stores no more
    const sink = this.sink;
    if (sink === null) return;
    const open = this.fileOpen;
    this.fileOpen = false;
    try {
      if (sink.abortAll) await sink.abortAll();
      else if (open) await sink.abortFile();
    } catch {
      // nothing more to do: the failure that brought us here is what the person needs to read
    }
  }

  #progress(file, fileDone) {
    this.listener.onProgress?.({
      done: this.bytesDone,
      total: this.total,
      file,
      fileDone,
      verifiedFiles: this.verifiedFiles,
    });
  }

  async #fail(error) {
    if (FINAL_STATES.has(this.state)) return;
    await this.#discard();
    if (FINAL_STATES.has(this.state)) return;
    if (error instanceof ConnectionLost) {
      this.#end("failed", { code: error.code, by: "local" });
      return;
    }
    if (error instanceof ConnectionClosed) {
      const code = error.errorCode ?? "connection_lost";
      this.#end(code === "cancelled" ? "cancelled" : "failed", { code, reason: error.reason, by: "relay" });
      return;
    }
    if (error instanceof CryptoError) {
      // Something did not authenticate: the room ends for everyone. The words sent in clear name no file.
      const code = error instanceof WrongCode ? "wrong_code" : "tampered";
      this.connection?.sendMessage({ type: "error", code, message: "a sealed message or chunk did not authenticate" });
      this.#end("failed", { code, by: "local" });
      return;
    }
    const code = error instanceof ProtocolError || error instanceof SinkError ? error.code : "internal_error";
    // The relay reads what goes in clear: the code says what happened, the details (which may name a file) stay here.
    this.connection?.sendMessage({ type: "error", code, message: "the receiving page stopped the transfer" });
    this.#end("failed", { code, reason: escapeText(error.message), by: "local" });
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
    if (FINAL_STATES.has(state)) this.connection?.close(1000);
    this.listener.onState?.(state, detail);
  }
}
