// The receiving side of one transfer, without any DOM: join a room as role=receive, show the offer, and
// once the person accepts, check every chunk and file digest (TransferCheck) before storing it in a sink.

import { Connection, ConnectionClosed, roomUrl } from "./connection.js";
import { createHashing } from "./hashing.js";
import { ACK_INTERVAL, ProtocolError, TransferCheck, clipText, escapeText, parseMessage } from "./protocol.js";
import { FINAL_STATES } from "./sender.js";
import { SinkError } from "./sinks.js";

/**
 * One receive from room `code`. Listener methods (all optional): onState(state, detail), onOffer(offer),
 * onProgress({done, total, file, fileDone, verifiedFiles}).
 * States: connecting, waiting (for the offer), offered, transferring, verified, failed, cancelled.
 */
export class ReceiveSession {
  constructor(code, { listener = {}, location = window.location } = {}) {
    this.code = code;
    this.listener = listener;
    this.location = location;
    this.state = "idle";
    this.offer = null;
    this.sink = null;
    this.check = null;
    this.fileOpen = false;
    this.lastAck = 0;
    this.verifiedFiles = 0;
    this.maxMessage = undefined;
    this.outcome = null; // how it ended: {code, reason, by, peer} (see words.js)
    this.startedAt = null;
    this.endedAt = null;
  }

  /** Run until the transfer ends; resolves with the final state. */
  async run() {
    this.hashing = await createHashing();
    this.#setState("connecting");
    try {
      this.connection = await Connection.open(roomUrl(this.code, { role: "receive" }, this.location));
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
    this.check = new TransferCheck(this.offer, this.hashing, this.maxMessage);
    this.connection.sendMessage({ type: "accept" });
    this.startedAt = Date.now();
    this.#setState("transferring", `saving to ${sink.label}`);
  }

  /** Say no to the offer. The page sends no reason of its own: the sender's page already says it was declined. */
  decline(reason = "") {
    if (this.state !== "offered") return;
    this.connection.sendMessage({ type: "decline", reason: clipText(reason) });
    this.#end("cancelled", { code: "declined", by: "you" });
  }

  cancel(reason = "cancelled by the receiver") {
    if (FINAL_STATES.has(this.state)) return;
    this.connection?.sendMessage({ type: "cancel", reason: clipText(reason) });
    this.#discardOpenFile();
    this.#end("cancelled", { code: "cancelled", by: "you" });
  }

  async #on(message) {
    switch (message.type) {
      case "hello":
        this.maxMessage = message.max_message;
        this.#setState("waiting", "waiting for the sender's offer");
        return;
      case "offer":
        if (this.offer !== null) throw new ProtocolError("a second offer", "unexpected_message");
        this.offer = message;
        this.total = message.files.reduce((sum, entry) => sum + entry.size, 0);
        this.#setState("offered", "");
        this.listener.onOffer?.(message);
        return;
      case "chunk":
        this.#requireAccepted(message);
        this.check.chunk(message);
        return;
      case "file_done":
        this.#requireAccepted(message);
        await this.#fileDone(message);
        return;
      case "done":
        this.#requireAccepted(message);
        this.check.done();
        await this.sink.finish?.(); // a zip writes its table of contents here
        this.connection.sendMessage({ type: "verified" });
        this.#setState("verifying", "every file checked; waiting for the relay to confirm");
        return;
      case "complete":
        if (!this.check || !this.check.finished) throw new ProtocolError("complete before done", "unexpected_message");
        this.#end("verified", { code: "done", by: "relay" });
        return;
      case "cancel":
        this.#discardOpenFile();
        this.#end("cancelled", { code: "cancelled", reason: message.reason, by: "peer", peer: message.peer ?? 0 });
        return;
      case "error":
        this.#discardOpenFile();
        this.#end("failed", {
          code: message.code, reason: message.message, by: message.peer === null ? "relay" : "peer", peer: message.peer,
        });
        return;
      case "peer_left":
        this.#discardOpenFile();
        this.#end("failed", { code: "peer_left", by: "relay", peer: message.role === "send" ? 0 : message.peer });
        return;
      default:
        throw new ProtocolError(`unexpected '${message.type}' message`, "unexpected_message");
    }
  }

  #requireAccepted(message) {
    if (this.check === null) throw new ProtocolError(`'${message.type}' before the offer was accepted`, "unexpected_message");
  }

  async #payload(bytes) {
    if (this.check === null) throw new ProtocolError("binary frame before the offer was accepted", "unexpected_message");
    const header = this.check.payload(bytes); // checks length and xxh3_64 before anything is stored
    await this.#ensureOpen(header.file);
    await this.sink.write(bytes);
    if (this.check.offset - this.lastAck >= ACK_INTERVAL) {
      this.lastAck = this.check.offset;
      this.connection.sendMessage({ type: "ack", file: header.file, offset: this.check.offset });
    }
    this.#progress(header.file, this.check.offset);
  }

  async #fileDone(message) {
    const index = this.check.fileIndex;
    await this.#ensureOpen(message.file);
    this.check.fileDone(message); // throws on a size or xxh3_128 mismatch; the file is then discarded
    this.fileOpen = false;
    await this.sink.closeFile();
    this.verifiedFiles += 1;
    this.lastAck = 0;
    this.connection.sendMessage({ type: "ack", file: index, offset: message.size });
    this.connection.sendMessage({ type: "file_ok", file: index });
    this.#progress(index, message.size);
  }

  async #ensureOpen(index) {
    if (this.fileOpen || index !== this.check.fileIndex || index >= this.offer.files.length) return;
    await this.sink.openFile(index, this.offer.files[index]);
    this.fileOpen = true;
  }

  #discardOpenFile() {
    if (this.fileOpen && this.sink) {
      this.fileOpen = false;
      this.sink.abortFile();
    }
    // A sink that keeps nothing unless everything arrived (a zip) stops its download as a whole.
    this.sink?.abortAll?.();
  }

  #progress(file, fileDone) {
    this.listener.onProgress?.({
      done: this.check.bytesDone,
      total: this.total,
      file,
      fileDone,
      verifiedFiles: this.verifiedFiles,
    });
  }

  async #fail(error) {
    if (FINAL_STATES.has(this.state)) return;
    this.#discardOpenFile();
    if (error instanceof ConnectionClosed) {
      const code = error.errorCode ?? "connection_lost";
      this.#end(code === "cancelled" ? "cancelled" : "failed", { code, reason: error.reason, by: "relay" });
      return;
    }
    const code = error instanceof ProtocolError || error instanceof SinkError ? error.code : "internal_error";
    this.connection?.sendMessage({ type: "error", code, message: clipText(error.message) });
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
