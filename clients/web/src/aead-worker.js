// A dedicated worker that seals and opens the data path's chunks (AES-256-GCM, WebCrypto), so that the page's
// own thread is free to read, hash and move bytes meanwhile: Chromium runs crypto.subtle.encrypt/decrypt on the
// calling thread (about 3 ms per MiB here), which on the page's thread was most of what encryption cost a
// transfer. See chunk-crypto.js for the other side; the nonces and associated data are made there (crypto.js).
//
//   -> {id, op: "key", key}                     import a raw 32-byte key      <- {id, keyId}
//   -> {id, op: "seal"|"open", keyId, nonce, aad, bytes}                      <- {id, out} (null: did not open)

const keys = new Map();
let nextKey = 0;

self.addEventListener("message", async (event) => {
  const { id, op } = event.data;
  try {
    if (op === "key") {
      const keyId = nextKey++;
      keys.set(keyId, await crypto.subtle.importKey("raw", event.data.key, "AES-GCM", false, ["encrypt", "decrypt"]));
      self.postMessage({ id, keyId });
      return;
    }
    const { keyId, nonce, aad, bytes } = event.data;
    const params = { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 128 };
    let out;
    if (op === "seal") out = await crypto.subtle.encrypt(params, keys.get(keyId), bytes);
    else {
      try {
        out = await crypto.subtle.decrypt(params, keys.get(keyId), bytes);
      } catch {
        out = null; // did not authenticate: the page says which chunk
      }
    }
    self.postMessage({ id, out }, out ? [out] : []);
  } catch (error) {
    self.postMessage({ id, error: String(error && error.message ? error.message : error) });
  }
});
