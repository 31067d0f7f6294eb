// The per-file list shared by the send and receive views: name, size, a progress bar and a state word.

import { escapeText } from "./protocol.js";
import { formatBytes } from "./format.js";

/** Fill `list` with one row per entry ({path, size}); returns the rows for later updates. */
export function renderFileRows(list, entries) {
  list.replaceChildren();
  return entries.map((entry, index) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    // textContent never interprets markup; escapeText also makes control and bidi characters visible.
    name.textContent = escapeText(entry.path);
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = formatBytes(entry.size);
    const bar = document.createElement("progress");
    bar.max = Math.max(entry.size, 1);
    bar.value = 0;
    bar.setAttribute("aria-label", `progress of ${escapeText(entry.path)}`);
    const state = document.createElement("span");
    state.className = "file-state";
    state.dataset.file = String(index);
    item.append(name, size, bar, state);
    list.append(item);
    return { entry, bar, state, item };
  });
}

/** Set one row's progress (bytes) and state word. */
export function updateFileRow(row, done, stateText) {
  const finished = stateText === "sent" || stateText === "verified";
  row.bar.value = row.entry.size === 0 ? (finished ? 1 : 0) : Math.min(done, row.entry.size);
  if (row.state.textContent !== stateText) {
    row.state.textContent = stateText;
    row.item.dataset.state = stateText;
  }
}

/** Show a session state on a status line; data-state lets the style (and tests) follow it. */
export function showStatus(element, state, text) {
  element.dataset.state = state;
  element.textContent = text;
}

/** Call `render` at most every `ms` milliseconds, and always once after the last request. */
export function throttle(render, ms = 100) {
  let timer = null;
  let last = 0;
  return (force = false) => {
    const now = Date.now();
    if (force || now - last >= ms) {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      last = now;
      render();
    } else if (timer === null) {
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        render();
      }, ms - (now - last));
    }
  };
}
