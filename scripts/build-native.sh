#!/usr/bin/env bash
# Builds Berth's native helper (libs/runtime/native/berth-launch.c) into libs/runtime/native/build/.
# Idempotent: rebuilds only when the source is newer than the binary (or FORCE=1).
# Prefers a static musl binary (tiny RSS for the per-container supervisor: apt-get install musl-tools),
# then a static glibc binary, then a dynamic one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here/libs/runtime/native/berth-launch.c"
out_dir="$here/libs/runtime/native/build"
out="$out_dir/berth-launch"
flags=(-Wall -Wextra -O2 -s)

if [[ -x "$out" && "$out" -nt "$src" && "${FORCE:-0}" != 1 ]]; then
  echo "berth-launch is up to date: $out"
  exit 0
fi
mkdir -p "$out_dir"
# build to a temporary name and rename: concurrent builds never leave a half-written binary in place
tmp="$(mktemp "$out_dir/.berth-launch.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

built=""
if command -v musl-gcc >/dev/null 2>&1 && musl-gcc "${flags[@]}" -static -o "$tmp" "$src"; then
  built="musl-gcc -static"
elif command -v gcc >/dev/null 2>&1 && gcc "${flags[@]}" -static -o "$tmp" "$src" 2>/dev/null; then
  built="gcc -static"
elif command -v gcc >/dev/null 2>&1 && gcc "${flags[@]}" -o "$tmp" "$src"; then
  built="gcc (dynamic: install musl-tools for a smaller supervisor)"
else
  echo "cannot build berth-launch: install gcc (and musl-tools for a static musl binary)" >&2
  exit 1
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "built $out with $built"
