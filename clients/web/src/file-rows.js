// The per-file list shared by the send and receive views: name, size, a progress bar and a state word.

import { escapeText } from "./protocol.js";
import { formatBytes } from "./format.js";

/** Lists longer than this scroll inside a box instead of pushing what follows them down the page. */
export const LONG_LIST = 12;

/** Make `box` a scrolling box when it holds more than LONG_LIST rows; keyboard users can scroll it too. */
export function markLong(box, count, label) {
  const long = count > LONG_LIST;
  box.classList.toggle("long", long);
  if (long) {
    box.tabIndex = 0;
    box.setAttribute("aria-label", label);
  } else {
    box.removeAttribute("tabindex");
    box.removeAttribute("aria-label");
  }
}

/**
 * Fill `list` with one row per entry ({path, size}); returns the rows for later updates. With `onRemove`, each
 * row gets a Remove button that calls onRemove(index).
 */
export function renderFileRows(list, entries, { onRemove = null, label = "files" } = {}) {
  list.replaceChildren();
  markLong(list, entries.length, label);
  return entries.map((entry, index) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    // textContent never interprets markup; escapeText also makes control and bidi characters visible.
    name.textContent = escapeText(entry.path);
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = formatBytes(entry.size);
    item.append(name, size);
    if (onRemove) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${escapeText(entry.path)}`);
      remove.addEventListener("click", () => onRemove(index));
      item.append(remove);
      list.append(item);
      return { entry, item };
    }
    const bar = document.createElement("progress");
    bar.max = Math.max(entry.size, 1);
    bar.value = 0;
    bar.setAttribute("aria-label", `progress of ${escapeText(entry.path)}`);
    const state = document.createElement("span");
    state.className = "file-state";
    state.dataset.file = String(index);
    item.append(bar, state);
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

/**
 * Show a session state on a status line; data-state lets tests follow it, data-tone the colour ("ok", "neutral",
 * "bad": a decline or your own cancel is not shown as a failure).
 */
export function showStatus(element, state, text, tone = "") {
  element.dataset.state = state;
  element.dataset.tone = tone;
  element.textContent = text;
}

/** Show words the other party wrote (a cancel reason) as a quote from them, or hide the quote. */
export function showQuote(element, who, text) {
  element.hidden = !text;
  element.replaceChildren();
  if (!text) return;
  const said = document.createElement("p");
  said.textContent = `${who.charAt(0).toUpperCase()}${who.slice(1)} wrote:`;
  const words = document.createElement("q");
  words.textContent = escapeText(text);
  element.append(said, words);
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
