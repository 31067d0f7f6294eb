#!/bin/sh
# Fail if the committed dist/ differs from a fresh build of the locked dependencies (CI runs this).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
npm --prefix "$here" ci --no-audit --no-fund >/dev/null
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
node "$here/build.mjs" --outdir "$fresh/dist" >/dev/null
if ! diff -r "$here/dist" "$fresh/dist"; then
  echo "clients/web/dist is stale: run 'npm --prefix clients/web ci && npm --prefix clients/web run build' and commit dist/" >&2
  exit 1
fi
echo "clients/web/dist matches a fresh build"
