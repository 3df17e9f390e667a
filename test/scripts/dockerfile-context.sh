#!/usr/bin/env bash
# make lint: the Dockerfile's build stage copies exactly what cargo needs to
# load the workspace. Copies what its COPY lines name (from the first stage,
# up to the next FROM) into an empty directory and loads the workspace there
# with `cargo metadata --locked`: a missing member or lock change fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
while read -r _ args; do
  # COPY SRC... DEST (no --from in the build stage)
  read -r -a words <<<"$args"
  dest=${words[-1]}
  unset 'words[-1]'
  for src in "${words[@]}"; do
    case "$dest" in
      ./) mkdir -p "$tmp" && cp -a "$src" "$tmp/" ;;
      *) mkdir -p "$tmp/$(dirname "$dest")" && cp -a "$src" "$tmp/$dest" ;;
    esac
    n=$((n + 1))
  done
done < <(awk '/^FROM/{stage++} stage==1 && /^COPY /' Dockerfile)
[ "$n" -gt 0 ] || { echo "no COPY lines found in the Dockerfile's build stage" >&2; exit 1; }
if ! out=$(cd "$tmp" && cargo metadata --locked --format-version 1 2>&1 >/dev/null); then
  echo "the Dockerfile's build context cannot load the workspace:" >&2
  echo "$out" >&2
  exit 1
fi
echo "Dockerfile build context: $n paths, workspace loads"
