#!/usr/bin/env bash
# vendor/quinn is quinn as published on crates.io plus vendor/quinn.patch, and nothing else:
# longer GSO trains than quinn's constants allow (issue 16; bench/RESULTS.md, "Longer GSO
# trains from a patched quinn"). Cargo.toml's [patch.crates-io] builds it in quinn's place.
#
#   bash scripts/vendor-quinn.sh          # rewrite vendor/quinn from the crate and the patch
#   bash scripts/vendor-quinn.sh --check  # fail unless vendor/quinn is exactly that (CI)
#
# Moving to a new quinn: set VERSION and SHA256 (crates.io's checksum: Cargo.lock shows it
# once the [patch] line is commented out and `cargo update -p quinn` ran), run the script,
# and mend the patch where it no longer applies. Drop all of it once quinn makes the train
# length a setting (quinn-rs/quinn#2189).
set -euo pipefail

VERSION=0.11.12
SHA256=4051e23e9185c255a7e33ef59cdbca87a22d359052eecd22fc6b901fb37d9d11

root=$(cd "$(dirname "$0")/.." && pwd)
check=false
case "${1:-}" in
--check) check=true ;;
"") ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

find_crate() {
    ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"quinn-$VERSION.crate" 2>/dev/null | head -n 1
}
crate=$(find_crate || true)
if [ -z "$crate" ]; then
    # Through cargo, so whatever registry or mirror cargo is set up for serves it.
    mkdir -p "$tmp/fetch/src"
    : >"$tmp/fetch/src/lib.rs"
    cat >"$tmp/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-quinn"
version = "0.0.0"
edition = "2021"

[dependencies]
quinn = { version = "=$VERSION", default-features = false }
TOML
    cargo fetch --quiet --manifest-path "$tmp/fetch/Cargo.toml"
    crate=$(find_crate || true)
    if [ -z "$crate" ]; then
        echo "vendor-quinn: cargo fetched quinn $VERSION, but its .crate is not in cargo's cache" >&2
        exit 1
    fi
fi
if ! echo "$SHA256  $crate" | sha256sum --check --quiet - >/dev/null 2>&1; then
    echo "vendor-quinn: $crate is not the published quinn $VERSION (sha256 differs)" >&2
    exit 1
fi

mkdir "$tmp/out"
tar -xzf "$crate" -C "$tmp/out"
built="$tmp/out/quinn-$VERSION"
(cd "$built" && git apply -p1 "$root/vendor/quinn.patch")

if $check; then
    if ! diff -r "$built" "$root/vendor/quinn" >"$tmp/diff"; then
        head -n 40 "$tmp/diff" >&2
        echo "vendor-quinn: vendor/quinn is not quinn $VERSION plus vendor/quinn.patch (run scripts/vendor-quinn.sh)" >&2
        exit 1
    fi
    echo "vendor-quinn: vendor/quinn is quinn $VERSION plus vendor/quinn.patch"
else
    rm -rf "$root/vendor/quinn"
    cp -r "$built" "$root/vendor/quinn"
    echo "vendor-quinn: vendor/quinn rebuilt from quinn $VERSION and vendor/quinn.patch"
fi
