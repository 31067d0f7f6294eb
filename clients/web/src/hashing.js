// The digests one transfer needs, with hash-wasm (WebAssembly, streaming):
//   XXH3-64 of each ciphertext chunk (seed 0, lower-case hex): the transport checksum the relay checks and
//     forwards (tests/web/test_protocol_js.py checks it against Python's xxhash byte for byte);
//   SHA-256 of each file's plaintext, which the sender seals to every receiver when there are several
//     (docs/protocol.md section 8.3: receivers share the content key, so a chunk alone does not prove its sender).
// Hashing runs on the main thread: at several hundred MB/s or more for 1 MiB chunks it costs less than moving the
// chunk into a worker would.

import { createSHA256, createXXHash3 } from "hash-wasm";

/**
 * Create the hashers one transfer needs. Each session gets its own, because a file digest is a running
 * state: at most one file digest of a session is open at a time (files travel one after another).
 */
export async function createHashing() {
  const chunkHasher = await createXXHash3(0, 0);
  const fileHasher = await createSHA256();
  return {
    /** XXH3-64 of one chunk's bytes, as 16 hex digits. */
    chunkDigest(bytes) {
      chunkHasher.init();
      chunkHasher.update(bytes);
      return chunkHasher.digest("hex");
    },
    /** Start a new running SHA-256 over a whole file (this ends any previous one). */
    newFileDigest() {
      fileHasher.init();
      return {
        update: (bytes) => fileHasher.update(bytes),
        hexdigest: () => fileHasher.digest("hex"),
      };
    },
  };
}
