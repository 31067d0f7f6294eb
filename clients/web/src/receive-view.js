// The receive view: type a code (or arrive by link), see the offer, choose where to save, accept or decline,
// and follow progress. Chooses the sink: a picked folder/file, else a streamed download, else memory.

import { RateMeter, formatBytes } from "./format.js";
import { renderFileRows, showStatus, throttle, updateFileRow } from "./file-rows.js";
import { escapeText, isValidCode, normalizeCode } from "./protocol.js";
import { ReceiveSession } from "./receiver.js";
import { FINAL_STATES } from "./sender.js";
import {
  FolderSink,
  MEMORY_LIMIT,
  MemorySink,
  SaveFileSink,
  StreamDownloadSink,
  canPickFile,
  canPickFolder,
  registerDownloadWorker,
} from "./sinks.js";

const STATE_TEXT = {
  connecting: "Connecting to the relay...",
  waiting: "Connected",
  offered: "The sender offers these files",
  transferring: "Receiving",
  verifying: "Verifying",
  verified: "Verified",
  failed: "Failed",
  cancelled: "Cancelled",
};

const $ = (id) => document.getElementById(id);

/** Put `code` into the code box (from a link); the person still presses Connect, so a link never joins alone. */
export function prefillCode(code) {
  $("receive-code").value = normalizeCode(code);
  $("receive-connect").focus();
}

export function setUpReceiveView() {
  let session = null;
  let registration = null;
  registerDownloadWorker().then((value) => {
    registration = value;
    // The worker can become ready after the offer is shown: say how the files will now be saved, and unblock
    // a file too big for the in-memory fallback.
    explainSave();
  });

  const canFolder = canPickFolder();
  $("save-folder").disabled = !canFolder;
  $("save-folder-label").hidden = !canFolder;
  $(canFolder ? "save-folder" : "save-downloads").checked = true;

  const saveMode = () => (document.querySelector('input[name="save"]:checked') || {}).value;

  // What the chosen mode can do with this offer; a download without a service worker holds files in memory.
  const explainSave = () => {
    const offer = session?.offer;
    if (!offer) return;
    let note = "";
    let blocked = false;
    if (saveMode() === "folder") {
      note = offer.files.length === 1 && offer.dirs.length === 0 && canPickFile()
        ? "You will choose where to save the file. It is written to disk as it arrives."
        : "You will choose a folder. Files are written to disk as they arrive; nothing is overwritten.";
    } else if (registration) {
      note = "Each file is streamed to your downloads folder as it arrives.";
      if (offer.files.length > 1) note += " Sub-folders become part of the file names.";
    } else {
      const big = new MemorySink().tooBig(offer);
      if (big.length > 0) {
        blocked = true;
        note = `${escapeText(big[0].path)} is too big to receive in this browser without a folder to save into `
          + `(the limit here is ${formatBytes(MEMORY_LIMIT)}). Use a browser that can save into a folder `
          + "(such as Chrome or Edge), or the relay command-line client.";
      } else {
        note = "This browser keeps each file in memory until it is complete, then saves it as a download.";
      }
    }
    $("save-note").textContent = note;
    $("receive-accept").disabled = blocked;
  };
  for (const radio of document.querySelectorAll('input[name="save"]')) radio.addEventListener("change", explainSave);

  // Must run inside the click handler: the file pickers need the person's gesture.
  const chooseSink = async (offer) => {
    if (saveMode() === "folder") {
      if (offer.files.length === 1 && offer.dirs.length === 0 && canPickFile()) return SaveFileSink.pick(offer);
      return FolderSink.pick();
    }
    return registration ? new StreamDownloadSink(registration) : new MemorySink();
  };

  $("receive-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = normalizeCode($("receive-code").value);
    $("receive-code").value = code;
    if (!isValidCode(code)) {
      showStatus($("receive-status"), "invalid", "A code is letters, digits and dashes, like actor-table-ocean-ring.");
      $("receive-code").focus();
      return;
    }
    if (session && !FINAL_STATES.has(session.state)) return;
    start(code);
  });

  $("receive-accept").addEventListener("click", async () => {
    if (!session || session.state !== "offered") return;
    $("receive-accept").disabled = true;
    try {
      const sink = await chooseSink(session.offer);
      await session.accept(sink);
      $("receive-offer").hidden = true;
      $("receive-run").hidden = false;
    } catch (error) {
      // A closed picker is not a failure: the offer stays open for another try.
      const text = error.name === "AbortError" ? "No place was chosen; choose again or decline." : escapeText(error.message);
      $("save-note").textContent = text;
      $("receive-accept").disabled = false;
    }
  });
  $("receive-decline").addEventListener("click", () => session?.decline());
  $("receive-cancel").addEventListener("click", () => session?.cancel());
  $("receive-again").addEventListener("click", () => {
    session = null;
    $("receive-run").hidden = true;
    $("receive-offer").hidden = true;
    $("receive-code").value = "";
    showStatus($("receive-status"), "", "");
    $("receive-code").focus();
  });

  function start(code) {
    $("receive-offer").hidden = true;
    $("receive-run").hidden = true;
    $("receive-cancel").hidden = false;
    $("receive-again").hidden = true;
    $("receive-connect").disabled = true;
    const rate = new RateMeter();
    let rows = [];
    let progress = { done: 0, total: 0, file: -1, fileDone: 0, verifiedFiles: 0 };
    let state = "connecting";

    const render = throttle(() => {
      const { done, total, file, fileDone, verifiedFiles } = progress;
      $("receive-total").max = Math.max(total, 1);
      $("receive-total").value = state === "verified" ? Math.max(total, 1) : done;
      const speed = state === "transferring" ? rate.describe(total - done) : "";
      $("receive-numbers").textContent = `${formatBytes(done)} of ${formatBytes(total)}${speed ? ` (${speed})` : ""}`;
      rows.forEach((row, index) => {
        if (index < verifiedFiles) updateFileRow(row, row.entry.size, "verified");
        else if (index === file) updateFileRow(row, fileDone, FINAL_STATES.has(state) ? "not saved" : "receiving");
        else updateFileRow(row, 0, FINAL_STATES.has(state) ? "not saved" : "waiting");
      });
    });

    session = new ReceiveSession(code, {
      listener: {
        onState(next, detail) {
          state = next;
          const text = STATE_TEXT[next] ?? next;
          showStatus($("receive-status"), next, detail ? `${text}: ${detail}` : text);
          if (FINAL_STATES.has(next)) {
            $("receive-connect").disabled = false;
            $("receive-offer").hidden = true;
            $("receive-cancel").hidden = true;
            $("receive-again").hidden = false;
            if (rows.length > 0) $("receive-run").hidden = false;
            // Downloads started from memory or the service worker need their URLs/frames a while longer.
            const sink = session?.sink;
            if (sink && typeof sink.dispose === "function") setTimeout(() => sink.dispose(), 60000);
          }
          render(true);
        },
        onOffer(offer) {
          const body = $("offer-files");
          body.replaceChildren();
          for (const entry of offer.files) {
            const row = document.createElement("tr");
            const name = document.createElement("td");
            name.textContent = escapeText(entry.path);
            const size = document.createElement("td");
            size.textContent = formatBytes(entry.size);
            row.append(name, size);
            body.append(row);
          }
          for (const dir of offer.dirs) {
            const row = document.createElement("tr");
            const name = document.createElement("td");
            name.textContent = `${escapeText(dir)}/`;
            const size = document.createElement("td");
            size.textContent = "empty folder";
            row.append(name, size);
            body.append(row);
          }
          const total = offer.files.reduce((sum, entry) => sum + entry.size, 0);
          $("offer-caption").textContent = `${offer.files.length} file(s), ${formatBytes(total)} in all`;
          rows = renderFileRows($("receive-files"), offer.files);
          progress = { ...progress, total };
          $("receive-offer").hidden = false;
          $("receive-accept").disabled = false;
          explainSave();
          $("receive-accept").focus();
        },
        onProgress(next) {
          progress = next;
          rate.sample(next.done, Date.now());
          render();
        },
      },
    });
    session.run();
  }
}
