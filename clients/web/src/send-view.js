// The send view: pick or drop files, start a SendSession, show code, link, QR code and progress.

import { RateMeter, formatBytes } from "./format.js";
import { itemsFromDrop, itemsFromInput } from "./files.js";
import { renderFileRows, showStatus, throttle, updateFileRow } from "./file-rows.js";
import { checkPath, escapeText, makeOffer } from "./protocol.js";
import { qrSvg } from "./qr.js";
import { FINAL_STATES, SendSession } from "./sender.js";

const STATE_TEXT = {
  connecting: "Connecting to the relay...",
  waiting: "Waiting for the receiver",
  // (detail: "0 of 1 joined")
  offered: "Waiting for the receiver to accept",
  transferring: "Transferring",
  verifying: "Sent; waiting for the receiver to verify",
  verified: "Verified",
  failed: "Failed",
  cancelled: "Cancelled",
};

const $ = (id) => document.getElementById(id);

/** The link that opens this page's receive view with `code` filled in. */
export function receiveLink(code, location = window.location) {
  return `${location.origin}/#receive=${code}`;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy by hand";
  }
}

export function setUpSendView() {
  let picked = { items: [], dirs: [] };
  let session = null;

  const showPicked = () => {
    const hasFiles = picked.items.length > 0 || picked.dirs.length > 0;
    $("picked").hidden = !hasFiles;
    const entries = picked.items.map((item) => ({ path: item.path, size: item.file.size }));
    renderFileRows($("picked-list"), entries);
    const total = entries.reduce((sum, entry) => sum + entry.size, 0);
    const folders = picked.dirs.length ? `, ${picked.dirs.length} empty folder(s)` : "";
    $("picked-summary").textContent = `${entries.length} file(s), ${formatBytes(total)}${folders}`;
  };

  const add = ({ items, dirs }) => {
    $("pick-error").textContent = "";
    const known = new Set(picked.items.map((item) => item.path));
    const fresh = items.filter((item) => !known.has(item.path));
    const next = { items: [...picked.items, ...fresh], dirs: [...new Set([...picked.dirs, ...dirs])] };
    try {
      for (const item of fresh) checkPath(item.path);
      makeOffer(next.items.map((item) => ({ path: item.path, size: item.file.size })), next.dirs);
    } catch (error) {
      $("pick-error").textContent = `Cannot send this selection: ${escapeText(error.message)}`;
      return;
    }
    picked = next;
    showPicked();
  };

  $("file-input").addEventListener("change", (event) => {
    add({ items: itemsFromInput(event.target.files), dirs: [] });
    event.target.value = "";
  });
  $("folder-input").addEventListener("change", (event) => {
    add({ items: itemsFromInput(event.target.files), dirs: [] });
    event.target.value = "";
  });
  if (!("webkitdirectory" in document.createElement("input"))) $("folder-label").hidden = true;

  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    try {
      add(await itemsFromDrop(event.dataTransfer));
    } catch (error) {
      $("pick-error").textContent = `Could not read what was dropped: ${escapeText(error.message)}`;
    }
  });

  $("send-clear").addEventListener("click", () => {
    picked = { items: [], dirs: [] };
    showPicked();
  });

  $("send-start").addEventListener("click", () => {
    const receivers = Math.min(8, Math.max(1, Number.parseInt($("receivers").value, 10) || 1));
    start(picked, receivers);
  });

  $("send-cancel").addEventListener("click", () => session?.cancel());
  $("send-again").addEventListener("click", () => {
    session = null;
    picked = { items: [], dirs: [] };
    showPicked();
    $("send-run").hidden = true;
    $("send-pick").hidden = false;
  });

  function start(selection, receivers) {
    $("send-pick").hidden = true;
    $("send-run").hidden = false;
    $("send-share").hidden = true;
    $("send-cancel").hidden = false;
    $("send-again").hidden = true;
    const rate = new RateMeter();
    let progress = { done: 0, total: 0, fileOk: new Map(), receivers };
    let state = "connecting";
    let rows = [];

    const render = throttle(() => {
      const { done, total, fileOk } = progress;
      $("send-total").max = Math.max(total, 1);
      $("send-total").value = state === "verified" ? Math.max(total, 1) : done;
      const speed = state === "transferring" || state === "verifying" ? rate.describe(total - done) : "";
      $("send-numbers").textContent = `${formatBytes(done)} of ${formatBytes(total)}${speed ? ` (${speed})` : ""}`;
      let start = 0;
      rows.forEach((row, index) => {
        const fileDone = Math.max(0, Math.min(row.entry.size, done - start));
        start += row.entry.size;
        let word = "";
        if ((fileOk.get(index) ?? 0) >= receivers || state === "verified") word = "verified";
        else if (FINAL_STATES.has(state)) word = state === "cancelled" ? "cancelled" : "not verified";
        else if (fileDone >= row.entry.size && (state === "transferring" || state === "verifying")) word = "sent";
        else if (fileDone > 0) word = "sending";
        else word = "waiting";
        updateFileRow(row, fileDone, word);
      });
    });

    session = new SendSession(selection.items, {
      dirs: selection.dirs,
      receivers,
      listener: {
        onCode(code) {
          const link = receiveLink(code);
          $("send-code").textContent = code;
          $("send-link").href = link;
          $("send-link").textContent = link;
          $("send-cli").textContent = `relay receive ${code} --relay ${window.location.origin}`;
          $("send-qr").replaceChildren(qrSvg(link, `QR code of the link ${link}`));
          $("send-share").hidden = false;
          $("copy-code").textContent = "Copy code";
          $("copy-link").textContent = "Copy link";
        },
        onState(next, detail) {
          state = next;
          const text = STATE_TEXT[next] ?? next;
          showStatus($("send-status"), next, detail ? `${text}: ${detail}` : text);
          if (FINAL_STATES.has(next)) {
            $("send-cancel").hidden = true;
            $("send-again").hidden = false;
            $("send-share").hidden = true;
          }
          render(true);
        },
        onProgress(next) {
          progress = next;
          rate.sample(next.done, Date.now());
          render();
        },
      },
    });
    progress.total = session.total;
    rows = renderFileRows($("send-files"), session.offer.files);
    render(true);
    session.run();
  }

  $("copy-code").addEventListener("click", (event) => copyText($("send-code").textContent, event.target));
  $("copy-link").addEventListener("click", (event) => copyText($("send-link").href, event.target));
}
