// The receive view: type a code (or arrive by link), see the offer, choose where to save, accept or decline,
// and follow progress. Chooses the sink: a picked folder/file; else a streamed download (one zip for many files
// or any folder); else memory.

import { progressTitle, setBusy, setProgressTitle, setTitle } from "./activity.js";
import { RateMeter, describeCounts, describeFinish, formatBytes, formatDuration } from "./format.js";
import { markLong, renderFileRows, showQuote, showStatus, throttle, updateFileRow } from "./file-rows.js";
import { InvalidCode, normalizeCode, splitCode } from "./crypto.js";
import { escapeText } from "./protocol.js";
import { ReceiveSession } from "./receiver.js";
import { FINAL_STATES } from "./sender.js";
import {
  FolderSink,
  MEMORY_LIMIT,
  MemorySink,
  SaveFileSink,
  StreamDownloadSink,
  TextSink,
  ZipDownloadSink,
  canPickFile,
  canPickFolder,
  registerDownloadWorker,
} from "./sinks.js";
import { zipName } from "./zip.js";
import { endWords } from "./words.js";

const $ = (id) => document.getElementById(id);

/** Put `code` into the code box (from a link); the person still presses Connect, so a link never joins alone. */
export function prefillCode(code) {
  $("receive-code").value = normalizeCode(code);
}

/** A receive link whose code could not be read (bad percent-encoding): say so, and let the person type it. */
export function showBadLink() {
  $("receive-code").value = "";
  showStatus($("receive-status"), "invalid",
    "This receive link is damaged, so its code could not be read. Type the code the sender gave you instead.", "bad");
}

/** True for an offer that goes to the downloads folder as one zip: several files, or any folder. */
export function needsZip(offer) {
  return offer.files.length > 1 || offer.dirs.length > 0 || offer.files.some((entry) => entry.path.includes("/"));
}

/**
 * A warning when the offer may not fit: navigator.storage.estimate() reports what this browser lets the site
 * store, which follows the free space of the disk it runs on (the downloads folder is usually on the same disk).
 */
export async function spaceWarning(total, storage = navigator.storage) {
  if (!storage || typeof storage.estimate !== "function") return "";
  let estimate;
  try {
    estimate = await storage.estimate();
  } catch {
    return "";
  }
  const free = (estimate.quota ?? 0) - (estimate.usage ?? 0);
  if (!(free > 0) || total <= free) return "";
  return `These files need ${formatBytes(total)}, and this browser reports only about ${formatBytes(free)} free. `
    + "Make sure the disk you save to has room before you accept (the relay command-line client checks this itself).";
}

export function setUpReceiveView() {
  let session = null;
  // Leaving the page ends the transfer for the others at once (cancel), instead of a lost connection that the
  // relay would hold open for the resume window.
  window.addEventListener("pagehide", () => session?.cancel());
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
    if (!offer || session.state !== "offered") return;
    let note = "";
    let blocked = false;
    const text = offer.kind === "text";
    $("save-choice").hidden = text;
    $("receive-accept").textContent = text ? "Show the text" : "Accept and save";
    if (text) {
      note = "The text is shown on this page for you to read and copy; nothing is saved.";
    } else if (saveMode() === "folder") {
      note = offer.files.length === 1 && offer.dirs.length === 0 && canPickFile()
        ? "You will choose where to save the file. It is written to disk as it arrives."
        : "You will choose a folder. Files are written to disk as they arrive, under temporary names, and get their "
          + "names only once every file arrived and authenticated (if the transfer fails, nothing is kept). Folders are "
          + "created as offered, and nothing is overwritten.";
    } else if (registration) {
      note = needsZip(offer)
        ? `Everything is saved as one zip file, ${zipName(offer)}, streamed to your downloads folder as it arrives. `
          + "The zip only completes if every file arrives and is verified."
        : "The file is streamed to your downloads folder as it arrives.";
    } else {
      const big = new MemorySink().tooBig(offer);
      if (big.length > 0) {
        blocked = true;
        note = `${escapeText(big[0].path)} is too big to receive in this browser without a folder to save into `
          + `(the limit here is ${formatBytes(MEMORY_LIMIT)}). Use a browser that can save into a folder `
          + "(such as Chrome or Edge), or the relay command-line client.";
      } else {
        note = "This browser keeps each file in memory until it is complete, then saves it as a download.";
        if (needsZip(offer)) note += " Folders become part of the file names, and empty folders are not created.";
      }
    }
    $("save-note").textContent = note;
    $("receive-accept").disabled = blocked;
  };
  for (const radio of document.querySelectorAll('input[name="save"]')) radio.addEventListener("change", explainSave);

  // Must run inside the click handler: the file pickers need the person's gesture.
  const chooseSink = async (offer) => {
    if (offer.kind === "text") return new TextSink();
    if (saveMode() === "folder") {
      if (offer.files.length === 1 && offer.dirs.length === 0 && canPickFile()) return SaveFileSink.pick(offer);
      return FolderSink.pick();
    }
    if (!registration) return new MemorySink();
    return needsZip(offer) ? new ZipDownloadSink(registration) : new StreamDownloadSink(registration);
  };

  $("receive-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = normalizeCode($("receive-code").value);
    $("receive-code").value = code;
    try {
      splitCode(code);
    } catch (error) {
      if (!(error instanceof InvalidCode)) throw error;
      showStatus($("receive-status"), "invalid",
        "A code is the number and the words the sender shows, like 42-ocean-table-actor.", "bad");
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
      $("receive-status").focus();
    } catch (error) {
      // A closed picker is not a failure: the offer stays open for another try.
      const text = error.name === "AbortError" ? "No place was chosen; choose again or decline." : escapeText(error.message);
      $("save-note").textContent = text;
      $("receive-accept").disabled = false;
      $("receive-accept").focus();
    }
  });
  $("receive-decline").addEventListener("click", () => session?.decline());
  $("receive-cancel").addEventListener("click", () => session?.cancel());
  $("receive-again").addEventListener("click", () => {
    session = null;
    $("receive-run").hidden = true;
    $("receive-offer").hidden = true;
    $("receive-again").hidden = true;
    $("receive-code").value = "";
    $("receive-text").hidden = true;
    $("received-text").value = "";
    showStatus($("receive-status"), "", "");
    showQuote($("receive-quote"), "", "");
    setTitle();
    $("receive-code").focus();
  });

  $("copy-text").addEventListener("click", async (event) => {
    try {
      await navigator.clipboard.writeText($("received-text").value);
      event.target.textContent = "Copied";
    } catch {
      $("received-text").select();
      event.target.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy";
    }
  });

  function start(code) {
    $("receive-offer").hidden = true;
    $("receive-text").hidden = true;
    $("receive-run").hidden = true;
    $("receive-cancel").hidden = false;
    $("receive-again").hidden = true;
    showQuote($("receive-quote"), "", "");
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
      if (state === "transferring") setProgressTitle(progressTitle(done, total, rate, formatDuration, "received"));
      const ended = FINAL_STATES.has(state);
      const kept = current.sink?.keepsPartial !== false;
      rows.forEach((row, index) => {
        if (index < verifiedFiles) updateFileRow(row, row.entry.size, ended && state !== "verified" && !kept ? "not saved" : "verified");
        else if (index === file) updateFileRow(row, fileDone, ended ? "not saved" : "receiving");
        else updateFileRow(row, 0, ended ? "not saved" : "waiting");
      });
    });

    const liveText = (next, offer) => {
      switch (next) {
        case "connecting":
          return "Connecting to the relay...";
        case "keying":
          return "Connected; checking the code with the sender...";
        case "waiting":
          return "The code is right; waiting for the sender's offer.";
        case "offered":
          if (offer.kind === "text") return `The sender sent a text (${formatBytes(offer.files[0].size)}). Show it, or decline.`;
          return `The sender offers ${describeCounts(offer.files.length, offer.dirs.length)}. Choose where to save them, then accept or decline.`;
        case "transferring":
          return `${current.resumes ? "Connection restored. " : ""}Receiving into ${current.sink ? current.sink.label : "your downloads folder"}...`;
        case "reconnecting":
          return current.detail;
        case "verifying":
          return "Every file authenticated; waiting for the relay to confirm.";
        default:
          return "";
      }
    };

    const finish = (next) => {
      setBusy("receive", false);
      $("receive-offer").hidden = true;
      $("receive-cancel").hidden = true;
      $("receive-again").hidden = false;
      if (rows.length > 0 && current.sink) $("receive-run").hidden = false;
      const offer = current.offer;
      if (next === "verified" && offer.kind === "text") {
        // Text from the other party: shown in a read-only box (never as markup), to read and copy.
        $("received-text").value = current.sink.text;
        $("receive-text").hidden = false;
        $("receive-run").hidden = true;
        $("copy-text").textContent = "Copy text";
        const took = current.startedAt ? ` ${describeFinish(current.total, current.endedAt - current.startedAt)}` : "";
        showStatus($("receive-status"), next, `Done: the sender's text (${formatBytes(current.total)}) arrived end-to-end encrypted and authenticated. Nothing was saved to disk.${took}`, "ok");
        setTitle("Received");
      } else if (next === "verified") {
        const what = `${describeCounts(offer.files.length, offer.dirs.length)} (${formatBytes(current.total)})`;
        const took = current.startedAt ? ` ${describeFinish(current.total, current.endedAt - current.startedAt)}` : "";
        const renamed = current.sink?.renamed?.size
          ? ` This browser refused ${current.sink.renamed.size === 1 ? "one name" : `${current.sink.renamed.size} names`}, so `
            + `${[...current.sink.renamed].slice(0, 3).map(([from, to]) => `${escapeText(from)} was saved as ${escapeText(to)}`).join(", ")}`
            + `${current.sink.renamed.size > 3 ? ", and so on" : ""} (each character it refuses became "_").`
          : "";
        showStatus($("receive-status"), next,
          `Done: ${what} saved to ${current.sink.label}, and every file was authenticated end to end.${renamed}${took}`, "ok");
        setTitle("Received");
      } else {
        const words = endWords({
          side: "receive",
          state: next,
          outcome: current.outcome ?? {},
          saved: { files: progress.verifiedFiles, total: offer ? offer.files.length : 0, keepsPartial: current.sink?.keepsPartial !== false },
        });
        showStatus($("receive-status"), next, words.text, words.tone);
        showQuote($("receive-quote"), words.quoteBy ?? "", words.quote);
        setTitle(next === "cancelled" ? "Stopped" : "Failed");
      }
      // Downloads started from memory or the service worker need their URLs/frames a while longer.
      const sink = current.sink;
      if (sink && typeof sink.dispose === "function") setTimeout(() => sink.dispose(), 60000);
      // Nothing was offered (a wrong code, a refusal): the next step is the code field, to check or retype it.
      if (next === "verified" && offer.kind === "text") $("copy-text").focus();
      else {
        if ($("receive-run").hidden) $("receive-code").select();
        $($("receive-run").hidden ? "receive-code" : "receive-again").focus();
      }
    };

    const current = new ReceiveSession(code, {
      listener: {
        onState(next, detail) {
          if (session !== current) return;
          state = next;
          if (next === "transferring") setBusy("receive", true);
          if (FINAL_STATES.has(next)) finish(next);
          else if (next === "offered" && detail) $("save-note").textContent = detail; // the chosen place refused it
          else showStatus($("receive-status"), next, liveText(next, current.offer));
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
          $("offer-caption").textContent = `${describeCounts(offer.files.length, offer.dirs.length)}, ${formatBytes(total)} in all`;
          markLong($("offer-box"), offer.files.length + offer.dirs.length, "offered files");
          rows = renderFileRows($("receive-files"), offer.files, { label: "files being received" });
          progress = { ...progress, total };
          $("receive-offer").hidden = false;
          $("receive-accept").disabled = false;
          $("space-note").hidden = true;
          spaceWarning(total).then((warning) => {
            if (session !== current || !warning) return;
            $("space-note").textContent = warning;
            $("space-note").hidden = false;
          });
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
    session = current;
    current.run();
  }
}
