// Turning what a person picked or dropped into offer entries: {path, file} plus empty folders.

/** Files from an <input type=file> (with webkitdirectory, webkitRelativePath keeps the folder). */
export function itemsFromInput(fileList) {
  return Array.from(fileList, (file) => ({ path: file.webkitRelativePath || file.name, file }));
}

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

function fileOf(entry) {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

/** Walk a dropped folder: every file with its relative path, and the folders that turned out empty. */
async function walk(entry, prefix, items, dirs) {
  const path = prefix ? `${prefix}/${entry.name}` : entry.name;
  if (entry.isFile) {
    items.push({ path, file: await fileOf(entry) });
    return;
  }
  const reader = entry.createReader();
  let count = 0;
  for (;;) {
    // readEntries returns the folder in batches until an empty one.
    const batch = await readEntries(reader);
    if (batch.length === 0) break;
    count += batch.length;
    for (const child of batch) await walk(child, path, items, dirs);
  }
  if (count === 0) dirs.push(path);
}

/**
 * Files and empty folders under a folder the person picked with showDirectoryPicker (File System Access API):
 * unlike <input webkitdirectory>, this sees empty folders, so they are offered too.
 */
export async function itemsFromDirectoryHandle(root) {
  const items = [];
  const dirs = [];
  const visit = async (handle, path) => {
    const children = [];
    for await (const child of handle.values()) children.push(child);
    children.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    if (children.length === 0) dirs.push(path);
    for (const child of children) {
      const childPath = `${path}/${child.name}`;
      if (child.kind === "file") items.push({ path: childPath, file: await child.getFile() });
      else await visit(child, childPath);
    }
  };
  await visit(root, root.name);
  return { items, dirs };
}

/** Files and empty folders from a drop event's DataTransfer. */
export async function itemsFromDrop(dataTransfer) {
  const items = [];
  const dirs = [];
  const entries = Array.from(dataTransfer.items || [])
    .filter((item) => item.kind === "file")
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null));
  if (entries.length === 0 || entries.some((entry) => entry === null)) {
    return { items: itemsFromInput(dataTransfer.files), dirs };
  }
  for (const entry of entries) await walk(entry, "", items, dirs);
  return { items, dirs };
}
