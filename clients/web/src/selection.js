// What the person picked to send: files ({path, file}) and empty folders. Adding never drops anything without a
// word: a second file with a name already in the selection is renamed ("report (2).txt"), the same file picked
// twice is reported as already there, and a file whose name cannot be sent is left out and named, while the
// rest of the selection goes ahead. No DOM: the send view shows the notes this returns.

import { checkPath, escapeText, makeOffer } from "./protocol.js";

export const EMPTY_SELECTION = Object.freeze({ items: [], dirs: [] });

// Two names are the same on some file system when they match after case folding and NFC (relay.protocol's rule;
// Python folds with str.casefold(), upper- then lower-casing is the page's approximation).
const fold = (path) => path.normalize("NFC").toUpperCase().toLowerCase().normalize("NFC");

// checkPath's messages end with ": <the path>"; the note names the path itself.
const reasonOnly = (message) => message.replace(/: [^:]*$/, "");

function sameFile(a, b) {
  return a === b || (a.name === b.name && a.size === b.size && a.lastModified === b.lastModified);
}

/** "dir/report.txt" -> "dir/report (2).txt" (or 3, 4, ...), the first whose folded form is not in `taken`. */
export function freeName(path, taken) {
  const slash = path.lastIndexOf("/");
  const folder = path.slice(0, slash + 1);
  const name = path.slice(slash + 1);
  const dot = name.lastIndexOf(".");
  const [stem, extension] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
  for (let n = 2; ; n++) {
    const candidate = `${folder}${stem} (${n})${extension}`;
    if (!taken.has(fold(candidate))) return candidate;
  }
}

/**
 * Add `items` and `dirs` to `selection`. Returns {selection, renamed: [[from, to]], already: [path],
 * refused: [{path, why}]}: every file of `items` ends in exactly one of selection, already or refused.
 */
export function addToSelection(selection, { items, dirs = [] }) {
  const taken = new Map(selection.items.map((item) => [fold(item.path), item]));
  const next = [...selection.items];
  const renamed = [];
  const already = [];
  const refused = [];
  for (const item of items) {
    try {
      checkPath(item.path);
    } catch (error) {
      refused.push({ path: item.path, why: reasonOnly(error.message) });
      continue;
    }
    let path = item.path;
    const existing = taken.get(fold(path));
    if (existing) {
      if (sameFile(existing.file, item.file) && existing.path === item.path) {
        already.push(path);
        continue;
      }
      path = freeName(path, taken);
      renamed.push([item.path, path]);
    }
    const entry = { path, file: item.file };
    taken.set(fold(path), entry);
    next.push(entry);
  }
  const nextDirs = [...selection.dirs];
  for (const dir of dirs) {
    try {
      checkPath(dir);
    } catch (error) {
      refused.push({ path: `${dir}/`, why: reasonOnly(error.message) });
      continue;
    }
    if (!nextDirs.includes(dir)) nextDirs.push(dir);
  }
  // A file that is also a folder of another entry ("a" and "a/b") cannot be offered: leave out the newcomers
  // that clash, one by one, so the earlier selection stays as it was.
  let candidate = { items: next, dirs: nextDirs };
  if (layoutProblem(candidate)) {
    candidate = { items: [...selection.items], dirs: [...selection.dirs] };
    for (const entry of next.slice(selection.items.length)) {
      const trial = { items: [...candidate.items, entry], dirs: candidate.dirs };
      const why = layoutProblem(trial);
      if (why) refused.push({ path: entry.path, why });
      else candidate = trial;
    }
    for (const dir of nextDirs.slice(selection.dirs.length)) {
      const trial = { items: candidate.items, dirs: [...candidate.dirs, dir] };
      const why = layoutProblem(trial);
      if (why) refused.push({ path: `${dir}/`, why });
      else candidate = trial;
    }
  }
  return { selection: candidate, renamed, already, refused };
}

/** The selection without file `index`. */
export function removeFromSelection(selection, index) {
  return { items: selection.items.filter((_, at) => at !== index), dirs: selection.dirs };
}

// The reason the selection cannot be offered as it is, or "" when it can.
function layoutProblem(selection) {
  try {
    makeOffer(selection.items.map((item) => ({ path: item.path, size: item.file.size })), selection.dirs);
    return "";
  } catch (error) {
    return reasonOnly(error.message);
  }
}

/** The sentences for what add() did besides adding: renames, files already there, files left out. */
export function selectionNotes({ renamed, already, refused }) {
  const notes = [];
  for (const [from, to] of renamed.slice(0, 5)) {
    notes.push(`The selection already has a file named ${escapeText(from)}; this one is sent as ${escapeText(to)}.`);
  }
  if (renamed.length > 5) notes.push(`${renamed.length - 5} more files were renamed the same way.`);
  if (already.length === 1) notes.push(`${escapeText(already[0])} was already selected.`);
  else if (already.length > 1) notes.push(`${already.length} of these files were already selected.`);
  for (const { path, why } of refused.slice(0, 5)) {
    notes.push(`Left out ${escapeText(path)}: ${why}. The other files are selected.`);
  }
  if (refused.length > 5) notes.push(`${refused.length - 5} more files were left out for the same kind of reason.`);
  return notes;
}
