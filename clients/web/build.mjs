// Build the served assets into relay/static/ (the server package serves them), or the folder after --outdir:
// the bundled page script, the service worker, the HTML and the stylesheet. Output is deterministic for a given
// lockfile, so the committed relay/static/ can be compared with a fresh build (clients/web/check-dist.sh,
// tests/web/test_assets.py).

import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
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
await build({ ...common, entryPoints: [join(here, "src/style.css")], outfile: join(outdir, "style.css") });
for (const name of ["index.html", "favicon.svg"]) await copyFile(join(here, "src", name), join(outdir, name));
console.log(`built ${outdir}`);
