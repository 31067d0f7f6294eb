// Where received files go. Every sink has the same shape:
//   prepare(offer)        check the offer can be stored (throws SinkError), create empty folders
//   openFile(index, entry) start a file
//   write(bytes)          append verified bytes (Uint8Array owning its whole ArrayBuffer)
//   closeFile()           the file authenticated whole (and its digest matched)
//   abortFile()           the file failed: throw away what was written
//
// Sinks that keep nothing unless everything arrived (a zip, a chosen folder) also have abortAll(), and finish()
// to end the whole transfer (give the files their names, end the zip); `keepsPartial` says whether verified
// files stay when a later one fails, `resumable` whether the sink can carry on after a lost connection.
//
// Three ways, best first: a folder or file the person picks (File System Access API: streams to disk, under
// part names until every file authenticated), a streamed download through our service worker (streams to the
// downloads folder; cannot resume), and an in-memory Blob (only for small files; held in the tab until saved).

import { createCRC32 } from "hash-wasm";
import { ZipWriter, zipName } from "./zip.js";

export const MEMORY_LIMIT = 256 * 1024 * 1024;
const DOWNLOAD_START_TIMEOUT_MS = 15000;
const KEEPALIVE_MS = 10000;

/** A failure to store; `code` is the protocol error code to report to the sender. */
export class SinkError extends Error {
  constructor(message, code = "write_failed") {
    super(message);
    this.name = "SinkError";
    this.code = code;
  }
}

function splitPath(path) {
  const parts = path.split("/");
  return { folders: parts.slice(0, -1), name: parts[parts.length - 1] };
}

function writeFailed(error, what) {
  if (error instanceof SinkError) return error;
  if (error && error.name === "QuotaExceededError") return new SinkError(`no space left for ${what}`, "disk_full");
  return new SinkError(`could not write ${what}: ${error && error.message ? error.message : error}`);
}

/** A name for a downloads folder, which has no sub-folders: "a/b/c.txt" -> "a_b_c.txt". */
export function downloadName(path) {
  return path.split("/").join("_");
}

// Characters some system refuses in a file name (Windows: <>:"|?*\ and control characters).
const FORBIDDEN_CHAR_RE = /[<>:"|?*\\\u0000-\u001f]/g;
const RESERVED_STEMS = new Set(["con", "prn", "aux", "nul", ...[1, 2, 3, 4, 5, 6, 7, 8, 9].flatMap((n) => [`com${n}`, `lpt${n}`])]);

/**
 * A name a file system will take for offered path segment `segment`: each forbidden character becomes "_",
 * so do trailing dots and spaces, and a Windows-reserved stem ("con", "lpt1") gets a "_" in front.
 */
export function localSegment(segment) {
  let name = segment.replace(FORBIDDEN_CHAR_RE, "_").replace(/[. ]+$/, (tail) => "_".repeat(tail.length));
  if (RESERVED_STEMS.has(name.split(".", 1)[0].replace(/ +$/, "").toLowerCase())) name = `_${name}`;
  return name;
}

// --- File System Access API --------------------------------------------------------------------------------

export const canPickFolder = () => typeof window.showDirectoryPicker === "function";
export const canPickFile = () => typeof window.showSaveFilePicker === "function";

/** A name no offered file has: a random `.relay-<12 hex digits>.part`, as clients/store.py names its parts. */
export function partName() {
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `.relay-${hex}.part`;
}

/**
 * Files under a folder the person picked; refuses to overwrite anything that exists. All or nothing, as the
 * terminal client: each file is written to a `.relay-*.part` file beside its final name, and the parts get their
 * final names only in finish(), once every file of the transfer authenticated. Any failure before that removes
 * every part and every folder the transfer created, so nothing of it is left under a final name.
 *
 * `resumable`: the file being written stays open across a lost connection (the session takes its seat back and
 * the sender continues from what was written), so the transfer can resume.
 */
export class FolderSink {
  static async pick() {
    return new FolderSink(await window.showDirectoryPicker({ id: "relay-receive", mode: "readwrite" }));
  }

  constructor(root) {
    this.root = root;
    this.label = `the folder "${root.name}"`;
    this.keepsPartial = false;
    this.resumable = true;
    this.current = null;
    this.parts = []; // files written whole, still under their part names: {parent, name, part, handle, path}
    this.created = []; // [parent, name] of each folder this transfer created, outermost first
    this.cleaning = null;
    this.renamed = new Map(); // offered path -> the path it was saved under, where the browser refused a name
  }

  async prepare(offer) {
    for (const entry of offer.files) {
      if (await this.#exists(entry.path)) {
        throw new SinkError(`${entry.path} already exists in the chosen folder`, "file_exists");
      }
    }
    try {
      for (const dir of offer.dirs) await this.#folder(dir.split("/"), true);
    } catch (error) {
      throw writeFailed(error, "a folder");
    }
  }

  async openFile(index, entry) {
    const { folders, name: offered } = splitPath(entry.path);
    try {
      const parent = await this.#folder(folders, true);
      const name = await this.#nameIn(parent, offered, "file");
      if (name !== offered) this.#renamed(entry.path, folders, name);
      const part = partName();
      const handle = await parent.getFileHandle(part, { create: true });
      // createWritable writes to a hidden swap file; close() puts it under the part name.
      const writable = await handle.createWritable({ keepExistingData: false });
      this.current = { parent, name, part, handle, writable, path: entry.path };
    } catch (error) {
      throw writeFailed(error, entry.path);
    }
  }

  async write(bytes) {
    try {
      await this.current.writable.write(bytes);
    } catch (error) {
      throw writeFailed(error, this.current.path);
    }
  }

  /** The file authenticated whole: it is on disk under its part name until finish(). */
  async closeFile() {
    const current = this.current;
    this.current = null;
    try {
      await current.writable.close();
    } catch (error) {
      await current.parent.removeEntry(current.part).catch(() => {});
      throw writeFailed(error, current.path);
    }
    delete current.writable;
    this.parts.push(current);
  }

  /**
   * Every file authenticated: give each part its final name. If one cannot be given (a file of that name
   * appeared meanwhile, the disk refused), the ones already renamed are removed again and everything is discarded.
   */
  async finish() {
    const renamed = [];
    try {
      for (const part of this.parts) {
        if (await this.#taken(part.parent, part.name)) {
          throw new SinkError(`${part.path} appeared in the chosen folder during the transfer`, "file_exists");
        }
        await part.handle.move(part.name);
        renamed.push(part);
      }
    } catch (error) {
      for (const part of renamed) await part.parent.removeEntry(part.name).catch(() => {});
      this.parts = this.parts.filter((part) => !renamed.includes(part));
      await this.abortAll();
      throw writeFailed(error, "the received files");
    }
    this.parts = [];
    this.created = [];
  }

  async abortFile() {
    await this.abortAll();
  }

  /** Remove the part being written, every part written whole, and the folders this transfer created. */
  abortAll() {
    if (this.cleaning === null) {
      const { current, parts, created } = this;
      this.current = null;
      this.parts = [];
      this.created = [];
      this.cleaning = (async () => {
        if (current !== null) {
          await current.writable?.abort().catch(() => {});
          await current.parent.removeEntry(current.part).catch(() => {});
        }
        for (const part of parts) await part.parent.removeEntry(part.part).catch(() => {});
        // Innermost first; a folder that is not empty (something else was put there meanwhile) stays.
        for (const [parent, name] of created.reverse()) await parent.removeEntry(name).catch(() => {});
      })();
    }
    return this.cleaning;
  }

  // The folder at `parts` under the root; with `create`, missing folders are made and remembered (abortAll
  // removes them again).
  async #folder(parts, create) {
    let folder = this.root;
    for (const part of parts) {
      const { name, handle } = await this.#child(folder, part);
      if (handle !== null) {
        folder = handle;
        continue;
      }
      if (!create) throw new SinkError(`no folder ${part}`);
      const made = await folder.getDirectoryHandle(name, { create: true });
      this.created.push([folder, name]);
      folder = made;
    }
    return folder;
  }

  // The name the browser takes for folder segment `part` (the offered one, else its localSegment()), and the
  // existing sub-folder of that name, or null.
  async #child(folder, part) {
    for (const name of localSegment(part) === part ? [part] : [part, localSegment(part)]) {
      try {
        return { name, handle: await folder.getDirectoryHandle(name, { create: false }) };
      } catch (error) {
        if (error.name === "NotFoundError") return { name, handle: null };
        if (error.name !== "TypeError") throw error;
      }
    }
    throw new SinkError(`the browser refused the folder name ${part}`);
  }

  async #taken(parent, name) {
    const file = await parent.getFileHandle(name, { create: false }).then(() => true, () => false);
    return file || parent.getDirectoryHandle(name, { create: false }).then(() => true, () => false);
  }

  // The offered name if the browser takes it, else its localSegment(); a mapped name must not already exist
  // (two offered names can map to the same one).
  async #nameIn(parent, name, kind) {
    try {
      await parent.getFileHandle(name, { create: false });
      return name;
    } catch (error) {
      if (error.name !== "TypeError") return name; // NotFoundError: a valid, free name
    }
    const mapped = localSegment(name);
    if (mapped === name) throw new SinkError(`the browser refused the ${kind} name ${name}`);
    const taken = await parent.getFileHandle(mapped, { create: false }).then(() => true, () => false);
    if (taken) throw new SinkError(`${mapped} (for ${name}) already exists in the chosen folder`, "file_exists");
    return mapped;
  }

  #renamed(path, folders, name) {
    this.renamed.set(path, [...folders.map((part) => localSegment(part)), name].join("/"));
  }

  async #exists(path) {
    const { folders, name } = splitPath(path);
    try {
      const parent = await this.#folder(folders, false);
      await parent.getFileHandle(name);
      return true;
    } catch {
      return false;
    }
  }
}

/** One file saved where the person chose in a "Save as" dialog. */
export class SaveFileSink {
  static async pick(offer) {
    const suggestedName = splitPath(offer.files[0].path).name;
    return new SaveFileSink(await window.showSaveFilePicker({ id: "relay-receive", suggestedName }));
  }

  constructor(handle) {
    this.handle = handle;
    this.label = `the file "${handle.name}"`;
    this.keepsPartial = true;
    this.resumable = true; // the file stays open across a lost connection; it is written only on close
    this.writable = null;
  }

  async prepare(offer) {
    if (offer.files.length !== 1) throw new SinkError("a save-as file can hold only one file");
  }

  async openFile(index, entry) {
    try {
      this.writable = await this.handle.createWritable({ keepExistingData: false });
    } catch (error) {
      throw writeFailed(error, entry.path);
    }
  }

  async write(bytes) {
    try {
      await this.writable.write(bytes);
    } catch (error) {
      throw writeFailed(error, this.handle.name);
    }
  }

  async closeFile() {
    const writable = this.writable;
    this.writable = null;
    try {
      await writable.close();
    } catch (error) {
      throw writeFailed(error, this.handle.name);
    }
  }

  async abortFile() {
    const writable = this.writable;
    this.writable = null;
    if (writable !== null) await writable.abort().catch(() => {});
  }
}

// --- streamed download through the service worker ----------------------------------------------------------

let registrationPromise = null;

const REGISTER_ATTEMPTS = 3;
const REGISTER_RETRY_MS = 1000;

/**
 * Register sw.js once; resolves to the active registration, or null where service workers are unavailable.
 * A registration can fail for a moment (seen in Chromium while the worker of an earlier tab was still busy with
 * a download): then the registration already in place is used, or registering is tried again a little later.
 */
export function registerDownloadWorker() {
  if (registrationPromise === null) {
    registrationPromise = (async () => {
      if (!("serviceWorker" in navigator) || !window.isSecureContext) return null;
      for (let attempt = 1; attempt <= REGISTER_ATTEMPTS; attempt++) {
        try {
          // Relative to the page, so the page also works behind a proxy under a path prefix (/relay/).
          await navigator.serviceWorker.register("sw.js", { scope: "./" });
          const registration = await navigator.serviceWorker.ready;
          if (registration.active) return registration;
        } catch {
          const existing = await navigator.serviceWorker.getRegistration("./").catch(() => undefined);
          if (existing && existing.active) return existing;
        }
        if (attempt < REGISTER_ATTEMPTS) await new Promise((resolve) => setTimeout(resolve, REGISTER_RETRY_MS));
      }
      return null;
    })();
  }
  return registrationPromise;
}

function randomId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * One browser download whose bytes the service worker streams from this page: the page posts a chunk only when
 * the worker's stream asks for one ("pull"), so neither side queues more than a few chunks, whatever the size.
 */
class DownloadStream {
  constructor(registration, frames) {
    this.worker = registration.active;
    this.scope = registration.scope;
    this.frames = frames;
    this.current = null;
  }

  /** Start the download of `name` (`size` bytes, or undefined when not known in advance). */
  async open(name, size) {
    const channel = new MessageChannel();
    const id = randomId();
    const current = {
      port: channel.port1, credits: 0, waiter: null, registered: false, started: false, cancelled: false, path: name,
    };
    this.current = current;
    const wake = () => {
      const waiter = current.waiter;
      current.waiter = null;
      if (waiter) waiter();
    };
    current.port.onmessage = (event) => {
      const kind = event.data && event.data.type;
      if (kind === "pull") current.credits += 1;
      if (kind === "registered") current.registered = true;
      if (kind === "started") current.started = true;
      if (kind === "cancelled") current.cancelled = true;
      wake();
    };
    current.keepalive = setInterval(() => this.worker.postMessage({ type: "keepalive" }), KEEPALIVE_MS);
    this.worker.postMessage({ type: "download", id, name, size }, [channel.port2]);
    const deadline = Date.now() + DOWNLOAD_START_TIMEOUT_MS;
    await this.#until(current, () => current.registered, deadline, name);
    const frame = document.createElement("iframe");
    frame.hidden = true;
    frame.title = "download";
    // Under the worker's scope, wherever the page is served from.
    frame.src = new URL(`relay-download/${id}/${encodeURIComponent(name)}`, this.scope).href;
    document.body.append(frame);
    this.frames.push(frame);
    await this.#until(current, () => current.started, deadline, name);
  }

  // Wait for a message from the worker (or a cancel), at most until `deadline`.
  async #until(current, condition, deadline, path) {
    while (!condition() && !current.cancelled) {
      if (Date.now() > deadline) {
        this.abort();
        throw new SinkError(`the browser did not start the download of ${path}`);
      }
      await new Promise((resolve) => {
        current.waiter = resolve;
        setTimeout(resolve, 250);
      });
    }
  }

  async write(bytes) {
    const current = this.current;
    if (current === null) throw new SinkError("the download was already stopped");
    while (current.credits === 0 && !current.cancelled) {
      await new Promise((resolve) => {
        current.waiter = resolve;
      });
    }
    if (current.cancelled) throw new SinkError(`the download of ${current.path} was cancelled in the browser`);
    current.credits -= 1;
    const buffer =
      bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.slice().buffer;
    current.port.postMessage({ type: "chunk", buffer }, [buffer]);
  }

  end() {
    this.#stop({ type: "end" });
  }

  abort() {
    this.#stop({ type: "abort" });
  }

  #stop(message) {
    const current = this.current;
    this.current = null;
    if (current === null) return;
    clearInterval(current.keepalive);
    current.port.postMessage(message);
    current.port.close();
  }
}

/** Each file becomes one browser download (used for a single file: many files or folders go into one zip). */
export class StreamDownloadSink {
  constructor(registration) {
    this.registration = registration;
    this.label = "your downloads folder";
    this.keepsPartial = true;
    this.frames = [];
    this.stream = null;
  }

  async prepare() {}

  async openFile(index, entry) {
    this.stream = new DownloadStream(this.registration, this.frames);
    await this.stream.open(downloadName(entry.path), entry.size);
  }

  async write(bytes) {
    await this.stream.write(bytes);
  }

  async closeFile() {
    this.stream?.end();
    this.stream = null;
  }

  async abortFile() {
    this.stream?.abort();
    this.stream = null;
  }

  /** Remove the hidden download frames (the downloads themselves continue). */
  dispose() {
    for (const frame of this.frames) frame.remove();
    this.frames = [];
  }
}

/**
 * Many files or any folder as ONE download: a stored zip built as the bytes arrive (zip.js), never held in
 * memory. The download only completes (finish) once every file was verified; any failure stops it, so a
 * browser never shows a finished zip with missing or unverified files.
 */
export class ZipDownloadSink {
  constructor(registration) {
    this.registration = registration;
    this.frames = [];
    this.stream = null;
    this.writer = null;
    this.keepsPartial = false;
    this.label = "your downloads folder";
  }

  async prepare(offer) {
    this.offer = offer;
    this.name = zipName(offer);
    this.label = `your downloads folder as ${this.name}`;
    this.crc = await createCRC32();
    this.writer = new ZipWriter();
  }

  async openFile(index, entry) {
    await this.#started();
    this.crc.init();
    await this.stream.write(this.writer.fileStart(entry.path, entry.size));
  }

  async write(bytes) {
    this.crc.update(bytes);
    await this.stream.write(bytes);
  }

  async closeFile() {
    await this.stream.write(this.writer.fileEnd(Number.parseInt(this.crc.digest("hex"), 16)));
  }

  async abortFile() {
    this.abortAll();
  }

  /** Stop the zip download: it then fails in the browser instead of finishing. */
  abortAll() {
    this.stream?.abort();
  }

  /** Every file arrived and was verified: write the zip's table of contents and end the download. */
  async finish() {
    await this.#started();
    await this.stream.write(this.writer.finish());
    this.stream.end();
  }

  dispose() {
    for (const frame of this.frames) frame.remove();
    this.frames = [];
  }

  // The download starts with the first file (or at the end, for folders only); empty folders go first.
  async #started() {
    if (this.stream !== null) return;
    this.stream = new DownloadStream(this.registration, this.frames);
    await this.stream.open(this.name, undefined);
    for (const dir of this.offer.dirs) await this.stream.write(this.writer.directory(dir));
  }
}

// --- a text snippet --------------------------------------------------------------------------------------------

/** A text snippet (an offer of kind "text", at most 1 MiB): kept in the page and shown once verified. */
export class TextSink {
  constructor() {
    this.label = "this page";
    this.keepsPartial = true;
    this.parts = [];
    this.text = null;
  }

  async prepare(offer) {
    if (offer.kind !== "text") throw new SinkError("only a text offer can be shown as text");
  }

  async openFile() {
    this.parts = [];
  }

  async write(bytes) {
    this.parts.push(bytes);
  }

  async closeFile() {
    const bytes = new Uint8Array(await new Blob(this.parts).arrayBuffer());
    this.parts = [];
    try {
      this.text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw new SinkError("the text is not valid UTF-8", "malformed_message");
    }
  }

  async abortFile() {
    this.parts = [];
  }
}

// --- in-memory fallback ------------------------------------------------------------------------------------

/** Holds each file in memory until it is verified, then hands it to the browser as a download. */
export class MemorySink {
  constructor(limit = MEMORY_LIMIT) {
    this.limit = limit;
    this.label = "your downloads folder";
    this.keepsPartial = true;
    this.current = null;
    this.urls = [];
  }

  /** The offered files this sink cannot hold. */
  tooBig(offer) {
    return offer.files.filter((entry) => entry.size > this.limit);
  }

  async prepare(offer) {
    const big = this.tooBig(offer);
    if (big.length > 0) throw new SinkError(`${big[0].path} is too big to receive into memory`, "disk_full");
  }

  async openFile(index, entry) {
    this.current = { entry, parts: [] };
  }

  async write(bytes) {
    this.current.parts.push(bytes);
  }

  async closeFile() {
    const { entry, parts } = this.current;
    this.current = null;
    const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
    this.urls.push(url);
    const link = document.createElement("a");
    link.href = url;
    link.download = downloadName(entry.path);
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
  }

  async abortFile() {
    this.current = null;
  }

  /** Release the Blobs (call once the downloads have had time to start). */
  dispose() {
    for (const url of this.urls) URL.revokeObjectURL(url);
    this.urls = [];
  }
}
