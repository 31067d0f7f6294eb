// Chunk and file digests of the protocol (XXH3-64 and XXH3-128, seed 0, lower-case hex) with hash-wasm.
//
// hash-wasm's streaming XXH3 matches Python's xxhash byte for byte (tests/web/test_protocol_js.py checks it).
// Hashing runs on the main thread: at several GB/s for 1 MiB chunks it costs well under a millisecond per
// chunk, less than moving the chunk into a worker would.

import { createXXHash3, createXXHash128 } from "hash-wasm";

/**
 * Create the hashers one transfer needs. Each session gets its own, because a file digest is a running
 * state: at most one file digest of a session is open at a time (files travel one after another).
 */
export async function createHashing() {
  const chunkHasher = await createXXHash3(0, 0);
  const fileHasher = await createXXHash128(0, 0);
  return {
    /** XXH3-64 of one chunk's bytes, as 16 hex digits. */
    chunkDigest(bytes) {
      chunkHasher.init();
      chunkHasher.update(bytes);
      return chunkHasher.digest("hex");
    },
    /** Start a new running XXH3-128 over a whole file (this ends any previous one). */
    newFileDigest() {
      fileHasher.init();
      return {
        update: (bytes) => fileHasher.update(bytes),
        hexdigest: () => fileHasher.digest("hex"),
      };
    },
  };
}
