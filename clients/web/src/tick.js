// A dedicated worker that answers {type: "sleep", ms} with a message after `ms` milliseconds.
//
// The page waits for its WebSocket's send buffer to drain by polling bufferedAmount (browsers have no event
// for it). Timers of a hidden tab are throttled to about one per second, which turned the poll into a stop of
// up to a second per 8 MiB (about 9 MiB/s) whenever the sending tab was in the background; timers in a
// dedicated worker are not throttled, and a message from it wakes the page at once.

self.addEventListener("message", (event) => {
  const ms = Math.max(0, Math.min(1000, Number(event.data && event.data.ms) || 0));
  setTimeout(() => self.postMessage({ type: "tick" }), ms);
});
