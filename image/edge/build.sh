#!/usr/bin/env bash
# image/edge/build.sh — owns the build of the bootable Vantage edge disk image (raw GPT, UEFI).
#
# Usage: image/edge/build.sh --arch x86_64|aarch64|armv7 --agent PATH --out DIR [--version V]
#                            [--esp-mib N] [--config-mib N] [--state-mib N] [--xz]
#
# Writes DIR/vantage-edge-<V>-<arch>.img (and .img.xz with --xz): a disk image for `dd` that
# boots through UEFI on its own (GRUB standalone as EFI/BOOT/BOOT{X64,AA64,ARM}.EFI):
#   1 EFI system partition (FAT32, label VANTAGE-EFI): boot loader, kernel, initramfs
#   2 config partition     (FAT,   label VANTAGE-CFG):  agent.toml (placeholder; configure.sh)
#   3 state partition      (ext4,  label VANTAGE-STATE): the agent's identity and spool
# Every part comes from Debian 12 packages fetched with `apt-get download` into
# ${VANTAGE_CACHE_DIR:-$HOME/.cache/vantage-image} and unpacked with `dpkg-deb -x`; nothing
# is installed on the host for the image contents (image/edge/deps.sh installs the host tools).
# Nothing is mounted: truncate + sfdisk + mkfs.vfat -C + mcopy + mkfs.ext4 -d + dd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

die() { echo "build.sh: $*" >&2; exit 1; }
say() { echo "build.sh: $*" >&2; }
usage() { sed -n '3,4p' "$0" | sed 's/^# //' >&2; exit 2; }

arch="" agent="" out="" version="" xz=0
esp_mib=64 config_mib=16 state_mib=128
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?}; shift 2 ;;
        --agent) agent=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        --version) version=${2:?}; shift 2 ;;
        --esp-mib) esp_mib=${2:?}; shift 2 ;;
        --config-mib) config_mib=${2:?}; shift 2 ;;
        --state-mib) state_mib=${2:?}; shift 2 ;;
        --xz) xz=1; shift ;;
        -h | --help) usage ;;
        *) echo "build.sh: unknown argument $1" >&2; usage ;;
    esac
done
if [ -z "$arch" ] || [ -z "$agent" ] || [ -z "$out" ]; then usage; fi
if [ -z "$version" ]; then
    version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
    [ -n "$version" ] || version=dev
fi

# Per-arch facts: Debian arch, kernel flavour, GRUB platform, EFI file name, ELF machine,
# the serial console of qemu's machine (also the usual one on boards of that arch).
case "$arch" in
    x86_64)
        deb=amd64 kmeta=linux-image-amd64 grub_pkg=grub-efi-amd64-bin grub_platform=x86_64-efi
        efi_name=BOOTX64.EFI elf_machine=3e serial="console=ttyS0,115200n8" ;;
    aarch64)
        deb=arm64 kmeta=linux-image-arm64 grub_pkg=grub-efi-arm64-bin grub_platform=arm64-efi
        efi_name=BOOTAA64.EFI elf_machine=b7 serial="console=ttyAMA0,115200n8" ;;
    armv7)
        deb=armhf kmeta=linux-image-armmp grub_pkg=grub-efi-arm-bin grub_platform=arm-efi
        efi_name=BOOTARM.EFI elf_machine=28 serial="console=ttyAMA0,115200n8" ;;
    *) die "--arch must be x86_64, aarch64 or armv7, not $arch" ;;
esac

[ -f "$agent" ] || die "agent binary $agent does not exist"
# The agent must be for this arch and static (the image has no libc).
machine=$(od -An -tx1 -j18 -N1 "$agent" | tr -d ' \n')
[ "$(head -c4 "$agent" | od -An -c | tr -d ' \n')" = '177ELF' ] || die "$agent is not an ELF binary"
[ "$machine" = "$elf_machine" ] || die "$agent is not a $arch binary (ELF machine 0x$machine)"
if command -v readelf >/dev/null && readelf -lW "$agent" | grep -q 'Requesting program interpreter'; then
    die "$agent is dynamically linked: the image needs a static agent (+crt-static)"
fi

"$here/deps.sh" "$arch"

cache=${VANTAGE_CACHE_DIR:-$HOME/.cache/vantage-image}
debs="$cache/debs"
mkdir -p "$debs" "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/vantage-edge.XXXXXX")
trap 'rm -rf "$work"' EXIT

# apt options: the host's lists for amd64/arm64 (deps.sh enables them), private lists in the
# cache for armhf (refreshed daily; failing armhf indexes must not touch the host's apt).
apt_opts=()
if [ "$deb" = armhf ]; then
    lists="$cache/apt-armhf"
    mkdir -p "$lists/lists/partial" "$lists/cache/archives/partial"
    apt_opts=(-o APT::Architecture=armhf -o APT::Architectures::=armhf
        -o "Dir::State::Lists=$lists/lists" -o "Dir::Cache=$lists/cache")
    if [ -z "$(find "$lists/lists" -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null)" ]; then
        say "refreshing the private armhf package lists in $lists"
        apt-get "${apt_opts[@]}" -q=2 update >"$work/apt-update.err" 2>&1 ||
            say "apt-get update (armhf) reported: $(grep -m1 '^E:' "$work/apt-update.err"); using the lists it got"
    fi
fi

# fetch PKG: path of the cached .deb of PKG's candidate version for $deb, downloading it when
# missing; with no package lists (offline), the newest cached one.
fetch() {
    local pkg=$1 ver file dl
    ver=$(apt-cache "${apt_opts[@]}" policy "$pkg:$deb" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -n "$ver" ] && [ "$ver" != "(none)" ]; then
        file="$debs/${pkg}_${ver//:/%3a}_$deb.deb"
        if [ ! -s "$file" ]; then
            say "downloading $pkg:$deb $ver"
            dl="$work/download"
            rm -rf "$dl" && mkdir -p "$dl" && chmod 0777 "$dl"
            (cd "$dl" && apt-get "${apt_opts[@]}" download -q=2 "$pkg:$deb=$ver" 2>"$work/apt.err") ||
                { cat "$work/apt.err" >&2; die "apt-get download $pkg:$deb=$ver failed"; }
            mv "$dl"/*.deb "$file.tmp" && mv "$file.tmp" "$file"
        fi
    else
        file=$(find "$debs" -name "${pkg}_*_$deb.deb" -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2-)
        [ -n "$file" ] || die "no candidate for $pkg:$deb (run apt-get update) and none cached in $debs"
        say "no package lists for $pkg:$deb: using cached $(basename "$file")"
    fi
    echo "$file"
}

# The kernel package the flavour's meta package points at (linux-image-6.1.0-N-amd64).
kpkg=$(apt-cache "${apt_opts[@]}" depends "$kmeta:$deb" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
kpkg=${kpkg%%:*}
if [ -z "$kpkg" ]; then
    kpkg=$(find "$debs" -name "linux-image-[0-9]*_$deb.deb" -printf '%T@ %f\n' 2>/dev/null | sort -rn | head -1 | cut -d' ' -f2 | cut -d_ -f1)
    [ -n "$kpkg" ] || die "cannot resolve $kmeta:$deb (run image/edge/deps.sh $arch, which runs apt-get update)"
fi

for pkg in "$kpkg" busybox-static "$grub_pkg"; do
    deb_file=$(fetch "$pkg")
    mkdir -p "$work/pkg/$pkg"
    dpkg-deb -x "$deb_file" "$work/pkg/$pkg"
    basename "$deb_file" >>"$work/packages.txt"
done
kroot="$work/pkg/$kpkg"
[ -d "$kroot/lib/modules" ] || { mkdir -p "$kroot/lib" && ln -s ../usr/lib/modules "$kroot/lib/modules"; }
kver=$(ls "$kroot/lib/modules")
kernel="$kroot/boot/vmlinuz-$kver"
[ -f "$kernel" ] || die "no kernel at $kernel"
say "kernel $kver, grub $grub_platform"

# Kernel modules: the wanted ones plus everything they depend on, in load order.
depmod -b "$kroot" "$kver"
required="virtio_pci virtio_blk virtio_net virtio_rng crc32c_generic ext4 vfat nls_cp437 nls_ascii"
# Storage, USB and common NICs for real machines, the kernel's own crc32c and RTC drivers when
# built as modules; skipped when an arch does not have them.
optional="crc32c_intel nls_utf8 nls_iso8859_1 virtio_scsi virtio_mmio sd_mod ahci nvme xhci_pci
 ehci_pci xhci_plat_hcd usb_storage uas e1000 e1000e igb r8169 rtc_cmos rtc_pl031 rtc_efi"
awk -v required="$required" -v optional="$optional" '
    function norm(path,   n) { n = path; sub(/.*\//, "", n); sub(/\.ko(\.(xz|zst|gz))?$/, "", n); gsub(/-/, "_", n); return n }
    function visit(path,   n, i, list) {
        if (path in done) return
        done[path] = 1
        n = split(deps[path], list, " ")
        # modules.dep lists the dependencies closest first: load the last one first.
        for (i = n; i >= 1; i--) visit(list[i])
        print path
    }
    {
        path = $1; sub(/:$/, "", path)
        byname[norm(path)] = path
        $1 = ""; deps[path] = $0
    }
    END {
        nr = split(required, r, " "); no = split(optional, o, " ")
        for (i = 1; i <= nr; i++) {
            if (!(r[i] in byname)) { print "missing required module " r[i] > "/dev/stderr"; bad = 1; continue }
            visit(byname[r[i]])
        }
        for (i = 1; i <= no; i++) if (o[i] in byname) visit(byname[o[i]])
        exit bad
    }' "$kroot/lib/modules/$kver/modules.dep" >"$work/modules.order" || die "kernel $kver lacks a required module"

# The initramfs tree.
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc/udhcpc,etc/vantage,proc,sys,dev,run,tmp,root} \
    "$rootfs/var/lib/vantage-agent" "$rootfs/lib/modules/$kver"
install -m 0755 "$work/pkg/busybox-static/bin/busybox" "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/sh"
install -m 0755 "$agent" "$rootfs/usr/bin/vantage-agent"
install -m 0755 "$here/init" "$rootfs/init"
install -m 0755 "$here/udhcpc.script" "$rootfs/etc/udhcpc/default.script"
: >"$work/modules.list"
while read -r rel; do
    src="$kroot/lib/modules/$kver/$rel"
    case "$rel" in
        *.ko.xz) dst=${rel%.xz}; mkdir -p "$rootfs/lib/modules/$kver/$(dirname "$rel")"; xz -dc "$src" >"$rootfs/lib/modules/$kver/$dst" ;;
        *.ko.zst) dst=${rel%.zst}; mkdir -p "$rootfs/lib/modules/$kver/$(dirname "$rel")"; zstd -qdc "$src" >"$rootfs/lib/modules/$kver/$dst" ;;
        *.ko.gz) dst=${rel%.gz}; mkdir -p "$rootfs/lib/modules/$kver/$(dirname "$rel")"; gzip -dc "$src" >"$rootfs/lib/modules/$kver/$dst" ;;
        *) dst=$rel; install -D -m 0644 "$src" "$rootfs/lib/modules/$kver/$dst" ;;
    esac
    echo "$dst" >>"$work/modules.list"
done <"$work/modules.order"
install -m 0644 "$work/modules.list" "$rootfs/etc/modules.order"
nmod=$(wc -l <"$work/modules.list")
cat >"$rootfs/etc/vantage-edge-release" <<EOF
VANTAGE_EDGE_VERSION=$version
VANTAGE_EDGE_ARCH=$arch
VANTAGE_EDGE_KERNEL=$kver
EOF
cat >"$rootfs/etc/os-release" <<EOF
NAME="Vantage Edge"
ID=vantage-edge
ID_LIKE=debian
VERSION_ID="$version"
PRETTY_NAME="Vantage Edge $version (Debian 12 kernel $kver)"
EOF
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\n' >"$rootfs/etc/group"
printf '127.0.0.1 localhost\n' >"$rootfs/etc/hosts"
: >"$rootfs/etc/resolv.conf"
# /dev/console inside the archive when we may create device nodes (the kernel's built-in
# initramfs has one too; init makes it otherwise).
[ "$(id -u)" = 0 ] && mknod -m 600 "$rootfs/dev/console" c 5 1
(cd "$rootfs" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
    xz --check=crc32 -9 -T1 >"$work/initrd.img"

# GRUB standalone: an EFI binary with a tiny config in its memdisk that loads /vantage/grub.cfg
# from the partition it was started from (so the kernel command line can be edited there).
cat >"$work/grub-embed.cfg" <<'EOF'
regexp --set=1:vantage_dev '^\((.*)\)' "$cmdpath"
if [ -n "$vantage_dev" ]; then set root="$vantage_dev"; fi
if [ ! -f /vantage/grub.cfg ]; then search --no-floppy --set=root --file /vantage/grub.cfg; fi
configfile /vantage/grub.cfg
EOF
grub_mods="part_gpt fat search search_fs_file regexp configfile normal linux echo test"
[ "$arch" = x86_64 ] && grub_mods="$grub_mods efi_gop efi_uga"
[ "$arch" != x86_64 ] && grub_mods="$grub_mods efi_gop"
grub-mkstandalone -O "$grub_platform" -d "$work/pkg/$grub_pkg/usr/lib/grub/$grub_platform" \
    -o "$work/$efi_name" --modules="$grub_mods" --install-modules="$grub_mods" \
    --locales= --fonts= --themes= "boot/grub/grub.cfg=$work/grub-embed.cfg"
cat >"$work/grub.cfg" <<EOF
# Vantage edge $version ($arch): GRUB menu read from the EFI partition (VANTAGE-EFI).
# Kernel options of the image's init: vantage.iface=ethN (default eth0), vantage.debug=1.
set timeout=0
set default=0
menuentry "Vantage edge $version ($arch, Linux $kver)" {
    echo "Vantage edge: loading Linux $kver"
    linux /vantage/vmlinuz console=tty0 $serial panic=10
    echo "Vantage edge: loading the initramfs"
    initrd /vantage/initrd.img
}
EOF

# Partition images, then the disk.
export MTOOLS_SKIP_CHECK=1
mkfs.vfat -C -F 32 -S 512 -s 1 -n VANTAGE-EFI "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/vantage
mcopy -i "$work/esp.img" "$work/$efi_name" "::/EFI/BOOT/$efi_name"
mcopy -i "$work/esp.img" "$kernel" ::/vantage/vmlinuz
mcopy -i "$work/esp.img" "$work/initrd.img" ::/vantage/initrd.img
mcopy -i "$work/esp.img" "$work/grub.cfg" ::/vantage/grub.cfg
mkfs.vfat -C -n VANTAGE-CFG "$work/config.img" $((config_mib * 1024)) >/dev/null
mcopy -i "$work/config.img" "$here/agent.toml" ::/agent.toml
mkdir -p "$work/state"
mkfs.ext4 -q -F -L VANTAGE-STATE -m 0 -d "$work/state" -E root_owner=0:0 "$work/state.img" "${state_mib}M" >/dev/null

image="$out/vantage-edge-$version-$arch.img"
esp_start=2048
config_start=$((esp_start + esp_mib * 2048))
state_start=$((config_start + config_mib * 2048))
total_mib=$((1 + esp_mib + config_mib + state_mib + 1))
rm -f "$image.tmp"
truncate -s "${total_mib}M" "$image.tmp"
sfdisk -q --no-reread --no-tell-kernel "$image.tmp" <<EOF
label: gpt
first-lba: 2048
start=$esp_start, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"
start=$config_start, size=$((config_mib * 2048)), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="VANTAGE-CFG"
start=$state_start, size=$((state_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="VANTAGE-STATE"
EOF
dd if="$work/esp.img" of="$image.tmp" bs=512 seek=$esp_start conv=notrunc,sparse status=none
dd if="$work/config.img" of="$image.tmp" bs=512 seek=$config_start conv=notrunc,sparse status=none
dd if="$work/state.img" of="$image.tmp" bs=512 seek=$state_start conv=notrunc,sparse status=none
mv "$image.tmp" "$image"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
say "built $image"
say "  disk $(mib "$(stat -c %s "$image")") (allocated $(mib $(($(stat -c %b "$image") * $(stat -c %B "$image")))))," \
    "partitions: EFI ${esp_mib} MiB, config ${config_mib} MiB, state ${state_mib} MiB"
say "  kernel $(mib "$(stat -c %s "$kernel")"), initramfs $(mib "$(stat -c %s "$work/initrd.img")") xz" \
    "($nmod modules, agent $(mib "$(stat -c %s "$agent")")), $efi_name $(mib "$(stat -c %s "$work/$efi_name")")"
say "  from $(tr '\n' ' ' <"$work/packages.txt")"
if [ "$xz" = 1 ]; then
    xz -T0 -6 -k -f "$image"
    say "  $image.xz $(mib "$(stat -c %s "$image.xz")")"
fi
echo "$image"
