// Build the served assets into relay/static/ (the server package serves them), or the folder after --outdir:
// the bundled page script, the service worker, the HTML and the stylesheet. Output is deterministic for a given
// lockfile, so the committed relay/static/ can be compared with a fresh build (clients/web/check-dist.sh,
// tests/web/test_assets.py).
//
// The HTML gets Subresource Integrity: `integrity="sha384-..."` on its script and stylesheet tags, computed here
// from the built files, so a browser refuses an app.js or style.css that differs from what this build made
// (docs/security.md says what that protects and what it cannot).

import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf("--outdir");
const outdir = resolve(flag >= 0 ? process.argv[flag + 1] : join(here, "..", "..", "relay", "static"));

const common = {
  bundle: true,
  minify: true,
  legalComments: "eof",
  target: ["es2022"],
  charset: "utf8",
  loader: { ".txt": "text" },
  logLevel: "warning",
};

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
await build({ ...common, entryPoints: [join(here, "src/main.js")], outfile: join(outdir, "app.js"), format: "esm" });
await build({ ...common, entryPoints: [join(here, "src/sw.js")], outfile: join(outdir, "sw.js"), format: "iife" });
await build({ ...common, entryPoints: [join(here, "src/tick.js")], outfile: join(outdir, "tick.js"), format: "iife" });
await build({ ...common, entryPoints: [join(here, "src/aead-worker.js")], outfile: join(outdir, "aead-worker.js"), format: "iife" });
await build({ ...common, entryPoints: [join(here, "src/style.css")], outfile: join(outdir, "style.css") });
await copyFile(join(here, "src", "favicon.svg"), join(outdir, "favicon.svg"));

/** The SRI value of a built file: sha384, base64. */
async function integrity(name) {
  return `sha384-${createHash("sha384").update(await readFile(join(outdir, name))).digest("base64")}`;
}

// Exactly these two tags carry integrity; a page whose tags changed fails the build rather than ship without it.
let html = await readFile(join(here, "src", "index.html"), "utf8");
const tags = [
  ['<link rel="stylesheet" href="style.css">', "style.css", (value) => `<link rel="stylesheet" href="style.css" integrity="${value}">`],
  ['<script type="module" src="app.js"></script>', "app.js", (value) => `<script type="module" src="app.js" integrity="${value}"></script>`],
];
for (const [tag, name, withIntegrity] of tags) {
  if (html.split(tag).length !== 2) throw new Error(`index.html must hold exactly one ${tag}`);
  html = html.replace(tag, withIntegrity(await integrity(name)));
}
await writeFile(join(outdir, "index.html"), html);
console.log(`built ${outdir}`);
