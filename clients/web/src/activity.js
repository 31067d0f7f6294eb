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

/** "42% · 1 min 05 s left · relay" while sending; no argument restores the page's own title. */
export function setTitle(prefix = "") {
  document.title = prefix ? `${prefix} · relay` : BASE_TITLE;
}

/** The tab title's progress part: "42% sent", with "· 1 min 05 s left" once a rate is known. */
export function progressTitle(done, total, rateMeter, formatDuration, verb) {
  const percent = total > 0 ? Math.floor((done * 100) / total) : 0;
  const rate = rateMeter.rate();
  const left = rate > 0 && total > done ? ` · ${formatDuration((total - done) / rate)} left` : "";
  return `${percent}% ${verb}${left}`;
}
