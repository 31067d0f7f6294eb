// What the page shows outside itself while a transfer runs: progress in the tab title, and the browser's
// "Leave site?" question if the person closes or reloads the tab meanwhile.

const BASE_TITLE = "relay: send files";
const busy = new Set();

function onBeforeUnload(event) {
  event.preventDefault();
  event.returnValue = ""; // older browsers need a value to show the question
}

/** Mark `key` ("send" or "receive") as running or not; while any runs, leaving the page asks first. */
export function setBusy(key, running) {
  const before = busy.size;
  if (running) busy.add(key);
  else busy.delete(key);
  if (before === 0 && busy.size > 0) window.addEventListener("beforeunload", onBeforeUnload);
  if (before > 0 && busy.size === 0) window.removeEventListener("beforeunload", onBeforeUnload);
}

/**
 * A progress title changes at most this often. Each new document.title is a message to the browser's own UI
 * thread: set ten times a second by both pages of a transfer it cost that thread about 0.8 ms per MiB moved
 * (docs/design/speed.md, issue 10), 3% of everything the transfer costs, for a title read at a glance.
 */
export const TITLE_INTERVAL_MS = 1000;
let progressShownAt = -Infinity;

/** "Sent", "Failed"...; no argument restores the page's own title. Unchanged text is not set again. */
export function setTitle(prefix = "") {
  const title = prefix ? `${prefix} · relay` : BASE_TITLE;
  if (document.title !== title) document.title = title;
}

/**
 * "42% sent · 1 min 05 s left" while a transfer runs: shown at most once per TITLE_INTERVAL_MS (`now` in ms);
 * true if it was shown. A final title (setTitle) is shown at once.
 */
export function setProgressTitle(prefix, now = Date.now()) {
  if (now - progressShownAt < TITLE_INTERVAL_MS) return false;
  progressShownAt = now;
  setTitle(prefix);
  return true;
}

/** The tab title's progress part: "42% sent", with "· 1 min 05 s left" once a rate is known. */
export function progressTitle(done, total, rateMeter, formatDuration, verb) {
  const percent = total > 0 ? Math.floor((done * 100) / total) : 0;
  const rate = rateMeter.rate();
  const left = rate > 0 && total > done ? ` · ${formatDuration((total - done) / rate)} left` : "";
  return `${percent}% ${verb}${left}`;
}
