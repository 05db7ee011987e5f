#!/usr/bin/env bash
# Writes the manifest of every plugin in plugins/ beside its library in target/release (olive-host finds a plugin
# through the manifest next to the library and reads it before loading). Run after a release build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for plugin in "$root"/plugins/*/Cargo.toml; do
    lib=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$plugin" | head -n 1 | tr - _)
    "$root/target/release/olive-host" plugins manifest "$root/target/release/lib$lib.so" \
        --output_dir "$root/target/release" >/dev/null
done
