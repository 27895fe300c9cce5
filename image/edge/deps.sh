#!/usr/bin/env bash
# image/edge/deps.sh — owns the host tools the edge image build and its boot test need.
# Installs missing Debian packages with apt-get (idempotent, silent when all are present) and
# enables the foreign dpkg architecture (arm64 on an amd64 host) whose kernel, busybox and
# GRUB packages build.sh downloads (never installs). armhf (armv7) is not added to the host:
# build.sh keeps private package lists for it, so a broken armhf index can never make the
# host's `apt-get update` fail.
#
# Usage: image/edge/deps.sh [ARCH...]   (ARCH: x86_64 aarch64 armv7; default x86_64 aarch64)
set -euo pipefail

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(x86_64 aarch64)

# command → package that provides it
declare -A tool_pkg=(
    [mcopy]=mtools
    [mkfs.vfat]=dosfstools
    [mkfs.ext4]=e2fsprogs
    [sfdisk]=fdisk
    [cpio]=cpio
    [depmod]=kmod
    [xz]=xz-utils
    [grub-mkstandalone]=grub-common
    [dpkg-deb]=dpkg
    [qemu-system-x86_64]=qemu-system-x86
    [qemu-system-aarch64]=qemu-system-arm
)
# firmware file → package (for the boot test and run-qemu.sh)
declare -A file_pkg=(
    [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
    [/usr/share/AAVMF/AAVMF_CODE.fd]=qemu-efi-aarch64
)

missing=()
for tool in "${!tool_pkg[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ] && ! [ -x "/sbin/$tool" ]; then
        missing+=("${tool_pkg[$tool]}")
    fi
done
for file in "${!file_pkg[@]}"; do
    [ -e "$file" ] || missing+=("${file_pkg[$file]}")
done

native=$(dpkg --print-architecture)
foreign=() probes=()
for arch in "${archs[@]}"; do
    case "$arch" in
        x86_64) deb=amd64 ;;
        aarch64) deb=arm64 ;;
        armv7)
            [ -e /usr/share/AAVMF/AAVMF32_CODE.fd ] || missing+=(qemu-efi-arm)
            continue ;;
        *) echo "deps.sh: unknown arch $arch (x86_64, aarch64, armv7)" >&2; exit 2 ;;
    esac
    probes+=("busybox-static:$deb")
    [ "$deb" = "$native" ] && continue
    dpkg --print-foreign-architectures | grep -qx "$deb" || foreign+=("$deb")
done

have_lists() {
    local probe
    for probe in "${probes[@]}"; do
        apt-cache policy "$probe" 2>/dev/null | grep -q 'Candidate: [0-9]' || return 1
    done
}

# apt may be busy with another process: wait for its lock, retry a few times.
apt_get() {
    local try
    for try in 1 2 3; do
        if apt-get -o DPkg::Lock::Timeout=300 -q "$@"; then return 0; fi
        echo "deps.sh: apt-get $1 failed (try $try)" >&2
        [ "$try" = 3 ] || sleep 15
    done
    return 1
}

need_update=0
[ ${#foreign[@]} -eq 0 ] || need_update=1
[ ${#missing[@]} -eq 0 ] || need_update=1
have_lists || need_update=1
[ "$need_update" = 1 ] || exit 0

[ "$(id -u)" = 0 ] || { echo "deps.sh: needs root to install ${missing[*]} ${foreign[*]}" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
for deb in "${foreign[@]}"; do
    echo "deps.sh: dpkg --add-architecture $deb" >&2
    dpkg --add-architecture "$deb"
done
# An index of another origin that fails to download is not ours to fix: go on when the
# lists we need are there.
apt_get update >/dev/null || have_lists ||
    { echo "deps.sh: apt-get update failed and the package lists for ${probes[*]} are missing" >&2; exit 1; }
if [ ${#missing[@]} -gt 0 ]; then
    mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "deps.sh: installing ${unique[*]}" >&2
    apt_get install -y --no-install-recommends "${unique[@]}" >/dev/null
fi
