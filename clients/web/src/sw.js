// Service worker for streamed downloads: the page hands each received file's bytes through a MessagePort,
// and this worker answers the hidden frame's request for /relay-download/<id>/<name> with a stream of them,
// so a large file goes to the downloads folder without ever being held whole in memory.
//
// It serves only streams a page of ours registered a moment before (random 128-bit ids, each usable once),
// always as an attachment with a sandboxing Content-Security-Policy: bytes from a peer are never rendered.

// Under this worker's scope, which is the folder the page was served from ("/" or a proxy's "/relay/").
const PREFIX = new URL("relay-download/", self.registration.scope).pathname;
const QUEUED_CHUNKS = 4;
const pending = new Map();

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("message", (event) => {
  const data = event.data;
  if (!data || data.type !== "download" || event.ports.length !== 1) return; // "keepalive" needs no answer
  if (typeof data.id !== "string" || !/^[0-9a-f]{32}$/.test(data.id)) return;
  pending.set(data.id, { port: event.ports[0], name: String(data.name), size: data.size });
  // The page opens the download URL only after this answer, so the fetch never arrives before the stream.
  event.ports[0].postMessage({ type: "registered" });
});

function streamFrom(port) {
  let controller;
  let arrived = null;
  port.onmessage = (event) => {
    const message = event.data || {};
    if (message.type === "chunk") {
      controller.enqueue(new Uint8Array(message.buffer));
    } else if (message.type === "end") {
      controller.close();
    } else if (message.type === "abort") {
      controller.error(new Error("the transfer failed"));
    }
    if (arrived) arrived();
  };
  return new ReadableStream(
    {
      start(c) {
        controller = c;
      },
      // One "pull" lets the page post one chunk; the next pull comes only once that chunk is queued and the
      // queue has room, so at most QUEUED_CHUNKS chunks wait here.
      pull() {
        port.postMessage({ type: "pull" });
        return new Promise((resolve) => {
          arrived = resolve;
        });
      },
      cancel() {
        port.postMessage({ type: "cancelled" });
      },
    },
    new CountQueuingStrategy({ highWaterMark: QUEUED_CHUNKS }),
  );
}

function contentDisposition(name) {
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, "_");
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`;
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith(PREFIX)) return;
  const id = url.pathname.slice(PREFIX.length).split("/")[0];
  const entry = pending.get(id);
  if (!entry) return;
  pending.delete(id);
  entry.port.postMessage({ type: "started" });
  const headers = {
    "Content-Type": "application/octet-stream",
    "Content-Disposition": contentDisposition(entry.name),
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
  };
  if (Number.isSafeInteger(entry.size)) headers["Content-Length"] = String(entry.size);
  event.respondWith(new Response(streamFrom(entry.port), { headers }));
});
