#!/usr/bin/env bash
# What the registry repo's CI does, end to end on the example registry, with a throw-away dev key.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=.demo
rm -rf "$OUT" && mkdir -p "$OUT"

run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

run gwc keygen --out "$OUT/dev-signing"
run gwc validate .
run gwc build . --key "$OUT/dev-signing.key" --out "$OUT/store" --serial "$(date +%s)"
run gwc verify "$OUT/store/bundle.json" --trust "$OUT/dev-signing.pub"
run gwc inspect "$OUT/store/bundle.json" --trust "$OUT/dev-signing.pub"
printf '\nThe signed bundle is %s/store/bundle.json (and its content-addressed copy under %s/store/bundles/).\n' "$OUT" "$OUT"
