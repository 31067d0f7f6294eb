// The send view: pick or drop files, start a SendSession, show code, link, QR code and progress. A refused or
// failed attempt keeps the selection: "Try again" sends it again with a new code.

import { progressTitle, setBusy, setProgressTitle, setTitle } from "./activity.js";
import { RateMeter, describeCounts, describeFinish, formatBytes, formatDuration, plural } from "./format.js";
import { itemsFromDirectoryHandle, itemsFromDrop, itemsFromInput } from "./files.js";
import { markLong, renderFileRows, showQuote, showStatus, throttle, updateFileRow } from "./file-rows.js";
import { escapeText } from "./protocol.js";
import { qrSvg } from "./qr.js";
import { EMPTY_SELECTION, addToSelection, removeFromSelection, selectionNotes } from "./selection.js";
import { FINAL_STATES, SendSession } from "./sender.js";
import { endWords } from "./words.js";

const $ = (id) => document.getElementById(id);

/** Largest text snippet (an offer of kind "text"), in bytes of UTF-8: docs/protocol.md's limit. */
export const MAX_SNIPPET = 1024 * 1024;

/** The link that opens this page's receive view with `code` filled in (same path, so it works under a prefix). */
export function receiveLink(code, location = window.location) {
  const url = new URL(location.href);
  url.hash = `receive=${code}`;
  return url.href;
}

/** The relay's base URL for the command-line client: this page's folder, without the trailing slash. */
export function relayBase(location = window.location) {
  const url = new URL(".", location.href);
  return url.href.replace(/\/$/, "");
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy by hand";
  }
}

/** The status line while the session runs (the end states come from words.js). */
function liveText(session, state) {
  const text = liveState(session, state);
  // A receiver dropped at the relay's resume window's end stays said until the end (the others go on).
  return session.droppedNote && state !== "reconnecting" && text ? `${session.droppedNote} ${text}` : text;
}

function liveState(session, state) {
  const one = session.receivers === 1;
  switch (state) {
    case "connecting":
      return "Connecting to the relay...";
    case "waiting":
      if (session.channels.size < session.joined) return "Checking the code with the receiver...";
      return one
        ? "Waiting for the receiver: share the code or the link."
        : `Waiting for the receivers: ${session.joined} of ${session.receivers} joined. Share the code or the link.`;
    case "offered":
      return one ? "The receiver is looking at the files; waiting for them to accept." : "Waiting for every receiver to accept.";
    case "transferring":
      return session.resumes > 0 || session.epoch > 0 ? "Connection restored. Sending..." : "Sending...";
    case "verifying":
      return one ? "Sent; waiting for the receiver to authenticate every file." : "Sent; waiting for every receiver to authenticate every file.";
    case "reconnecting":
      return session.detail;
    default:
      return "";
  }
}

/** The end of a send some receivers were dropped from: who, and what it means for them. */
export function droppedWords(dropped) {
  const named = dropped.map((peer) => `receiver ${peer}`).join(", ");
  const one = dropped.length === 1;
  return `${named.charAt(0).toUpperCase()}${named.slice(1)} lost ${one ? "its" : "their"} connection and did not come back `
    + `within the relay's resume window, so ${one ? "it was" : "they were"} dropped and did not get the files; the others finished.`;
}

export function setUpSendView({ showSend }) {
  let picked = EMPTY_SELECTION;
  let session = null;
  // Leaving the page ends the transfer for the others at once (cancel), instead of a lost connection that the
  // relay would hold open for the resume window.
  window.addEventListener("pagehide", () => session?.cancel());
  let lastRun = null; // {selection, receivers, kind}: what "Try again" sends

  const showPicked = () => {
    const hasFiles = picked.items.length > 0 || picked.dirs.length > 0;
    $("picked").hidden = !hasFiles;
    const entries = picked.items.map((item) => ({ path: item.path, size: item.file.size }));
    renderFileRows($("picked-list"), entries, { onRemove: remove, label: "selected files" });
    const total = entries.reduce((sum, entry) => sum + entry.size, 0);
    $("picked-summary").textContent = `${describeCounts(entries.length, picked.dirs.length)}, ${formatBytes(total)} in all`;
  };

  const remove = (index) => {
    const path = picked.items[index].path;
    picked = removeFromSelection(picked, index);
    showPicked();
    showNotes([`Removed ${escapeText(path)} from the selection.`]);
    // Keep the keyboard where it was: the next row's Remove button, else Send.
    const buttons = $("picked-list").querySelectorAll("button.remove");
    (buttons[Math.min(index, buttons.length - 1)] ?? $("send-start")).focus();
  };

  const showNotes = (notes) => {
    $("pick-notes").replaceChildren(...notes.map((note) => Object.assign(document.createElement("p"), { textContent: note })));
  };

  const add = ({ items, dirs }) => {
    $("pick-error").textContent = "";
    const result = addToSelection(picked, { items, dirs });
    picked = result.selection;
    showNotes(selectionNotes(result));
    showPicked();
  };

  $("file-input").addEventListener("change", (event) => {
    add({ items: itemsFromInput(event.target.files), dirs: [] });
    event.target.value = "";
  });
  $("folder-input").addEventListener("change", (event) => {
    add({ items: itemsFromInput(event.target.files), dirs: [] });
    event.target.value = "";
    // This browser's folder chooser lists files only: say so rather than lose empty folders without a word.
    const notes = $("pick-notes");
    notes.append(Object.assign(document.createElement("p"), {
      textContent: "Empty folders inside are not included when a folder is chosen this way; drop the folder onto the page to include them.",
    }));
  });
  // Where the browser can open a folder itself, use that: unlike the folder input it also sees empty folders.
  if (typeof window.showDirectoryPicker === "function") {
    $("folder-pick").hidden = false;
    $("folder-label").hidden = true;
    $("folder-input").hidden = true;
  } else if (!("webkitdirectory" in document.createElement("input"))) {
    $("folder-label").hidden = true;
  }
  $("folder-pick").addEventListener("click", async () => {
    let handle;
    try {
      handle = await window.showDirectoryPicker({ id: "relay-send", mode: "read" });
    } catch (error) {
      if (error.name !== "AbortError") $("pick-error").textContent = `Could not open the folder: ${escapeText(error.message)}`;
      return;
    }
    try {
      add(await itemsFromDirectoryHandle(handle));
    } catch (error) {
      $("pick-error").textContent = `Could not read the folder: ${escapeText(error.message)}`;
    }
  });

  // Drop anywhere on the page: the whole page is the drop target, the dashed zone only shows where.
  const zone = $("drop-zone");
  const canDrop = () => !$("send-pick").hidden || !$("receive-view").hidden;
  document.addEventListener("dragover", (event) => {
    if (!event.dataTransfer || !Array.from(event.dataTransfer.types).includes("Files")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = canDrop() ? "copy" : "none";
    if (canDrop()) zone.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) zone.classList.remove("over");
  });
  document.addEventListener("drop", async (event) => {
    event.preventDefault(); // never let the browser open a dropped file in place of the page
    zone.classList.remove("over");
    if (!canDrop() || !event.dataTransfer) return;
    if ($("send-view").hidden) showSend();
    try {
      add(await itemsFromDrop(event.dataTransfer));
    } catch (error) {
      $("pick-error").textContent = `Could not read what was dropped: ${escapeText(error.message)}`;
    }
  });

  $("send-clear").addEventListener("click", () => {
    picked = EMPTY_SELECTION;
    showPicked();
    showNotes([]);
    $("file-input").focus();
  });

  const receiverCount = () => Math.min(8, Math.max(1, Number.parseInt($("receivers").value, 10) || 1));

  $("send-start").addEventListener("click", () => start(picked, receiverCount()));

  // A text snippet: one UTF-8 file offered with "kind": "text", which the receiving page shows to copy.
  $("text-paste").addEventListener("click", async () => {
    $("text-error").textContent = "";
    try {
      $("text-input").value = await navigator.clipboard.readText();
    } catch {
      $("text-error").textContent = "This browser did not allow reading the clipboard: paste into the box instead.";
    }
    $("text-input").focus();
  });
  $("text-send").addEventListener("click", () => {
    const bytes = new TextEncoder().encode($("text-input").value);
    $("text-error").textContent = "";
    if ($("text-input").value.trim() === "") {
      $("text-error").textContent = "Type or paste some text first.";
      $("text-input").focus();
      return;
    }
    if (bytes.length > MAX_SNIPPET) {
      $("text-error").textContent = `The text is ${formatBytes(bytes.length)}; a text can be at most `
        + `${formatBytes(MAX_SNIPPET)}. Save it as a file and send the file instead.`;
      $("text-input").focus();
      return;
    }
    const file = new File([bytes], "text.txt", { type: "text/plain" });
    start({ items: [{ path: "text.txt", file }], dirs: [] }, 1, "text");
  });

  $("send-cancel").addEventListener("click", () => session?.cancel());
  $("send-retry").addEventListener("click", () => start(lastRun.selection, lastRun.receivers, lastRun.kind));
  $("send-edit").addEventListener("click", () => backToPick());
  $("send-again").addEventListener("click", () => {
    picked = EMPTY_SELECTION;
    if (lastRun?.kind === "text") $("text-input").value = "";
    showNotes([]);
    backToPick();
  });

  function backToPick() {
    session = null;
    showPicked();
    setTitle();
    $("send-run").hidden = true;
    $("send-pick").hidden = false;
    $("intro").hidden = false;
    (picked.items.length > 0 ? $("send-start") : $("file-input")).focus();
  }

  function start(selection, receivers, kind = undefined) {
    lastRun = { selection, receivers, kind };
    $("send-pick").hidden = true;
    $("intro").hidden = true;
    $("send-run").hidden = false;
    $("send-share").hidden = true;
    $("send-cancel").hidden = false;
    for (const id of ["send-retry", "send-edit", "send-again"]) $(id).hidden = true;
    showQuote($("send-quote"), "", "");
    const rate = new RateMeter();
    let progress = { done: 0, total: 0, fileOk: new Map(), receivers };
    let state = "connecting";
    let rows = [];
    const starts = [];

    const render = throttle(() => {
      const { done, total, fileOk } = progress;
      $("send-total").max = Math.max(total, 1);
      $("send-total").value = state === "verified" ? Math.max(total, 1) : done;
      const running = state === "transferring" || state === "verifying";
      const speed = running ? rate.describe(total - done) : "";
      $("send-numbers").textContent = `${formatBytes(done)} of ${formatBytes(total)}${speed ? ` (${speed})` : ""}`;
      if (running) setProgressTitle(progressTitle(done, total, rate, formatDuration, "sent"));
      rows.forEach((row, index) => {
        const fileDone = Math.max(0, Math.min(row.entry.size, done - starts[index]));
        let word = "";
        if ((fileOk.get(index) ?? 0) >= receivers || state === "verified") word = "verified";
        else if (FINAL_STATES.has(state)) word = fileDone > 0 ? "not verified" : "not sent";
        else if (fileDone >= row.entry.size && running) word = "sent";
        else if (fileDone > 0) word = "sending";
        else word = "waiting";
        updateFileRow(row, fileDone, word);
      });
    });

    const current = new SendSession(selection.items, {
      dirs: selection.dirs,
      receivers,
      kind,
      listener: {
        onCode(code) {
          const link = receiveLink(code);
          $("send-code").textContent = code;
          $("send-link").href = link;
          $("send-link").textContent = link;
          // No code on the command line: other users of that machine could read it there; the command asks for it.
          $("send-cli").textContent = `relay receive --relay ${relayBase()}`;
          $("send-qr").replaceChildren(qrSvg(link, `QR code of the link ${link}`));
          $("send-share").hidden = false;
          $("copy-code").textContent = "Copy code";
          $("copy-link").textContent = "Copy link";
        },
        onState(next) {
          if (session !== current) return;
          state = next;
          if (FINAL_STATES.has(next)) finish(next);
          else showStatus($("send-status"), next, liveText(current, next));
          render(true);
        },
        onProgress(next) {
          progress = next;
          rate.sample(next.done, Date.now());
          render();
        },
      },
    });
    session = current;

    const finish = (next) => {
      setBusy("send", false);
      $("send-cancel").hidden = true;
      $("send-share").hidden = true;
      const count = current.offer.files.length;
      if (next === "verified") {
        const dropped = current.outcome?.dropped ?? [];
        const whom = receivers === 1 ? "the receiver"
          : dropped.length > 0 ? `${receivers - dropped.length} of ${receivers} receivers` : `all ${receivers} receivers`;
        const what = kind === "text"
          ? `the text (${formatBytes(current.total)})`
          : `${describeCounts(count, current.offer.dirs.length)} (${formatBytes(current.total)})`;
        const took = current.startedAt ? ` ${describeFinish(current.total, current.endedAt - current.startedAt)}` : "";
        const sums = kind === "text" ? "it was" : "every file was";
        const left = dropped.length === 0 ? "" : ` ${droppedWords(dropped)}`;
        showStatus($("send-status"), next, `Done: ${what} reached ${whom} end-to-end encrypted, and ${sums} authenticated.${took}${left}`, "ok");
        setTitle("Sent");
        $("send-again").hidden = false;
        $("send-again").textContent = kind === "text" ? "Send something else" : "Send more files";
        $("send-again").focus();
        return;
      }
      const words = endWords({
        side: "send",
        state: next,
        outcome: current.outcome ?? {},
        receivers,
        saved: { files: current.filesDelivered, total: count },
      });
      showStatus($("send-status"), next, words.text, words.tone);
      showQuote($("send-quote"), words.quoteBy ?? "", words.quote);
      setTitle(next === "cancelled" ? "Stopped" : "Failed");
      $("send-retry").hidden = false;
      $("send-edit").hidden = false;
      $("send-retry").focus();
    };

    let at = 0;
    for (const entry of current.offer.files) {
      starts.push(at);
      at += entry.size;
    }
    progress.total = current.total;
    rows = renderFileRows($("send-files"), current.offer.files, { label: "files being sent" });
    markLong($("send-files"), rows.length, "files being sent");
    setBusy("send", true);
    showStatus($("send-status"), "connecting", liveText(current, "connecting"));
    $("send-status").focus();
    render(true);
    current.run();
  }

  $("copy-code").addEventListener("click", (event) => copyText($("send-code").textContent, event.target));
  $("copy-link").addEventListener("click", (event) => copyText($("send-link").href, event.target));
}
