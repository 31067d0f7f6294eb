// One WebSocket to the relay, turned into a pull-style reader: `await connection.next()` yields frames in
// order, so a session can be written as a plain loop. Sending respects bufferedAmount.

import { CLOSE_CODES, PROTOCOL_VERSION, encodeMessage, errorCodeOfClose, parseMessage } from "./protocol.js";

const DRAIN_POLL_MS = 4;
/**
 * How often a full send buffer is looked at again (through the tick worker, so also in a background tab). The
 * buffer holds 16 MiB when the sender waits (a quarter of a second of sending here), so 10 ms of lateness never
 * lets it run dry; every look costs two wake-ups (worker and page), and at 2 ms they cost the sending page about
 * 0.5 ms of CPU per MiB sent (docs/design/speed.md, issue 10).
 */
const DRAIN_TICK_MS = 10;

let ticker;

/**
 * Sleep about `ms` milliseconds without the page's own timers, which a hidden tab throttles to about one per
 * second: a dedicated worker (tick.js) answers after `ms`. Falls back to setTimeout where workers are missing.
 */
function tick(ms) {
  if (ticker === undefined) {
    ticker = null;
    try {
      // Relative to the page, like every URL it uses (it may be served under a proxy's path prefix).
      if (typeof Worker === "function") ticker = { worker: new Worker(new URL("tick.js", document.baseURI)), waiters: [] };
    } catch {
      ticker = null;
    }
    if (ticker !== null) {
      const current = ticker;
      current.worker.addEventListener("message", () => current.waiters.shift()?.());
      current.worker.addEventListener("error", () => {
        // No worker after all (blocked or failed to load): wake everyone and use timers from now on.
        ticker = null;
        for (const waiter of current.waiters.splice(0)) waiter();
      });
    }
  }
  if (ticker === null) return new Promise((resolve) => setTimeout(resolve, ms));
  const current = ticker;
  return new Promise((resolve) => {
    current.waiters.push(resolve);
    current.worker.postMessage({ type: "sleep", ms });
  });
}

/**
 * The WebSocket URL for protocol version 2 on the relay that served this page, relative to the page (so a page
 * served at https://host/relay/ talks to wss://host/relay/ws, behind a proxy with a path prefix). A sender names
 * no room (`nameplate` null: the relay allocates one and says it in `hello`); a receiver names the nameplate.
 * Only the nameplate ever goes into a URL, never the secret words of the code.
 */
export function roomUrl(nameplate, params, location = window.location) {
  const url = new URL(nameplate === null ? "ws" : `ws/${encodeURIComponent(nameplate)}`, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = new URLSearchParams({ ...params, v: String(PROTOCOL_VERSION) }).toString();
  return url.href;
}

/** A closed socket: `code` is the WebSocket close code, `errorCode` the protocol error it stands for. */
export class ConnectionClosed extends Error {
  constructor(code, reason) {
    super(reason || `the connection to the relay closed (code ${code})`);
    this.name = "ConnectionClosed";
    this.code = code;
    this.reason = reason;
    this.errorCode = errorCodeOfClose(code);
  }
}

export class Connection {
  /** Open a socket; resolves once it is open, rejects with ConnectionClosed if it never opens. */
  static open(url) {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url);
      socket.binaryType = "arraybuffer";
      const connection = new Connection(socket);
      socket.addEventListener("open", () => resolve(connection), { once: true });
      socket.addEventListener(
        "close",
        (event) => reject(new ConnectionClosed(event.code, event.reason)),
        { once: true },
      );
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.queue = [];
    this.waiter = null;
    this.closeEvent = null;
    this.queuedBytes = 0;
    socket.addEventListener("message", (event) => this.#push(event.data));
    socket.addEventListener("close", (event) => {
      this.closeEvent = { code: event.code, reason: event.reason };
      this.#wake();
    });
  }

  /**
   * The next frame: a string (text frame) or an ArrayBuffer (binary frame). Throws ConnectionClosed once
   * every frame received before the close has been read.
   */
  async next() {
    while (this.queue.length === 0) {
      if (this.closeEvent !== null) throw new ConnectionClosed(this.closeEvent.code, this.closeEvent.reason);
      await new Promise((resolve) => {
        this.waiter = resolve;
      });
    }
    const frame = this.queue.shift();
    if (typeof frame !== "string") this.queuedBytes -= frame.byteLength;
    return frame;
  }

  get isOpen() {
    return this.socket.readyState === WebSocket.OPEN;
  }

  get bufferedAmount() {
    return this.socket.bufferedAmount;
  }

  sendMessage(message) {
    if (this.isOpen) this.socket.send(encodeMessage(message));
  }

  sendBinary(bytes) {
    if (this.isOpen) this.socket.send(bytes);
  }

  /**
   * Wait until at most `limit` bytes are queued for sending and `blocked()` (if given) is false, or the socket
   * is closed.
   */
  async drain(limit, blocked = () => false) {
    while (this.isOpen && (this.socket.bufferedAmount > limit || blocked())) await tick(DRAIN_TICK_MS);
  }

  /** Wait until everything queued has been handed to the network, at most `timeoutMs`. */
  async flush(timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    while (this.isOpen && this.socket.bufferedAmount > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
  }

  close(code = 1000, reason = "") {
    if (this.socket.readyState === WebSocket.CONNECTING || this.socket.readyState === WebSocket.OPEN) {
      this.socket.close(code, reason);
    }
  }

  #push(data) {
    this.queue.push(data);
    if (typeof data !== "string") this.queuedBytes += data.byteLength;
    this.#wake();
  }

  #wake() {
    const waiter = this.waiter;
    this.waiter = null;
    if (waiter) waiter();
  }
}

// --- taking a seat back (docs/protocol.md section 10) ----------------------------------------------------------

// As the terminal client (clients/transfer.py): at most 30 attempts within the relay's default resume window,
// waiting 0.2 s before the first and doubling up to 10 s; each attempt waits at most 30 s for the relay's answer.
// Refusals worth another attempt: the relay may not have noticed the drop yet, or may be restarting.
export const RESUME_WINDOW_MS = 300_000;
export const MAX_RECONNECT_ATTEMPTS = 30;
export const RECONNECT_BACKOFF_MS = 200;
export const MAX_BACKOFF_MS = 10_000;
const RESUME_ANSWER_MS = 30_000;
const RETRY_CODES = new Set(["resume_refused", "room_not_found", "rate_limited", "too_many_connections"]);
/** Messages read while waiting for one answer (others' `resumed`/`reconnecting`) before trying again. */
export const MAX_RESUME_NOISE = 64;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Try `attempt(number)` until it gives something other than null: at most MAX_RECONNECT_ATTEMPTS times within
 * RESUME_WINDOW_MS, waiting RECONNECT_BACKOFF_MS before the first and doubling up to MAX_BACKOFF_MS. Before each
 * attempt `onAttempt(number)` (to say so) and, after the wait, `stopped()`: true (the person cancelled, the room
 * ended) ends it at once. Resolves {taken, attempts}; `taken` is null if it stopped or no attempt succeeded. An
 * attempt that throws ends it too (a refusal not worth repeating). `wait` and `now` are the clock.
 */
export async function withBackoff({ attempt, stopped, onAttempt = () => {}, wait = sleep, now = Date.now }) {
  const deadline = now() + RESUME_WINDOW_MS;
  let attempts = 0;
  while (attempts < MAX_RECONNECT_ATTEMPTS && now() < deadline) {
    attempts += 1;
    onAttempt(attempts);
    await wait(Math.min(RECONNECT_BACKOFF_MS * 2 ** (attempts - 1), MAX_BACKOFF_MS, Math.max(0, deadline - now())));
    if (stopped()) return { taken: null, attempts };
    const taken = await attempt(attempts);
    if (taken !== null) return { taken, attempts };
  }
  return { taken: null, attempts };
}

/**
 * One attempt at taking seat `peer` back: a `resume=1` socket to `url`, the `resume` message (the seat's proof,
 * and the room's shape from which a restarted relay recreates the room), and the relay's `resumed` for this seat:
 * resolves [connection, resumed]. Null when it is worth trying again (no socket, a refusal in RETRY_CODES, no
 * answer within RESUME_ANSWER_MS, or only other messages); a refusal that is not throws ConnectionClosed.
 */
export async function requestSeat(url, resume, peer) {
  let connection;
  try {
    connection = await Connection.open(url);
  } catch (error) {
    if (error instanceof ConnectionClosed) return null;
    throw error;
  }
  connection.sendMessage(resume);
  const timer = setTimeout(() => connection.close(1000), RESUME_ANSWER_MS);
  try {
    for (let read = 0; read < MAX_RESUME_NOISE; read++) {
      const frame = await connection.next();
      if (typeof frame !== "string") break;
      const message = parseMessage(frame);
      if (message.type === "resumed" && message.peer === peer) return [connection, message];
      if (message.type === "error") {
        if (RETRY_CODES.has(message.code)) break;
        throw new ConnectionClosed(CLOSE_CODES[message.code], message.message);
      }
      if (message.type !== "resumed" && message.type !== "reconnecting") break;
    }
  } catch (error) {
    if (!(error instanceof ConnectionClosed) || (error.errorCode !== null && !RETRY_CODES.has(error.errorCode))) {
      connection.close(1000);
      throw error;
    }
  } finally {
    clearTimeout(timer);
  }
  connection.close(1000);
  return null;
}
