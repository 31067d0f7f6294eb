// Run the page's pure modules (zip.js, selection.js, words.js, sinks.localSegment) under Node on cases read from
// stdin (JSON) and print the results (JSON), so tests/web/test_page_logic.py can check them from Python, and
// read the written zips with Python's zipfile.
//   {"zips": [{"out": path, "forceZip64": bool, "dirs": [...], "files": [{"path", "hex"}]}],
//    "segments": [...], "selections": [[[path, size, mtime], ...], ...], "ends": [{side, state, outcome, ...}],
//    "zipNames": [offer, ...], "titles": [[[kind, text, ms], ...], ...]}
// A titles case is a sequence of calls of activity.js on a stand-in document: kind "progress" is
// setProgressTitle(text, ms), "final" is setTitle(text); the result is document.title after each call.
// A backoffs case runs connection.withBackoff on a fake clock: {"succeedAt": n | null, "attemptMs": ms,
// "stopAfterWaits": n | null}; the result is {waits, attempts, taken, tried}.

import { writeFileSync } from "node:fs";
import { createCRC32 } from "hash-wasm";
import { ZipWriter, zipName } from "../src/zip.js";
import { addToSelection, EMPTY_SELECTION, selectionNotes } from "../src/selection.js";
import { endWords } from "../src/words.js";
import { localSegment } from "../src/sinks.js";
import { setProgressTitle, setTitle } from "../src/activity.js";
import { withBackoff } from "../src/connection.js";

let input = "";
for await (const piece of process.stdin) input += piece;
const cases = JSON.parse(input);
const crc = await createCRC32();

const bytesOf = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (pair) => Number.parseInt(pair, 16));

for (const zip of cases.zips) {
  const writer = new ZipWriter({ forceZip64: zip.forceZip64, now: new Date(2026, 11, 1, 12, 30, 10) });
  const parts = [];
  for (const dir of zip.dirs) parts.push(writer.directory(dir));
  for (const file of zip.files) {
    const data = bytesOf(file.hex);
    parts.push(writer.fileStart(file.path, data.length));
    crc.init();
    // Feed the data in pieces, as chunks arrive.
    for (let at = 0; at < data.length; at += 1000) {
      crc.update(data.subarray(at, at + 1000));
      parts.push(data.subarray(at, at + 1000));
    }
    parts.push(writer.fileEnd(Number.parseInt(crc.digest("hex"), 16)));
  }
  parts.push(writer.finish());
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  if (total !== writer.offset) throw new Error(`writer counted ${writer.offset} bytes, wrote ${total}`);
  writeFileSync(zip.out, Buffer.concat(parts.map((part) => Buffer.from(part))));
}

const selections = cases.selections.map((batches) => {
  let selection = EMPTY_SELECTION;
  const notes = [];
  for (const batch of batches) {
    const items = batch.map(([path, size, mtime]) => ({ path, file: { name: path.split("/").pop(), size, lastModified: mtime } }));
    const result = addToSelection(selection, { items, dirs: [] });
    selection = result.selection;
    notes.push(...selectionNotes(result));
  }
  return { paths: selection.items.map((item) => item.path), notes };
});

// The DOM is outside this module: a stand-in document holds the title the page sets.
globalThis.document = { title: "" };
const titles = (cases.titles ?? []).map((calls) => calls.map(([kind, text, ms]) => {
  if (kind === "progress") setProgressTitle(text, ms);
  else setTitle(text);
  return globalThis.document.title;
}));

const backoffs = [];
for (const { succeedAt, attemptMs, stopAfterWaits } of cases.backoffs ?? []) {
  let clock = 1_000_000;
  const waits = [];
  let tried = 0;
  const { taken, attempts } = await withBackoff({
    wait: async (ms) => {
      waits.push(ms);
      clock += ms;
    },
    now: () => clock,
    stopped: () => stopAfterWaits !== null && waits.length >= stopAfterWaits,
    attempt: async (number) => {
      tried += 1;
      clock += attemptMs;
      return number === succeedAt ? "seat" : null;
    },
  });
  backoffs.push({ waits, attempts, taken, tried });
}

process.stdout.write(JSON.stringify({
  titles,
  backoffs,
  segments: cases.segments.map((segment) => localSegment(segment)),
  selections,
  ends: cases.ends.map((end) => endWords(end)),
  zipNames: cases.zipNames.map((offer) => zipName(offer)),
}));
