#!/usr/bin/env bash
# scripts/vendor-ui.sh: owns control-plane/ui/vendor/uplot/, the dashboard's vendored uPlot (pinned version, checked tarball).
#
# Fetches uplot@$UPLOT_VERSION from the npm registry with `npm pack`, checks the tarball's
# sha512 against the integrity pinned below (computed here with coreutils, and compared with what
# npm reports), and writes uPlot.iife.min.js, uPlot.min.css, LICENSE and VERSION (version and
# integrity) into control-plane/ui/vendor/uplot/. Running it again gives the same files.
# To move to another release: change both pins, with the integrity from
# `npm view uplot@<version> dist.integrity`.
set -euo pipefail

UPLOT_VERSION=1.6.32
UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=$repo/control-plane/ui/vendor/uplot

if ! command -v npm >/dev/null; then
    log "Installing npm from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -q || apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends nodejs npm
fi

work=$(mktemp -d /tmp/vantage-vendor-ui.XXXXXX)
trap 'rm -rf "$work"' EXIT

log "Fetching uplot@$UPLOT_VERSION"
# Run from the empty work directory so no project's .npmrc or package.json is in play.
(cd "$work" && npm pack "uplot@$UPLOT_VERSION" --json --pack-destination "$work" >"$work/pack.json")
tarball=$work/uplot-$UPLOT_VERSION.tgz
[ -f "$tarball" ] || die "npm pack did not write $tarball"

# Integrity of the bytes we got, as npm spells it: "sha512-" + base64 of the raw digest.
actual="sha512-$(sha512sum "$tarball" | cut -d' ' -f1 | tr a-f A-F | basenc --base16 -d | base64 -w0)"
[ "$actual" = "$UPLOT_INTEGRITY" ] ||
    die "uplot-$UPLOT_VERSION.tgz has integrity $actual, pinned $UPLOT_INTEGRITY"
grep -qF "\"integrity\": \"$UPLOT_INTEGRITY\"" "$work/pack.json" ||
    die "npm reports another integrity for uplot@$UPLOT_VERSION than the pinned one: $(grep integrity "$work/pack.json")"
log "Integrity checked: $actual"

tar -xzf "$tarball" -C "$work" package/LICENSE package/dist/uPlot.iife.min.js package/dist/uPlot.min.css
grep -qF "\"version\": \"$UPLOT_VERSION\"" <(tar -xzOf "$tarball" package/package.json) ||
    die "the tarball's package.json is not version $UPLOT_VERSION"

mkdir -p "$dest"
install -m 644 "$work/package/dist/uPlot.iife.min.js" "$dest/uPlot.iife.min.js"
install -m 644 "$work/package/dist/uPlot.min.css" "$dest/uPlot.min.css"
install -m 644 "$work/package/LICENSE" "$dest/LICENSE"
printf 'version=%s\nintegrity=%s\n' "$UPLOT_VERSION" "$UPLOT_INTEGRITY" >"$dest/VERSION"
log "Wrote uPlot $UPLOT_VERSION into ${dest#"$repo"/}"
