// One WebSocket to the relay, turned into a pull-style reader: `await connection.next()` yields frames in
// order, so a session can be written as a plain loop. Sending respects bufferedAmount.

import { PROTOCOL_VERSION, encodeMessage, errorCodeOfClose } from "./protocol.js";

const DRAIN_POLL_MS = 4;
/** How often a full send buffer is looked at again (through the tick worker, so also in a background tab). */
const DRAIN_TICK_MS = 2;

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
