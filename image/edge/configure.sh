#!/usr/bin/env bash
# image/edge/configure.sh — owns writing the enrollment config into a built edge image.
#
# Usage: image/edge/configure.sh IMAGE AGENT_TOML [CA_PEM]
#
# Copies AGENT_TOML to /agent.toml on the image's config partition (FAT, label VANTAGE-CFG,
# mounted read-only at /etc/vantage in the running image), and CA_PEM, when given, to
# /ca.pem (= /etc/vantage/ca.pem). When CA_PEM is given and AGENT_TOML names neither ca_file
# nor ca_pem, `ca_file = "/etc/vantage/ca.pem"` is added. Works on the image file or on a
# flashed device (IMAGE=/dev/sdX); mounts nothing (mtools at the partition's byte offset).
set -euo pipefail

die() { echo "configure.sh: $*" >&2; exit 1; }
if [ $# -lt 2 ] || [ $# -gt 3 ]; then sed -n '3,4p' "$0" | sed 's/^# //' >&2; exit 2; fi
image=$1 toml=$2 ca=${3:-}

[ -e "$image" ] || die "no image $image"
[ -f "$toml" ] || die "no config $toml"
[ -z "$ca" ] || [ -f "$ca" ] || die "no CA file $ca"
for tool in sfdisk mcopy; do
    command -v "$tool" >/dev/null || die "$tool is missing: run image/edge/deps.sh"
done
grep -q '^[[:space:]]*server_url[[:space:]]*=' "$toml" || die "$toml has no server_url"
if [ -n "$ca" ]; then
    grep -q -- '-----BEGIN CERTIFICATE-----' "$ca" || die "$ca is not a PEM certificate"
fi

# The config partition: the GPT entry named VANTAGE-CFG.
line=$(sfdisk -d "$image" 2>/dev/null | grep 'name="VANTAGE-CFG"') ||
    die "$image has no partition named VANTAGE-CFG (not a Vantage edge image?)"
start=$(echo "$line" | sed -n 's/.*start= *\([0-9]*\).*/\1/p')
sector=$(sfdisk -d "$image" | sed -n 's/^sector-size: *//p')
offset=$((start * ${sector:-512}))
export MTOOLS_SKIP_CHECK=1
target="$image@@$offset"
label=$(mlabel -s -i "$target" :: 2>/dev/null || true)
case "$label" in *VANTAGE-CFG*) ;; *) die "partition at byte $offset is not the VANTAGE-CFG file system ($label)" ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$toml" "$work/agent.toml"
if [ -n "$ca" ]; then
    mcopy -o -i "$target" "$ca" ::/ca.pem
    if ! grep -Eq '^[[:space:]]*ca_(file|pem)[[:space:]]*=' "$toml"; then
        # Top-level keys must precede the first [table]: prepend.
        { echo 'ca_file = "/etc/vantage/ca.pem"'; cat "$toml"; } >"$work/agent.toml"
    fi
elif ! grep -Eq '^[[:space:]]*ca_(file|pem)[[:space:]]*=' "$toml"; then
    echo "configure.sh: warning: $toml sets neither ca_file nor ca_pem: enrollment will fail" >&2
fi
mcopy -o -i "$target" "$work/agent.toml" ::/agent.toml
sync
echo "configure.sh: wrote agent.toml${ca:+ and ca.pem} to VANTAGE-CFG at byte $offset of $image" >&2
