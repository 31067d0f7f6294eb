// The receiving side of one transfer (protocol version 2, end-to-end encrypted), without any DOM: join the room
// of the code's nameplate as role=receive, run the PAKE with the sender (its confirmation is checked before ours
// is sent), open the sealed content key and the sealed offer, and once the person accepts, open every chunk at
// the position the sealed plan says comes next before anything is written to the sink. A file is committed only
// at its authenticated last chunk (and, with several receivers, once its sealed SHA-256 matched).

import { Connection, ConnectionClosed, roomUrl } from "./connection.js";
import {
  CryptoError,
  EPOCH_SALT_SIZE,
  Pake,
  RECEIVER,
  SENDER,
  StreamOpener,
  StreamPlan,
  Tampered,
  WrongCode,
  dataKey,
  splitCode,
} from "./crypto.js";
import { createHashing } from "./hashing.js";
import { ACK_INTERVAL, ProtocolError, checkOffer, escapeText, fromBase64, parseMessage, toBase64, unexpected } from "./protocol.js";
import { openJson, sealJson } from "./sealing.js";
import { EPOCH, FINAL_STATES } from "./sender.js";
import { SinkError } from "./sinks.js";

const SHA256_RE = /^[0-9a-f]{64}$/;
/** Chunks opening at once before the oldest is stored. */
const OPEN_AHEAD = 4;

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
    this.chunks = 0;
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
        const frame = await this.connection.next();
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
        this.maxMessage = message.max_message;
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
        if (this.opener === null || this.header !== null || message.epoch !== EPOCH) throw unexpected("a chunk header out of order");
        if (message.size > this.maxMessage) throw new ProtocolError(`a chunk of ${message.size} bytes is over max_message`, "size_mismatch");
        this.header = message;
        return;
      case "end":
        if (this.opener === null || this.header !== null || message.epoch !== EPOCH) throw unexpected("'end' out of order");
        await this.storing;
        this.steps = [];
        if (FINAL_STATES.has(this.state) || this.stopping) return; // a chunk failed while it was stored
        this.opener.finish(); // Truncated if the stream stopped before its last chunk
        if (this.verifiedFiles !== this.offer.files.length) throw new Tampered("the stream ended before every file was complete");
        // Every file authenticated: a chosen folder gives the files their names now, a zip writes its table of contents.
        await this.sink.finish?.();
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

  // The sealed plan of the epoch: every file whole and in order (this version has no resume), a salt of 32
  // bytes, a chunk size the relay's frames can carry, and clear totals that the plan implies.
  async #stream(message) {
    if (!this.accepted || this.opener !== null || message.epoch !== EPOCH) throw unexpected("a stream out of order");
    const plan = await openJson(this.channel, message.data);
    const expected = this.offer.files.map((entry, file) => [file, 0, entry.size]);
    const valid = plan !== null && typeof plan === "object" && typeof plan.salt === "string"
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
    const streamPlan = new StreamPlan(expected.map(([file, start, end]) => ({ file, start, end })), plan.chunk_size);
    if (streamPlan.chunkCount() !== message.chunks || streamPlan.ciphertextSize() !== message.bytes) {
      throw new Tampered("the stream's clear totals differ from its sealed plan");
    }
    this.opener = await StreamOpener.create(await dataKey(this.contentKey, salt), streamPlan);
  }

  // With several receivers, the sender seals each file's SHA-256 to each of them before the file's last chunk.
  async #sealed(message) {
    if (this.channel === null) throw unexpected("a sealed message before keying");
    const note = await openJson(this.channel, message.data);
    const valid = this.several && this.offer !== null && note !== null && typeof note === "object"
      && Number.isInteger(note.file) && note.file >= 0 && note.file < this.offer.files.length
      && typeof note.sha256 === "string" && SHA256_RE.test(note.sha256) && !this.digests.has(note.file);
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
    const opening = this.opener.openNext(bytes); // Tampered unless it is the chunk the plan expects here
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
    if (!this.fileOpen) {
      await this.sink.openFile(chunk.file, this.offer.files[chunk.file]);
      this.fileOpen = true;
      this.fileDone = 0;
      if (this.several) this.fileDigest = this.hashing.newFileDigest();
    }
    const length = chunk.plaintext.length;
    // Hashed before it is written: a download sink hands the buffer over to the service worker (it is detached).
    this.fileDigest?.update(chunk.plaintext);
    if (length > 0) await this.sink.write(chunk.plaintext);
    this.chunks += 1;
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
      this.connection.sendMessage({ type: "ack", epoch: EPOCH, chunks: this.chunks });
    }
    this.#progress(chunk.file, chunk.last ? this.offer.files[chunk.file].size : this.fileDone);
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
