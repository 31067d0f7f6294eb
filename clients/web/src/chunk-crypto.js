// The data path's AES-256-GCM on a dedicated worker (aead-worker.js), as a crypto.js backend: `aead(key)` gives
// the same {seal, open} as webCryptoBackend, so ChunkCipher, StreamSealer and StreamOpener (and their nonces and
// associated data, checked against Python in tests/web/test_crypto_js.py) are unchanged. Only the chunks go
// there: control messages are few and small and stay on the page's thread.
//
// Where there is no worker, or it does not answer at once, the chunks are sealed on the page's thread
// (defaultBackend), as before.
//
// Every chunk's buffer is *transferred* to the worker and its result transferred back, never copied: cloning a
// 1 MiB chunk costs an allocation and a copy on each side of postMessage (about 1 ms per MiB here, where the
// whole transfer has a budget of about 12). So `seal` and `open` take the chunk's buffer: once called, the
// caller's Uint8Array is detached (length 0), and it must not read it again (hash it first).

import { CryptoError, defaultBackend } from "./crypto.js";

const READY_TIMEOUT_MS = 5000;

let shared;

/** A Uint8Array that owns its whole buffer, so that transferring its buffer hands over exactly these bytes. */
function whole(bytes) {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
}

class AeadWorker {
  constructor(worker) {
    this.worker = worker;
    this.pending = new Map();
    this.nextId = 0;
    worker.addEventListener("message", (event) => {
      const { id, error } = event.data;
      const waiter = this.pending.get(id);
      this.pending.delete(id);
      if (!waiter) return;
      if (error !== undefined) waiter.reject(new CryptoError(`the encryption worker failed: ${error}`, "internal_error"));
      else waiter.resolve(event.data);
    });
    worker.addEventListener("error", () => {
      for (const waiter of this.pending.values()) waiter.reject(new CryptoError("the encryption worker stopped", "internal_error"));
      this.pending.clear();
    });
  }

  /** Post `message`, handing over the buffers in `transfer`; resolves with the worker's answer. */
  request(message, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...message, id }, transfer);
    });
  }
}

async function start() {
  if (typeof Worker !== "function" || !globalThis.crypto?.subtle) return null;
  let worker;
  try {
    worker = new AeadWorker(new Worker(new URL("aead-worker.js", document.baseURI)));
  } catch {
    return null;
  }
  // One key import as the proof that the worker loaded and has WebCrypto.
  const probe = worker.request({ op: "key", key: new Uint8Array(32) }).then(() => worker, () => null);
  const late = new Promise((resolve) => setTimeout(() => resolve(null), READY_TIMEOUT_MS));
  const ready = await Promise.race([probe, late]);
  if (ready === null) worker.worker.terminate();
  return ready;
}

/** The backend for chunk ciphers: the worker when it runs here, else the page's own (defaultBackend). */
export function chunkBackend() {
  if (shared === undefined) {
    const fallback = defaultBackend();
    const worker = start();
    shared = {
      ...fallback,
      async aead(key) {
        const running = await worker;
        if (running === null) return fallback.aead(key);
        const { keyId } = await running.request({ op: "key", key: whole(key) });
        const call = async (op, nonce, aad, bytes) => {
          const owned = whole(bytes);
          const { out } = await running.request({ op, keyId, nonce, aad, bytes: owned }, [owned.buffer]);
          return out === null ? null : new Uint8Array(out);
        };
        return {
          seal: (nonce, aad, plaintext) => call("seal", nonce, aad, plaintext),
          open: (nonce, aad, sealed) => call("open", nonce, aad, sealed),
        };
      },
    };
  }
  return shared;
}
