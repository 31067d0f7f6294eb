#!/bin/sh
# Fail if the committed relay/static/ (the built page the server serves) differs from a fresh build of the
# locked dependencies (CI runs this).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
npm --prefix "$here" ci --no-audit --no-fund >/dev/null
static="$here/../../relay/static"
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
node "$here/build.mjs" --outdir "$fresh/dist" >/dev/null
if ! diff -r "$static" "$fresh/dist"; then
  echo "relay/static is stale: run 'npm --prefix clients/web ci && npm --prefix clients/web run build' and commit relay/static/" >&2
  exit 1
fi
echo "relay/static matches a fresh build"
